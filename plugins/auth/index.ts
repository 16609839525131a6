import fastifyJwt from '@fastify/jwt'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { z } from 'zod'
import { ProblemError, serviceUnavailable, unauthorized } from '../errors/index.ts'

export const tiers = ['standard', 'pro'] as const
export type Tier = typeof tiers[number]

/** What a service client may be granted (contract: "Principals and tokens"). Users hold none of them. */
export const scopes = ['funds:write', 'events:read'] as const
export type Scope = typeof scopes[number]

export type PrincipalKind = 'user' | 'client'

/**
 * Who is calling. Users sign up and log in; service clients (back-office systems that settle real money) use
 * OAuth 2.0 client credentials and act only within their scopes. Both are bearer tokens from this service.
 */
export type Principal =
  | { kind: 'user', id: string, tier: Tier, scopes: readonly Scope[], sessionId: string }
  | { kind: 'client', id: string, tier: 'service', scopes: readonly Scope[] }

/**
 * The subjects a revocation can name for this principal's tokens (plugins/auth/revocations.ts): the client, or the
 * user's session (logout, password change, refresh token replay) and the user (a removed user row).
 */
export const revocationSubjects = (principal: Principal): string[] => principal.kind === 'user'
  ? [`session:${principal.sessionId}`, `user:${principal.id}`]
  : [`client:${principal.id}`]

const scopeClaim = z.string().max(200).transform((value, ctx) => {
  const granted = value.split(' ').filter(Boolean)
  if (!granted.every((scope): scope is Scope => (scopes as readonly string[]).includes(scope))) {
    ctx.addIssue({ code: 'custom', message: 'unknown scope' })
    return z.NEVER
  }
  return granted
})

// RFC 9068's JWT access token profile: a client-credentials token names its client in `client_id` (= `sub`).
const claimsSchema = z.union([
  // Every user token belongs to a session (`sid`), which is what logout and a password change end.
  z.object({ sub: z.uuid(), sid: z.uuid(), tier: z.enum(tiers), scope: scopeClaim, client_id: z.never().optional(), iat: z.number().int(), exp: z.number().int() })
    .refine((c) => c.scope.length === 0)
    .transform((c): Principal => ({ kind: 'user', id: c.sub, tier: c.tier, scopes: [], sessionId: c.sid })),
  z.object({ sub: z.uuid(), client_id: z.uuid(), scope: scopeClaim, iat: z.number().int(), exp: z.number().int() })
    .refine((c) => c.client_id === c.sub && c.scope.length > 0)
    .transform((c): Principal => ({ kind: 'client', id: c.sub, tier: 'service', scopes: c.scope }))
])

declare module '@fastify/jwt' {
  interface FastifyJWT {
    payload: { sub: string, scope: string, tier?: Tier, sid?: string, client_id?: string }
    user: Principal
  }
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Routes are private by default; a route opts out with `config: { public: true }`. */
    public?: boolean
    /** Who may call a private route: users only unless the route says otherwise. */
    principals?: readonly PrincipalKind[]
    /**
     * The scope a service client's token needs for this route (a 403 `insufficient_scope` without it). Users hold
     * no scopes: which routes they may call is the route's `principals`.
     */
    scope?: Scope
  }
  interface FastifyInstance {
    issueToken: (user: UserTokenSubject) => Promise<AccessToken>
    issueClientToken: (client: { id: string, scopes: readonly Scope[] }) => Promise<AccessToken & { scope: string }>
    /**
     * What the onRequest hook does for every private route: the bearer token is verified (and checked against the
     * revocation list), and `request.user` set; throws 401 (503 when the revocation list is stale). For a public
     * route that takes a bearer token only in some of its forms (POST /auth/revoke).
     */
    authenticate: (request: FastifyRequest) => Promise<Principal>
    /** The principal an access token of ours names, or null when it is not one (RFC 7009 revocation). */
    principalOf: (token: string) => Promise<Principal | null>
  }
}

export interface UserTokenSubject {
  id: string
  tier: Tier
  sessionId: string
}

export interface AccessToken {
  accessToken: string
  tokenType: 'Bearer'
  expiresIn: number
}

/**
 * 403 with RFC 6750's `insufficient_scope`: authenticated, but this token may not do this. Used by the route
 * check below and by handlers whose rule depends on the body (a user may transfer, only a client may fund).
 */
export function insufficientScope (detail: string, scope?: Scope): ProblemError {
  return new ProblemError(403, 'insufficient_scope', detail, {
    headers: { 'www-authenticate': `Bearer error="insufficient_scope"${scope === undefined ? '' : `, scope="${scope}"`}` }
  })
}

const USERS_ONLY: readonly PrincipalKind[] = ['user']

/** The one place a route's principal and scope rules are checked. */
export function authorize (principal: Principal, allowed: readonly PrincipalKind[] = USERS_ONLY, scope?: Scope): void {
  if (!allowed.includes(principal.kind)) {
    throw insufficientScope(principal.kind === 'client' ? 'This route is for users; service client tokens are refused.' : 'This route is for service clients.')
  }
  if (scope !== undefined && principal.kind === 'client' && !principal.scopes.includes(scope)) {
    throw insufficientScope(`This needs the ${scope} scope.`, scope)
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

/** The longest an access token is accepted after it was issued, whatever its `exp` says (JWT_TTL_S is at most this). */
export const MAX_ACCESS_TOKEN_AGE_S = 3600

/** When each verified principal's token stops being accepted (ms): its `exp`, or `iat` + the maximum age if sooner. */
const acceptedUntil = new WeakMap<Principal, number>()

interface VerifiedToken {
  principal: Principal
  untilMs: number
  /** What a revocation of this token would name (revocationSubjects), built once rather than on every request. */
  subjects: readonly string[]
}

/**
 * Tokens this process verified, by their exact text. A client sends the same token on every request for up to an
 * hour, and a full verification (decode, HMAC, claim checks, the claims schema) was about a tenth of a cached read's
 * CPU. A hit skips only what would come out the same: the text is byte-for-byte the one verified, and its expiry is
 * checked on every use. Revocation is not cached: it is checked on every request, hit or miss. Bounded: the oldest
 * entry leaves when a new one would pass the size.
 */
function verifiedTokens (size: number) {
  const entries = new Map<string, VerifiedToken>()
  return {
    get (token: string, nowMs: number): VerifiedToken | undefined {
      const entry = entries.get(token)
      if (entry === undefined) return undefined
      if (entry.untilMs > nowMs) return entry
      entries.delete(token)
      return undefined
    },
    set (token: string, principal: Principal, untilMs: number): VerifiedToken {
      if (entries.size >= size) entries.delete(entries.keys().next().value!)
      // Frozen: one principal object (and its subjects) serves many requests, and none of them may change it for the others.
      const entry = { principal: Object.freeze(principal), untilMs, subjects: Object.freeze(revocationSubjects(principal)) }
      entries.set(token, entry)
      return entry
    }
  }
}

/** How every token is signed; the bench signs its callers' tokens with the same options and claims. */
export const signOptions = (options: AuthOptions) =>
  ({ algorithm: 'HS256' as const, iss: options.issuer, aud: options.audience, expiresIn: options.ttlSeconds })
export const userClaims = (user: UserTokenSubject) => ({ sub: user.id, sid: user.sessionId, tier: user.tier, scope: '' })
export const clientClaims = (client: { id: string, scopes: readonly Scope[] }) =>
  ({ sub: client.id, client_id: client.id, scope: client.scopes.join(' ') })

async function authPlugin (app: FastifyInstance, options: AuthOptions) {
  await app.register(fastifyJwt, {
    secret: options.secret,
    sign: signOptions(options),
    verify: {
      // Pinning the algorithm is what refuses `alg: none` and key-confusion tokens.
      algorithms: ['HS256'],
      allowedIss: options.issuer,
      allowedAud: options.audience,
      requiredClaims: ['sub', 'exp', 'iat', 'iss', 'aud'],
      maxAge: MAX_ACCESS_TOKEN_AGE_S
    },
    formatUser: (payload) => {
      const principal = claimsSchema.parse(payload)
      // The schema checked both are integers.
      const { iat, exp } = payload as unknown as { iat: number, exp: number }
      acceptedUntil.set(principal, Math.min(exp, iat + MAX_ACCESS_TOKEN_AGE_S) * 1000)
      return principal
    }
  })
  const verified = verifiedTokens(10_000)

  app.decorate('issueToken', async (user: UserTokenSubject) => {
    const accessToken = await app.jwt.sign(userClaims(user))
    return { accessToken, tokenType: 'Bearer' as const, expiresIn: options.ttlSeconds }
  })
  app.decorate('issueClientToken', async (client: { id: string, scopes: readonly Scope[] }) => {
    const claims = clientClaims(client)
    const accessToken = await app.jwt.sign(claims)
    return { accessToken, tokenType: 'Bearer' as const, expiresIn: options.ttlSeconds, scope: claims.scope }
  })

  // The scheme name is case-insensitive (RFC 9110 section 11.1): `bearer`, `BEARER` and `Bearer` are one scheme.
  const bearerHeader = /^bearer [A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/i

  async function authenticate (request: FastifyRequest): Promise<Principal> {
    const header = request.headers.authorization
    // Node keeps the first of two Authorization headers; a proxy that keeps the last would authorize someone else.
    if (header !== undefined && authorizationHeaderCount(request.raw.rawHeaders) > 1) {
      throw unauthorized('Send exactly one Authorization header.')
    }
    if (header === undefined) throw unauthorized('Send Authorization: Bearer <token>.')
    let subjects: readonly string[]
    const known = verified.get(header, Date.now())
    if (known !== undefined) {
      request.user = known.principal
      subjects = known.subjects
    } else {
      if (!bearerHeader.test(header)) throw unauthorized('Send Authorization: Bearer <token>.')
      try {
        await request.jwtVerify()
      } catch (error) {
        throw unauthorized('The token is invalid or expired.', error)
      }
      const untilMs = acceptedUntil.get(request.user)
      subjects = untilMs === undefined ? revocationSubjects(request.user) : verified.set(header, request.user, untilMs).subjects
    }
    if (app.revocations.isStale()) throw serviceUnavailable('token revocation list')
    if (app.revocations.isRevoked(subjects)) throw unauthorized('The token was revoked.')
    return request.user
  }
  app.decorate('authenticate', authenticate)

  app.decorate('principalOf', async (token: string): Promise<Principal | null> => {
    try {
      return claimsSchema.parse(await app.jwt.verify(token))
    } catch {
      return null
    }
  })

  app.addHook('onRequest', async (request: FastifyRequest) => {
    // Read once: each read of routeOptions builds a new object.
    const route = request.routeOptions
    // Unknown routes have no options; they fall through to the 404 handler without revealing anything.
    if (route.url === undefined || route.config.public === true) return
    await authenticate(request)
    authorize(request.user, route.config.principals, route.config.scope)
  })
}

/** The plugin's options from the configuration. */
export const autoConfig = (app: FastifyInstance): AuthOptions => ({
  secret: app.config.JWT_SECRET,
  issuer: app.config.JWT_ISSUER,
  audience: app.config.JWT_AUDIENCE,
  ttlSeconds: app.config.JWT_TTL_S
})

export default fp(authPlugin, { name: 'auth', dependencies: ['errors', 'revocations'] })
