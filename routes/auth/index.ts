import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod'
import { z } from 'zod'
import { unauthorized } from '../../plugins/errors.ts'
import { publicRouteRateLimit } from '../../plugins/rate-limit.ts'
import { ProblemSchema } from '../common/schemas.ts'
import { decoyHash, verifyPassword } from '../users/password.ts'
import { findCredentials } from '../users/queries.ts'
import { EmailSchema } from '../users/schemas.ts'

const TokenRequestSchema = z.object({
  email: EmailSchema,
  password: z.string().min(1).max(256)
}).strict()

const TokenSchema = z.object({
  accessToken: z.string(),
  tokenType: z.literal('Bearer'),
  expiresIn: z.number().int()
}).meta({ id: 'Token' })

export const authRoutes: FastifyPluginAsyncZod = async (app) => {
  const { db, config } = app

  app.post('/auth/token', {
    config: { public: true, rateLimit: publicRouteRateLimit('login') },
    schema: {
      operationId: 'issueToken',
      tags: ['auth'],
      summary: 'Log in: exchange email and password for a bearer token',
      security: [],
      body: TokenRequestSchema,
      response: { 200: TokenSchema, 400: ProblemSchema, 401: ProblemSchema, 429: ProblemSchema }
    }
  }, async (request) => {
    const { email, password } = request.body
    const credentials = await findCredentials(db, email)
    // The hash work is done either way, and both failures give the same answer, so neither the body nor the
    // timing tells an attacker whether the email exists.
    const valid = await verifyPassword(password, credentials?.password_hash ?? await decoyHash(config.PASSWORD_HASH_COST))
    if (credentials === null || !valid) throw unauthorized('Wrong email or password.')
    return app.issueToken({ id: credentials.id, tier: credentials.tier })
  })
}
