import fastifyJwt from '@fastify/jwt'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { z } from 'zod'
import { unauthorized } from './errors.ts'

export const tiers = ['standard', 'pro'] as const
export type Tier = typeof tiers[number]

export interface AuthUser {
  id: string
  tier: Tier
}

const claimsSchema = z.object({
  sub: z.uuid(),
  tier: z.enum(tiers),
  iat: z.number().int(),
  exp: z.number().int()
})

declare module '@fastify/jwt' {
  interface FastifyJWT {
    payload: { sub: string, tier: Tier }
    user: AuthUser
  }
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Routes are private by default; a route opts out with `config: { public: true }`. */
    public?: boolean
  }
  interface FastifyInstance {
    issueToken: (user: AuthUser) => Promise<{ accessToken: string, tokenType: 'Bearer', expiresIn: number }>
  }
}

function authorizationHeaderCount (rawHeaders: string[]): number {
  let count = 0
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if (rawHeaders[i]!.length === 13 && rawHeaders[i]!.toLowerCase() === 'authorization') count++
  }
  return count
}

export interface AuthOptions {
  secret: string
  issuer: string
  audience: string
  ttlSeconds: number
}

async function authPlugin (app: FastifyInstance, options: AuthOptions) {
  await app.register(fastifyJwt, {
    secret: options.secret,
    sign: { algorithm: 'HS256', iss: options.issuer, aud: options.audience, expiresIn: options.ttlSeconds },
    verify: {
      // Pinning the algorithm is what refuses `alg: none` and key-confusion tokens.
      algorithms: ['HS256'],
      allowedIss: options.issuer,
      allowedAud: options.audience,
      requiredClaims: ['sub', 'exp', 'iat', 'iss', 'aud'],
      maxAge: 3600,
      cache: 10_000
    },
    formatUser: (payload) => {
      const claims = claimsSchema.parse(payload)
      return { id: claims.sub, tier: claims.tier }
    }
  })

  app.decorate('issueToken', async (user: AuthUser) => {
    const accessToken = await app.jwt.sign({ sub: user.id, tier: user.tier })
    return { accessToken, tokenType: 'Bearer' as const, expiresIn: options.ttlSeconds }
  })

  app.addHook('onRequest', async (request: FastifyRequest) => {
    // Unknown routes have no options; they fall through to the 404 handler without revealing anything.
    if (request.routeOptions.url === undefined || request.routeOptions.config.public === true) return
    const header = request.headers.authorization
    // Node keeps the first of two Authorization headers; a proxy that keeps the last would authorize someone else.
    if (header !== undefined && authorizationHeaderCount(request.raw.rawHeaders) > 1) {
      throw unauthorized('Send exactly one Authorization header.')
    }
    if (header === undefined || !/^Bearer [A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(header)) {
      throw unauthorized('Send Authorization: Bearer <token>.')
    }
    try {
      await request.jwtVerify()
    } catch (error) {
      throw unauthorized('The token is invalid or expired.', error)
    }
  })
}

export default fp(authPlugin, { name: 'auth', dependencies: ['errors'] })
