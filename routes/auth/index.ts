import fastifyFormbody from '@fastify/formbody'
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod'
import { z } from 'zod'
import { badRequest, unauthorized } from '../../plugins/errors.ts'
import { publicRouteRateLimit } from '../../plugins/rate-limit.ts'
import { commonErrors, ProblemSchema } from '../common/schemas.ts'
import { findCredentials } from '../users/queries.ts'
import { EmailSchema } from '../users/schemas.ts'
import { verifyClientCredentials } from './clients.ts'
import { accountGuard } from './login-throttle.ts'
import { endSession, openSession, REFRESH_TOKEN_PATTERN, rotateRefreshToken, sessionSubject, upgradePasswordHash } from './sessions.ts'

// The grant is chosen by `grant_type` (RFC 6749); a body without one is a user's email-and-password login.
const PasswordGrantSchema = z.object({
  grant_type: z.literal('password').optional(),
  email: EmailSchema,
  password: z.string().min(1).max(256)
}).strict()

const RefreshTokenGrantSchema = z.object({
  grant_type: z.literal('refresh_token'),
  refresh_token: z.string().min(1).max(512)
}).strict()

const ClientCredentialsGrantSchema = z.object({
  grant_type: z.literal('client_credentials'),
  client_id: z.uuid().toLowerCase(),
  client_secret: z.string().min(1).max(256),
  /** A subset of the client's scopes, space-separated (RFC 6749 section 3.3); all of them when left out. */
  scope: z.string().max(200).regex(/^[\x21\x23-\x5b\x5d-\x7e]+( [\x21\x23-\x5b\x5d-\x7e]+)*$/, 'must be space-separated scope names').optional()
}).strict()

const TokenRequestSchema = z.discriminatedUnion('grant_type', [PasswordGrantSchema, RefreshTokenGrantSchema, ClientCredentialsGrantSchema])

const TokenSchema = z.object({
  accessToken: z.string(),
  tokenType: z.literal('Bearer'),
  expiresIn: z.number().int(),
  /** Users only: exchanged once for a new pair (grant_type=refresh_token). */
  refreshToken: z.string().optional(),
  /** Granted scopes (client credentials only). */
  scope: z.string().optional()
}).meta({ id: 'Token' })

const REFRESH_REFUSED = 'The refresh token is invalid, expired or revoked.'

export const authRoutes: FastifyPluginAsyncZod = async (app) => {
  const { db, config } = app
  const guard = accountGuard(app)
  // RFC 6749 clients send form bodies; registered here, so no other route accepts them (415 there).
  await app.register(fastifyFormbody)

  app.post('/auth/token', {
    config: { public: true, rateLimit: publicRouteRateLimit('login') },
    schema: {
      operationId: 'issueToken',
      tags: ['auth'],
      summary: 'Get an access token: a user logs in with email and password or a refresh token, a service client with client credentials',
      description: 'JSON, or application/x-www-form-urlencoded as RFC 6749 sends it. Limited per client IP (IPv6 per /64) for every grant, ' +
        'and failed logins per account (429 with Retry-After for that email until the window passes). A refresh token is used once: ' +
        'presenting it again ends its session.',
      security: [],
      body: TokenRequestSchema,
      response: { 200: TokenSchema, 400: ProblemSchema, 401: ProblemSchema, 415: ProblemSchema, 429: ProblemSchema, 503: ProblemSchema }
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

    if (body.grant_type === 'refresh_token') {
      // An access token (or anything else not shaped like ours) is refused without a lookup.
      if (!REFRESH_TOKEN_PATTERN.test(body.refresh_token)) throw unauthorized(REFRESH_REFUSED)
      const outcome = await rotateRefreshToken(db, body.refresh_token, config.REFRESH_TOKEN_TTL_S)
      if (outcome.status === 'reused') {
        app.revocations.markRevoked([sessionSubject(outcome.sessionId)])
        request.log.warn({ sessionId: outcome.sessionId }, 'refresh token presented twice: session ended')
      }
      if (outcome.status !== 'rotated') throw unauthorized(REFRESH_REFUSED)
      const token = await app.issueToken({ id: outcome.userId, tier: outcome.tier, sessionId: outcome.sessionId })
      return { ...token, refreshToken: outcome.refreshToken }
    }

    const { email, password } = body
    const counted = await guard.admit(email)
    let credentials
    let valid
    try {
      credentials = await findCredentials(db, email)
      // The hash work is done either way (a decoy at the current cost for an unknown email), and both failures
      // give the same answer, so neither the body nor the timing tells an attacker whether the email exists.
      valid = await app.passwords.verify(password, credentials?.password_hash ?? null)
    } catch (error) {
      // Not checked (hash queue full, database down): not a failed attempt.
      if (counted) guard.refund(email)
      throw error
    }
    if (credentials === null || !valid) throw unauthorized('Wrong email or password.')
    if (counted) guard.refund(email)

    if (app.passwords.needsRehash(credentials.password_hash)) {
      try {
        await upgradePasswordHash(db, credentials.id, credentials.password_hash, await app.passwords.hash(password))
      } catch (error) {
        // The login stands; the upgrade is tried again at the next one.
        request.log.warn({ err: error }, 'password hash upgrade failed')
      }
    }
    const session = await openSession(db, credentials.id, credentials.password_version, config.REFRESH_TOKEN_TTL_S)
    // The password changed between the check and now: the one verified is no longer the user's.
    if (session === null) throw unauthorized('Wrong email or password.')
    const token = await app.issueToken({ id: credentials.id, tier: credentials.tier, sessionId: session.sessionId })
    return { ...token, refreshToken: session.refreshToken }
  })

  app.post('/auth/revoke', {
    schema: {
      operationId: 'revokeSession',
      tags: ['auth'],
      summary: 'Log out: end the caller\'s session',
      description: 'Its access and refresh tokens stop working on every API process within a second.',
      response: { 204: z.null(), ...commonErrors }
    }
  }, async (request, reply) => {
    const user = request.user
    if (user.kind !== 'user') throw unauthorized()
    await endSession(db, user.id, user.sessionId)
    app.revocations.markRevoked([sessionSubject(user.sessionId)])
    return reply.code(204).send(null)
  })
}
