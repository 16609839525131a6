import fastifyFormbody from '@fastify/formbody'
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod'
import { z } from 'zod'
import { badRequest, unauthorized } from '../../plugins/errors.ts'
import { publicRouteRateLimit } from '../../plugins/rate-limit.ts'
import { ProblemSchema } from '../common/schemas.ts'
import { decoyHash, verifyPassword } from '../users/password.ts'
import { findCredentials } from '../users/queries.ts'
import { EmailSchema } from '../users/schemas.ts'
import { verifyClientCredentials } from './clients.ts'

// The grant is chosen by `grant_type` (RFC 6749); a body without one is a user's email-and-password login.
const PasswordGrantSchema = z.object({
  grant_type: z.literal('password').optional(),
  email: EmailSchema,
  password: z.string().min(1).max(256)
}).strict()

const ClientCredentialsGrantSchema = z.object({
  grant_type: z.literal('client_credentials'),
  client_id: z.uuid().toLowerCase(),
  client_secret: z.string().min(1).max(256),
  /** A subset of the client's scopes, space-separated (RFC 6749 section 3.3); all of them when left out. */
  scope: z.string().max(200).regex(/^[\x21\x23-\x5b\x5d-\x7e]+( [\x21\x23-\x5b\x5d-\x7e]+)*$/, 'must be space-separated scope names').optional()
}).strict()

const TokenRequestSchema = z.discriminatedUnion('grant_type', [PasswordGrantSchema, ClientCredentialsGrantSchema])

const TokenSchema = z.object({
  accessToken: z.string(),
  tokenType: z.literal('Bearer'),
  expiresIn: z.number().int(),
  /** Granted scopes (client credentials only). */
  scope: z.string().optional()
}).meta({ id: 'Token' })

export const authRoutes: FastifyPluginAsyncZod = async (app) => {
  const { db, config } = app
  // RFC 6749 clients send form bodies; registered here, so no other route accepts them (415 there).
  await app.register(fastifyFormbody)

  app.post('/auth/token', {
    config: { public: true, rateLimit: publicRouteRateLimit('login') },
    schema: {
      operationId: 'issueToken',
      tags: ['auth'],
      summary: 'Get an access token: a user logs in with email and password, a service client with client credentials',
      description: 'JSON, or application/x-www-form-urlencoded as RFC 6749 sends it. Limited per client IP for every grant.',
      security: [],
      body: TokenRequestSchema,
      response: { 200: TokenSchema, 400: ProblemSchema, 401: ProblemSchema, 415: ProblemSchema, 429: ProblemSchema }
    }
  }, async (request) => {
    const body = request.body
    if (body.grant_type === 'client_credentials') {
      const client = await verifyClientCredentials(db, body.client_id, body.client_secret)
      // Unknown client, wrong secret and revoked client: one answer, after the same work.
      if (client === null) throw unauthorized('Unknown client or wrong secret.')
      const requested = body.scope?.split(' ')
      if (requested !== undefined && !requested.every((scope) => (client.scopes as string[]).includes(scope))) {
        throw badRequest('The client may not have that scope.', [{ path: 'scope', message: `must be a subset of: ${client.scopes.join(' ')}` }])
      }
      const granted = requested === undefined ? client.scopes : client.scopes.filter((scope) => requested.includes(scope))
      return app.issueClientToken({ id: client.id, scopes: granted })
    }
    const credentials = await findCredentials(db, body.email)
    // The hash work is done either way, and both failures give the same answer, so neither the body nor the
    // timing tells an attacker whether the email exists.
    const valid = await verifyPassword(body.password, credentials?.password_hash ?? await decoyHash(config.PASSWORD_HASH_COST))
    if (credentials === null || !valid) throw unauthorized('Wrong email or password.')
    return app.issueToken({ id: credentials.id, tier: credentials.tier })
  })
}
