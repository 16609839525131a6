import fastifyFormbody from '@fastify/formbody'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod'
import { z } from 'zod'
import { authorize, scopes, type AccessToken } from '../../plugins/auth/index.ts'
import { OAuthErrorSchema } from '../../plugins/errors/index.ts'
import { responses } from '../../plugins/openapi/index.ts'
import { publicRouteRateLimit } from '../../plugins/rate-limit/index.ts'
import { endSession, findCredentials, sessionSubject, upgradePasswordHash } from './repository.ts'
import { EmailSchema } from './schemas.ts'
import { clientAuthenticationOf, verifyClientCredentials, type PresentedClient } from './clients.ts'
import { IdentityError, toProblem } from './errors.ts'
import { accountGuard } from './login-throttle.ts'
import { exchangeRefreshToken, openSession, REFRESH_TOKEN_PATTERN, revokeRefreshToken } from './sessions.ts'

export const grantTypes = ['password', 'refresh_token', 'client_credentials'] as const

// Client authentication by client_secret_post (RFC 6749 section 2.3.1). A public client may send its client_id
// alone, which identifies nothing here and is ignored. Never a 400 for its shape: a malformed id is an unknown client.
const clientParameters = {
  client_id: z.string().max(256).optional(),
  client_secret: z.string().max(256).optional()
}

// Parameters the server does not know are ignored (RFC 6749 section 3.2), so these objects are not strict: Zod drops
// anything else. The password grant is RFC 6749 section 4.3's (`username`) or this API's own login (`email`; a
// body with an email or username and no grant_type is taken as this grant, see preValidation).
const PasswordGrantSchema = z.object({
  grant_type: z.literal('password'),
  email: EmailSchema.optional(),
  username: EmailSchema.optional(),
  password: z.string().min(1).max(256),
  ...clientParameters
}).refine((body) => body.email !== undefined || body.username !== undefined, { path: ['email'], message: 'is required (or username)' })
  .meta({ title: 'PasswordGrant', description: 'A user logs in: email (or username) and password.' })

const RefreshTokenGrantSchema = z.object({
  grant_type: z.literal('refresh_token'),
  refresh_token: z.string().min(1).max(512),
  ...clientParameters
}).meta({ title: 'RefreshTokenGrant', description: 'A new access token and refresh token for the session; the one presented is spent.' })

const ClientCredentialsGrantSchema = z.object({
  grant_type: z.literal('client_credentials'),
  /** A subset of the client's scopes, space-separated (RFC 6749 section 3.3); all of them when left out. */
  scope: z.string().max(200).regex(/^[\x21\x23-\x5b\x5d-\x7e]+( [\x21\x23-\x5b\x5d-\x7e]+)*$/, 'must be space-separated scope names').optional(),
  ...clientParameters
}).meta({ title: 'ClientCredentialsGrant', description: 'A service client: authenticated by HTTP Basic (client_secret_basic) or by client_id and client_secret here (client_secret_post).' })

const TokenRequestSchema = z.discriminatedUnion('grant_type', [PasswordGrantSchema, RefreshTokenGrantSchema, ClientCredentialsGrantSchema])

/** RFC 6749 section 5.1's successful response. */
const TokenResponseSchema = z.object({
  access_token: z.string(),
  token_type: z.literal('Bearer'),
  /** Seconds the access token lives. */
  expires_in: z.number().int(),
  /** Users only: exchanged once for a new pair (grant_type=refresh_token). */
  refresh_token: z.string().optional(),
  /** The scopes granted (client credentials). */
  scope: z.string().optional()
}).meta({ id: 'TokenResponse' })

/** RFC 8414's authorization server metadata, for what this server does. */
const AuthorizationServerMetadataSchema = z.object({
  issuer: z.string(),
  token_endpoint: z.string(),
  revocation_endpoint: z.string(),
  grant_types_supported: z.array(z.enum(grantTypes)),
  token_endpoint_auth_methods_supported: z.array(z.string()),
  revocation_endpoint_auth_methods_supported: z.array(z.string()),
  scopes_supported: z.array(z.string()),
  response_types_supported: z.array(z.string())
}).meta({ id: 'AuthorizationServerMetadata' })

/** RFC 7009 section 2.1's revocation request. */
const RevocationRequestSchema = z.object({
  token: z.string().min(1).max(4096),
  token_type_hint: z.string().max(64).optional(),
  ...clientParameters
}).meta({ title: 'RevocationRequest' })

const tokenResponse = (token: AccessToken & { scope?: string }, refreshToken?: string) => ({
  access_token: token.accessToken,
  token_type: token.tokenType,
  expires_in: token.expiresIn,
  ...(refreshToken === undefined ? {} : { refresh_token: refreshToken }),
  ...(token.scope === undefined ? {} : { scope: token.scope })
})

const isForm = (request: FastifyRequest) => /^application\/x-www-form-urlencoded\s*(;|$)/i.test(request.headers['content-type'] ?? '')

export const authRoutes: FastifyPluginAsyncZod = async (app) => {
  const { db, config } = app
  const guard = accountGuard(app)
  // RFC 6749 clients send form bodies; registered here, so no other route accepts them (415 there).
  await app.register(fastifyFormbody)

  /** The client this request authenticates as, or null when it presents no secret; throws 401 invalid_client. */
  const authenticatedClient = async (presented: PresentedClient) => {
    if (presented.method === 'invalid') throw toProblem(presented.error)
    if (presented.method === 'none') return null
    const id = z.uuid().safeParse(presented.id)
    const client = id.success ? await verifyClientCredentials(db, id.data.toLowerCase(), presented.secret) : null
    // Unknown client, wrong secret and revoked client: one answer, after the same work. A malformed id is
    // refused without a lookup: its sender knows it is malformed, so the timing tells nothing.
    if (client === null) throw toProblem(new IdentityError('invalid_client'))
    return client
  }

  app.post('/auth/token', {
    config: { public: true, rateLimit: publicRouteRateLimit('login'), oauthErrors: 'always', carriesCredentials: true },
    // Before validation, so the grant_type decides the error code (RFC 6749 section 5.2) and RFC 6749 section 3.1's
    // "a parameter sent without a value is omitted" holds for every field.
    preValidation: async (request) => {
      const body = request.body
      if (typeof body !== 'object' || body === null || Array.isArray(body)) throw toProblem(new IdentityError('token_request_not_an_object'))
      const parameters = Object.fromEntries(Object.entries(body).filter(([, value]) => value !== ''))
      // This API's own login predates grant_type: email (or username) and password, and no grant_type.
      if (parameters.grant_type === undefined && (parameters.email !== undefined || parameters.username !== undefined)) parameters.grant_type = 'password'
      const grantType = parameters.grant_type
      if (grantType === undefined) throw toProblem(new IdentityError('grant_type_missing'))
      if (grantType !== undefined && !(grantTypes as readonly unknown[]).includes(grantType)) {
        throw toProblem(new IdentityError(typeof grantType === 'string' ? 'grant_type_unsupported' : 'grant_type_malformed', { supported: grantTypes }))
      }
      request.body = parameters as typeof request.body
    },
    schema: {
      operationId: 'issueToken',
      tags: ['auth'],
      summary: 'The OAuth 2.0 token endpoint (RFC 6749): a user logs in with email and password or a refresh token, a service client with client credentials',
      description: 'A form (application/x-www-form-urlencoded, as RFC 6749 sends it) or JSON. Parameters it does not know are ignored; ' +
        'a body with email (or username) and password and no grant_type is taken as grant_type=password. ' +
        'A service client authenticates with HTTP Basic (client_secret_basic) or client_id and client_secret in the body (client_secret_post), never both. ' +
        'Every answer is RFC 6749 section 5.1 or 5.2 JSON with Cache-Control: no-store. Limited per client IP (IPv6 per /64) for every grant, ' +
        'and failed logins per account (429 with Retry-After for that email until the window passes). A refresh token is used once: ' +
        'presenting it again ends its session.',
      security: [],
      consumes: ['application/x-www-form-urlencoded', 'application/json'],
      body: TokenRequestSchema,
      ...responses({
        200: { schema: TokenResponseSchema, description: 'RFC 6749 section 5.1: an access token; a refresh token for users, the granted scope for clients.' },
        400: {
          schema: OAuthErrorSchema,
          description: 'RFC 6749 section 5.2: invalid_request (a parameter missing, repeated or malformed, or two client authentication methods), ' +
            'unsupported_grant_type, invalid_grant (a refresh token that is unknown, expired, revoked or already used) or invalid_scope (beyond the client\'s grant).'
        },
        401: {
          schema: OAuthErrorSchema,
          description: 'invalid_client: unknown client, malformed client id, wrong secret or revoked client (one answer for all four); ' +
            'invalid_grant: wrong email or password (one answer for both).',
          headers: ['WWW-Authenticate']
        },
        429: { schema: OAuthErrorSchema, description: 'temporarily_unavailable: too many failed logins for this email (whatever the address), until Retry-After.' },
        503: { schema: OAuthErrorSchema, description: 'temporarily_unavailable: too many passwords being checked right now.' }
      })
    }
  }, async (request) => {
    const body = request.body
    const client = await authenticatedClient(clientAuthenticationOf(request.headers.authorization, body))

    if (body.grant_type === 'client_credentials') {
      if (client === null) throw toProblem(new IdentityError('invalid_client'))
      const requested = body.scope?.split(' ')
      if (requested !== undefined && !requested.every((scope) => (client.scopes as string[]).includes(scope))) {
        throw toProblem(new IdentityError('scope_not_granted', { granted: client.scopes }))
      }
      const granted = requested === undefined ? client.scopes : client.scopes.filter((scope) => requested.includes(scope))
      return tokenResponse(await app.issueClientToken({ id: client.id, scopes: granted }))
    }

    if (body.grant_type === 'refresh_token') {
      // An access token (or anything else not shaped like ours) is refused without a lookup.
      if (!REFRESH_TOKEN_PATTERN.test(body.refresh_token)) throw toProblem(new IdentityError('refresh_token_refused'))
      const outcome = await exchangeRefreshToken(db, body.refresh_token, config.REFRESH_TOKEN_TTL_S)
      if (outcome.status === 'reused') {
        app.revocations.markRevoked([sessionSubject(outcome.sessionId)])
        request.log.warn({ sessionId: outcome.sessionId }, 'refresh token presented twice: session ended')
      }
      if (outcome.status !== 'rotated') throw toProblem(new IdentityError('refresh_token_refused'))
      const token = await app.issueToken({ id: outcome.userId, tier: outcome.tier, sessionId: outcome.sessionId })
      return tokenResponse(token, outcome.refreshToken)
    }

    const email = (body.email ?? body.username)!
    const { password } = body
    const wrong = () => toProblem(new IdentityError('wrong_credentials'))
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
    if (credentials === null || !valid) throw wrong()
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
    if (session === null) throw wrong()
    const token = await app.issueToken({ id: credentials.id, tier: credentials.tier, sessionId: session.sessionId })
    return tokenResponse(token, session.refreshToken)
  })

  app.post('/auth/revoke', {
    // Public for the auth hook: a form request is RFC 7009's and carries its own authority (the token); any other
    // request is a bearer logout, authenticated by the handler exactly as the hook would.
    config: { public: true, oauthErrors: 'form' },
    schema: {
      operationId: 'revokeSession',
      tags: ['auth'],
      summary: 'Log out: end the caller\'s session (bearer), or revoke a token (RFC 7009, form body)',
      description: 'With a bearer token and no form body: ends the caller\'s session (204). With a form body `token=<refresh token or user access token>` ' +
        '(RFC 7009; token_type_hint and client credentials are accepted and ignored, since the token itself is the authority): ends the session it belongs to (200, ' +
        'also for a token that is unknown, expired or already revoked). Either way its access and refresh tokens stop working on every API process within a second.',
      security: [{ userBearer: [] }, {}],
      body: { content: { 'application/x-www-form-urlencoded': { schema: RevocationRequestSchema } } },
      ...responses({
        200: 'RFC 7009: the token is revoked (or was not a valid token of ours); no body.',
        204: { schema: z.null(), description: 'Logged out: the caller\'s session has ended.' },
        400: 'RFC 7009 (form requests, as RFC 6749 section 5.2 JSON): invalid_request (no token), or unsupported_token_type (a service client\'s access token, which cannot be revoked on its own: revoke the client).'
      })
    }
  }, async (request, reply) => {
    if (isForm(request)) {
      const { token } = request.body as z.infer<typeof RevocationRequestSchema>
      if (REFRESH_TOKEN_PATTERN.test(token)) {
        const sessionId = await revokeRefreshToken(db, token)
        if (sessionId !== null) app.revocations.markRevoked([sessionSubject(sessionId)])
      } else {
        const principal = await app.principalOf(token)
        if (principal?.kind === 'client') throw toProblem(new IdentityError('client_token_not_revocable'))
        if (principal?.kind === 'user') {
          await endSession(db, principal.id, principal.sessionId)
          app.revocations.markRevoked([sessionSubject(principal.sessionId)])
        }
      }
      // RFC 7009 section 2.2: 200, and the body (none here) is ignored by clients. No schema serializes nothing, so
      // the reply is the untyped one.
      return (reply as FastifyReply).code(200).send()
    }
    const user = await app.authenticate(request)
    authorize(user, ['user'])
    if (user.kind !== 'user') throw toProblem(new IdentityError('not_a_user_session'))
    await endSession(db, user.id, user.sessionId)
    app.revocations.markRevoked([sessionSubject(user.sessionId)])
    return reply.code(204).send(null)
  })

  app.get('/.well-known/oauth-authorization-server', {
    // Documentation, like /openapi.json: public and not rate limited.
    config: { public: true, rateLimit: false },
    schema: {
      operationId: 'getAuthorizationServerMetadata',
      tags: ['auth'],
      summary: 'OAuth 2.0 authorization server metadata (RFC 8414): where the token and revocation endpoints are and what they accept',
      description: 'The issuer is OAUTH_ISSUER when set (what a deployment sets: its public origin), else the origin this request came to.',
      security: [],
      ...responses({
        200: { schema: AuthorizationServerMetadataSchema, description: 'The metadata document.' }
      })
    }
  }, async (request) => {
    const issuer = config.OAUTH_ISSUER ?? `${request.protocol}://${request.host}`
    return {
      issuer,
      token_endpoint: `${issuer}/auth/token`,
      revocation_endpoint: `${issuer}/auth/revoke`,
      grant_types_supported: [...grantTypes],
      token_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post'],
      // The token is the authority at the revocation endpoint: a client may authenticate, and need not.
      revocation_endpoint_auth_methods_supported: ['none', 'client_secret_basic', 'client_secret_post'],
      scopes_supported: [...scopes],
      // No authorization endpoint: no response type is served.
      response_types_supported: []
    }
  })
}
