// Each process remembers the access tokens it verified (plugins/auth/index.ts, verifiedTokens), so a request
// with a known token skips decoding and the HMAC. What it must not skip: expiry (by `exp` and by maximum age),
// revocation, and full verification of anything that is not byte-for-byte the verified token.
import t from 'tap'
import { buildTestApp, claimsOf, createClient, createUser, forgeToken, ownerSql } from '../helper.ts'
import { assertProblem } from './support.ts'

const now = () => Math.floor(Date.now() / 1000)
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

t.test('a token verified once still expires on time, by exp and by maximum age', async (t) => {
  const app = await buildTestApp(t)
  const user = await createUser(app)
  const secret = app.config.JWT_SECRET
  const base = claimsOf(user.token)
  const shortLived = forgeToken({ alg: 'HS256', typ: 'JWT' }, { ...base, iat: now(), exp: now() + 2 }, secret)
  // Issued 3,598 s ago with a later exp: the one-hour maximum age ends it first.
  const old = forgeToken({ alg: 'HS256', typ: 'JWT' }, { ...base, iat: now() - 3598, exp: now() + 600 }, secret)
  const me = (token: string) => app.inject({ method: 'GET', url: '/users/me', headers: { authorization: `Bearer ${token}` } })
  for (let i = 0; i < 3; i++) {
    t.equal((await me(shortLived)).statusCode, 200, 'the short-lived token works, again and again')
    t.equal((await me(old)).statusCode, 200, 'the old token works while under an hour')
  }
  await sleep(3100)
  assertProblem(t, await me(shortLived), 401, 'past its exp')
  assertProblem(t, await me(old), 401, 'past the maximum age')
  t.equal((await me(user.token)).statusCode, 200, 'a live token of the same user still works')
})

t.test('tampered copies of a token in use are verified in full and refused', async (t) => {
  const app = await buildTestApp(t)
  const victim = await createUser(app)
  const me = (authorization: string) => app.inject({ method: 'GET', url: '/users/me', headers: { authorization } })
  t.equal((await me(victim.authorization)).statusCode, 200, 'the real token is in use (remembered)')
  const [head, body, signature] = victim.token.split('.') as [string, string, string]
  const claims = claimsOf(victim.token)
  const reencode = (value: Record<string, unknown>) => Buffer.from(JSON.stringify(value)).toString('base64url')
  const variants: Record<string, string> = {
    'signature flipped': `Bearer ${head}.${body}.${(signature.startsWith('A') ? 'B' : 'A') + signature.slice(1)}`,
    'payload tier pro, signature kept': `Bearer ${head}.${reencode({ ...claims, tier: 'pro' })}.${signature}`,
    'payload exp extended, signature kept': `Bearer ${head}.${reencode({ ...claims, exp: now() + 86_400 })}.${signature}`,
    'signature removed': `Bearer ${head}.${body}.`,
    'trailing space': `${victim.authorization} `,
    'token twice': `${victim.authorization}${victim.token}`
  }
  for (const [label, authorization] of Object.entries(variants)) {
    assertProblem(t, await me(authorization), 401, label)
  }
  t.equal((await me(victim.authorization)).statusCode, 200, 'the real token still works')
  // The scheme's letter case is not part of the token (RFC 9110 section 11.1): another header text, the same token.
  t.equal((await me(`bearer ${victim.token}`)).statusCode, 200, 'the lower-case scheme is the same token')
})

t.test('a remembered token stops as soon as its session is revoked', async (t) => {
  const app = await buildTestApp(t)
  const user = await createUser(app)
  const other = await createUser(app)
  for (let i = 0; i < 3; i++) {
    t.equal((await app.inject({ method: 'GET', url: `/users/${other.id}`, headers: { authorization: user.authorization } })).statusCode, 200)
  }
  t.equal((await app.inject({ method: 'POST', url: '/auth/revoke', headers: { authorization: user.authorization } })).statusCode, 204)
  assertProblem(t, await app.inject({ method: 'GET', url: `/users/${other.id}`, headers: { authorization: user.authorization } }), 401, 'revoked')
})

t.test('a remembered token stops at the next read of the list when another process revokes its user or its client', async (t) => {
  const app = await buildTestApp(t)
  const user = await createUser(app)
  const other = await createUser(app)
  const client = await createClient(app, ['funds:write'])
  const asUser = () => app.inject({ method: 'GET', url: `/users/${other.id}`, headers: { authorization: user.authorization } })
  const asClient = () => app.inject({ method: 'GET', url: '/transactions', headers: { authorization: client.authorization } })
  for (let i = 0; i < 3; i++) {
    t.equal((await asUser()).statusCode, 200, 'the user token is remembered')
    t.equal((await asClient()).statusCode, 200, 'the client token is remembered')
  }
  // Written as another process or the operator's tool writes it: only in the table, so this process learns of it
  // when it next reads the list (its poll, run here rather than waited for).
  await ownerSql()`insert into revocations (subject) values (${`user:${user.id}`}), (${`client:${client.id}`})`
  await app.revocations.refresh()
  assertProblem(t, await asUser(), 401, 'the removed user\'s remembered token')
  assertProblem(t, await asClient(), 401, 'the revoked client\'s remembered token')
  const fresh = await createUser(app)
  t.equal((await app.inject({ method: 'GET', url: `/users/${other.id}`, headers: { authorization: fresh.authorization } })).statusCode, 200, 'other tokens still work')
})
