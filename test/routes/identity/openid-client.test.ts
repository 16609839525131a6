// The token endpoint as an integrator meets it: openid-client (the OAuth 2.0 / OpenID Connect client library for
// JavaScript runtimes) against the real server listening on loopback, with no adapter. It discovers the endpoints
// from RFC 8414 metadata, gets client-credentials tokens with HTTP Basic and with client_secret_post, logs a user in
// (RFC 6749 section 4.3, as a generic grant), refreshes and revokes (RFC 7009). The only option set is the one that
// lets it speak plain HTTP to loopback.
import type { AddressInfo } from 'node:net'
import * as client from 'openid-client'
import t from 'tap'
import { createServiceClient } from '../../../routes/identity/clients.ts'
import { buildTestApp, createUser, ownerSql } from '../../helper.ts'

async function listening (t: Parameters<typeof buildTestApp>[0]) {
  const app = await buildTestApp(t)
  await app.listen({ host: '127.0.0.1', port: 0 })
  return { app, origin: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}` }
}

const options = { algorithm: 'oauth2' as const, execute: [client.allowInsecureRequests] }

t.test('openid-client discovers the metadata and gets client-credentials tokens with HTTP Basic and with client_secret_post', async (t) => {
  const { origin } = await listening(t)
  const { client: registered, secret } = await createServiceClient(ownerSql(), 'openid-client settlement', ['funds:write', 'events:read'])

  const basic = await client.discovery(new URL(origin), registered.id, undefined, client.ClientSecretBasic(secret), options)
  const metadata = basic.serverMetadata()
  t.equal(metadata.issuer, origin, 'the issuer is the origin the metadata came from (RFC 8414 section 3.3)')
  t.equal(metadata.token_endpoint, `${origin}/auth/token`)
  t.equal(metadata.revocation_endpoint, `${origin}/auth/revoke`)
  t.same(metadata.token_endpoint_auth_methods_supported, ['client_secret_basic', 'client_secret_post'])

  const byBasic = await client.clientCredentialsGrant(basic, { scope: 'funds:write' })
  t.equal(byBasic.token_type, 'bearer', 'a Bearer token (openid-client lower-cases the type)')
  t.equal(byBasic.scope, 'funds:write', 'the subset asked for')
  t.equal(byBasic.expires_in, 900)
  t.notOk('refresh_token' in byBasic, 'no refresh token for a client')
  const list = await fetch(`${origin}/transactions`, { headers: { authorization: `Bearer ${byBasic.access_token}` } })
  t.equal(list.status, 200, 'the token works')

  const post = await client.discovery(new URL(origin), registered.id, undefined, client.ClientSecretPost(secret), options)
  const byPost = await client.clientCredentialsGrant(post)
  t.equal(byPost.scope, 'funds:write events:read', 'every scope of the client when none is asked for')
  t.equal((await fetch(`${origin}/webhook-endpoints`, { headers: { authorization: `Bearer ${byPost.access_token}` } })).status, 200)

  const wrong = await client.discovery(new URL(origin), registered.id, undefined, client.ClientSecretBasic(`${secret}x`), options)
  const refused = await client.clientCredentialsGrant(wrong).then(() => undefined, (error: unknown) => error as { status?: number, error?: string, cause?: unknown })
  t.equal(refused?.status, 401, 'a wrong secret is refused')
  t.match(JSON.stringify(refused?.cause), /"scheme":"basic"/, 'with the Basic challenge (RFC 6749 section 5.2)')

  const beyond = await client.clientCredentialsGrant(basic, { scope: 'funds:write admin' }).then(() => undefined, (error: unknown) => error as { status?: number, error?: string })
  t.equal(beyond?.status, 400)
  t.equal(beyond?.error, 'invalid_scope', 'a scope beyond the grant')
})

t.test('openid-client logs a user in, refreshes (a spent refresh token is invalid_grant) and revokes the session', async (t) => {
  const { app, origin } = await listening(t)
  const user = await createUser(app)
  // A first-party app is a public client: its client_id is sent and ignored.
  const publicClient = await client.discovery(new URL(origin), 'ledger-web', undefined, client.None(), options)

  const login = await client.genericGrantRequest(publicClient, 'password', { username: user.email, password: user.password })
  t.equal(login.token_type, 'bearer')
  t.type(login.refresh_token, 'string')

  const refreshed = await client.refreshTokenGrant(publicClient, login.refresh_token!)
  t.type(refreshed.access_token, 'string')
  t.not(refreshed.refresh_token, login.refresh_token, 'a new refresh token')
  const me = (token: string) => fetch(`${origin}/users/me`, { headers: { authorization: `Bearer ${token}` } })
  t.equal((await me(refreshed.access_token)).status, 200)

  const again = await client.refreshTokenGrant(publicClient, login.refresh_token!).then(() => undefined, (error: unknown) => error as { status?: number, error?: string })
  t.equal(again?.status, 400, 'the spent refresh token is a 400')
  t.equal(again?.error, 'invalid_grant', 'invalid_grant, which openid-client reports as such')
  t.equal((await me(refreshed.access_token)).status, 401, 'and its session ended with the replay')

  // A new session, revoked through RFC 7009.
  const second = await client.genericGrantRequest(publicClient, 'password', { username: user.email, password: user.password })
  t.equal((await me(second.access_token)).status, 200)
  await client.tokenRevocation(publicClient, second.refresh_token!, { token_type_hint: 'refresh_token' })
  t.equal((await me(second.access_token)).status, 401, 'revoking the refresh token ends the session: its access token is refused')
  const afterRevoke = await client.refreshTokenGrant(publicClient, second.refresh_token!).then(() => undefined, (error: unknown) => error as { error?: string })
  t.equal(afterRevoke?.error, 'invalid_grant', 'and the refresh token is dead')
  await client.tokenRevocation(publicClient, 'lrt_not-a-token-of-this-server-aaaaaaaaaaaaaaaaaaaaaa')
  t.pass('an unknown token is revoked without an error (RFC 7009 section 2.2)')

  // An access token can be revoked too: its session ends.
  const third = await client.genericGrantRequest(publicClient, 'password', { username: user.email, password: user.password })
  await client.tokenRevocation(publicClient, third.access_token, { token_type_hint: 'access_token' })
  t.equal((await me(third.access_token)).status, 401, 'revoking an access token ends its session')
})

t.test('the bearer scheme is accepted in any letter case (RFC 9110 section 11.1)', async (t) => {
  const { app, origin } = await listening(t)
  const user = await createUser(app)
  for (const scheme of ['Bearer', 'bearer', 'BEARER', 'bEaReR']) {
    const response = await fetch(`${origin}/users/me`, { headers: { authorization: `${scheme} ${user.token}` } })
    t.equal(response.status, 200, scheme)
  }
  t.equal((await fetch(`${origin}/users/me`, { headers: { authorization: `Basic ${user.token}` } })).status, 401, 'another scheme is not')
})
