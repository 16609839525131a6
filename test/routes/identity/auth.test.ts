// POST /auth/token: the client-credentials grant (RFC 6749 section 4.4), logins opening sessions, refresh token
// rotation, POST /auth/revoke, and revocation reaching every API process.
import { randomUUID } from 'node:crypto'
import t from 'tap'
import { purgeSessions, revokeServiceClient } from '../../../routes/identity/repository.ts'
import { decoyHash, hashPassword } from '../../../plugins/passwords/scrypt.ts'
import { buildTestApp, claimsOf, createClient, createUser, dbSpans, injectTraced, testSql, within } from '../../helper.ts'

t.test('a client gets a scoped token with JSON or a form body, and no refresh token', async (t) => {
  const app = await buildTestApp(t)
  const client = await createClient(app, ['funds:write', 'events:read'])
  const asJson = await app.inject({
    method: 'POST', url: '/auth/token', payload: { grant_type: 'client_credentials', client_id: client.id, client_secret: client.secret }
  })
  t.equal(asJson.statusCode, 200)
  t.same(Object.keys(asJson.json()).sort(), ['access_token', 'expires_in', 'scope', 'token_type'], 'RFC 6749 section 5.1, no refresh token')
  t.match(asJson.json(), { token_type: 'Bearer', expires_in: 900, scope: 'funds:write events:read' })
  t.equal(asJson.headers['cache-control'], 'no-store')
  const claims = claimsOf(asJson.json().access_token)
  t.match(claims, { sub: client.id, client_id: client.id, scope: 'funds:write events:read', iss: 'ledger-api', aud: 'ledger-api' })
  t.type(claims.iat, 'number')
  t.type(claims.exp, 'number')
  t.notOk('tier' in claims, 'a client token carries no user tier')

  const form = new URLSearchParams({ grant_type: 'client_credentials', client_id: client.id, client_secret: client.secret, scope: 'events:read' })
  const asForm = await app.inject({ method: 'POST', url: '/auth/token', headers: { 'content-type': 'application/x-www-form-urlencoded' }, payload: form.toString() })
  t.equal(asForm.statusCode, 200, 'RFC 6749 form body')
  t.equal(asForm.json().scope, 'events:read', 'a requested subset of the scopes')
  t.equal(claimsOf(asForm.json().access_token).scope, 'events:read')

  const loginForm = await app.inject({
    method: 'POST',
    url: '/auth/token',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    payload: new URLSearchParams({ email: 'nobody@example.test', password: 'wrong password!' }).toString()
  })
  t.equal(loginForm.statusCode, 401, 'the login grant takes a form body too')

  const users = await app.inject({ method: 'POST', url: '/users', headers: { 'content-type': 'application/x-www-form-urlencoded' }, payload: 'email=a%40b.test&name=A&password=123456789012' })
  t.equal(users.statusCode, 415, 'no other route accepts form bodies')
})

t.test('unknown client, wrong secret and revoked client get the same 401', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const client = await createClient(app)
  const revoked = await createClient(app)
  t.ok(await revokeServiceClient(sql, revoked.id))
  const attempts = [
    { client_id: randomUUID(), client_secret: client.secret },
    { client_id: client.id, client_secret: `${client.secret}x` },
    { client_id: client.id, client_secret: revoked.secret },
    { client_id: revoked.id, client_secret: revoked.secret }
  ]
  const bodies = []
  for (const attempt of attempts) {
    const response = await app.inject({ method: 'POST', url: '/auth/token', payload: { grant_type: 'client_credentials', ...attempt } })
    t.equal(response.statusCode, 401)
    t.equal(response.headers['www-authenticate'], 'Basic realm="ledger-api"')
    t.match(response.headers['content-type'], /^application\/json/)
    const body = response.json()
    t.equal(body.error, 'invalid_client')
    bodies.push(body)
  }
  t.same(new Set(bodies.map((body) => JSON.stringify(body))).size, 1, 'one answer for every failure')

  const broadScope = await app.inject({
    method: 'POST', url: '/auth/token', payload: { grant_type: 'client_credentials', client_id: client.id, client_secret: client.secret, scope: 'funds:write events:read' }
  })
  t.equal(broadScope.statusCode, 400, 'a scope the client was not granted')
  t.equal(broadScope.json().error, 'invalid_scope')
})

t.test('a revoked client\'s live tokens stop working on every API process within a second', async (t) => {
  const [one, two] = [await buildTestApp(t, { REVOCATION_POLL_MS: '200' }), await buildTestApp(t, { REVOCATION_POLL_MS: '200' })]
  const sql = testSql(t)
  const client = await createClient(one)
  const alice = await createUser(one)
  const list = (app: typeof one) => app.inject({ method: 'GET', url: '/transactions', headers: { authorization: client.authorization } })
  t.equal((await list(one)).statusCode, 200)
  t.equal((await list(two)).statusCode, 200)

  // As the operator's `npm run clients -- revoke` does it: straight in the database, no API process told.
  t.ok(await revokeServiceClient(sql, client.id))
  const started = Date.now()
  const refusedAt = await Promise.all([one, two].map(async (app) => {
    while (Date.now() - started < 3000) {
      if ((await list(app)).statusCode === 401) return Date.now() - started
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
    return Infinity
  }))
  t.ok(refusedAt.every((ms) => ms <= 1000), `both processes refuse it within 1 s (${refusedAt.join(' ms, ')} ms)`)
  const refused = await list(two)
  t.equal(refused.json().detail, 'The token was revoked.')
  const deposit = await two.inject({
    method: 'POST',
    url: '/transactions',
    headers: { authorization: client.authorization, 'idempotency-key': randomUUID() },
    payload: { kind: 'deposit', userId: alice.id, amount: 1, currency: 'USD', reference: 'after-revoke' }
  })
  t.equal(deposit.statusCode, 401)
  const [row] = await sql`select count(*)::int as n from transactions where client_id = ${client.id}`
  t.equal(row?.n, 0, 'nothing was written')
})

t.test('the ledger refuses a revoked client even before the revocation reaches a process', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const client = await createClient(app)
  const alice = await createUser(app)
  // The client row alone, with no revocation list entry: only post_transaction()'s own check can refuse it.
  await sql`update service_clients set revoked_at = now() where id = ${client.id}`
  const response = await app.inject({
    method: 'POST',
    url: '/transactions',
    headers: { authorization: client.authorization, 'idempotency-key': randomUUID() },
    payload: { kind: 'deposit', userId: alice.id, amount: 1, currency: 'USD', reference: 'raced-revoke' }
  })
  t.equal(response.statusCode, 401)
  t.equal(response.json().detail, 'The client was revoked.')
  const [row] = await sql`select count(*)::int as n from transactions where client_id = ${client.id}`
  t.equal(row?.n, 0)
})

const login = (app: Awaited<ReturnType<typeof buildTestApp>>, email: string, password: string) =>
  app.inject({ method: 'POST', url: '/auth/token', payload: { email, password } })

t.test('a login opens a session: an access token naming it and a refresh token stored only as its hash', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const user = await createUser(app)
  const response = await login(app, user.email, user.password)
  t.equal(response.statusCode, 200)
  const body = response.json() as { access_token: string, refresh_token: string }
  t.same(Object.keys(body).sort(), ['access_token', 'expires_in', 'refresh_token', 'token_type'])
  t.match(body.refresh_token, /^lrt_[A-Za-z0-9_-]{43}$/)
  const claims = claimsOf(body.access_token)
  t.match(claims, { sub: user.id, tier: 'standard', scope: '' })
  t.match(String(claims.sid), /^[0-9a-f-]{36}$/)
  t.not(claims.sid, user.sessionId, 'every login is a session of its own')
  const [session] = await sql<{ user_id: string, ttl: number }[]>`
    select user_id, extract(epoch from expires_at - created_at)::int as ttl from sessions where id = ${String(claims.sid)}`
  t.equal(session?.user_id, user.id)
  t.ok(session !== undefined && Math.abs(session.ttl - 30 * 86400) <= 2, 'the refresh token lives REFRESH_TOKEN_TTL_S (30 days)')
  const [stored] = await sql<{ n: number }[]>`
    select count(*)::int as n from refresh_tokens where session_id = ${String(claims.sid)}
       and token_hash = sha256(convert_to(${body.refresh_token}, 'UTF8'))`
  t.equal(stored?.n, 1, 'the refresh token is stored as its SHA-256')
  const [plain] = await sql<{ n: number }[]>`select count(*)::int as n from refresh_tokens where encode(token_hash, 'escape') like ${`%${body.refresh_token.slice(4, 20)}%`}`
  t.equal(plain?.n, 0, 'and nowhere in clear')
})

t.test('grant_type=refresh_token rotates the pair, in JSON or as a form body; the session stays the same', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const user = await createUser(app)
  await sql`update users set tier = 'pro' where id = ${user.id}`
  const asJson = await app.inject({ method: 'POST', url: '/auth/token', payload: { grant_type: 'refresh_token', refresh_token: user.refreshToken } })
  t.equal(asJson.statusCode, 200)
  const first = asJson.json() as { access_token: string, refresh_token: string, expires_in: number }
  t.equal(first.expires_in, 900)
  t.match(claimsOf(first.access_token), { sub: user.id, sid: user.sessionId, tier: 'pro' }, 'same session, the tier as it is now')
  const asForm = await app.inject({
    method: 'POST',
    url: '/auth/token',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    payload: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: first.refresh_token }).toString()
  })
  t.equal(asForm.statusCode, 200, 'RFC 6749 form body')
  const second = asForm.json() as { access_token: string, refresh_token: string }
  t.not(second.refresh_token, first.refresh_token)
  t.equal((await app.inject({ method: 'GET', url: '/users/me', headers: { authorization: `Bearer ${second.access_token}` } })).statusCode, 200)
  const [row] = await sql<{ used: number, unused: number }[]>`
    select count(*) filter (where used_at is not null)::int as used, count(*) filter (where used_at is null)::int as unused
      from refresh_tokens where session_id = ${user.sessionId}`
  t.same(row, { used: 2, unused: 1 }, 'two used, one current')
})

t.test('POST /auth/revoke ends the caller\'s session on every API process within a second, and only that session', async (t) => {
  const [one, two] = [await buildTestApp(t), await buildTestApp(t)]
  const sql = testSql(t)
  const user = await createUser(one)
  const other = await login(one, user.email, user.password)
  const otherAuthorization = `Bearer ${other.json().access_token as string}`
  const me = (app: typeof one, authorization: string) => app.inject({ method: 'GET', url: '/users/me', headers: { authorization } })
  t.equal((await me(two, user.authorization)).statusCode, 200)

  const revoked = await one.inject({ method: 'POST', url: '/auth/revoke', headers: { authorization: user.authorization } })
  t.equal(revoked.statusCode, 204)
  t.equal(revoked.body, '')
  t.equal((await me(one, user.authorization)).statusCode, 401, 'refused at once where it was revoked')
  const took = await within(1000, async () => (await me(two, user.authorization)).statusCode === 401)
  t.ok(took <= 1000, `refused by the other process within 1 s (${took} ms)`)
  t.equal((await me(two, user.authorization)).json().detail, 'The token was revoked.')
  t.equal((await me(two, otherAuthorization)).statusCode, 200, 'the user\'s other session is untouched')
  const [session] = await sql<{ end_reason: string | null }[]>`select end_reason from sessions where id = ${user.sessionId}`
  t.equal(session?.end_reason, 'logout')
  t.equal((await one.inject({ method: 'POST', url: '/auth/revoke', headers: { authorization: user.authorization } })).statusCode, 401, 'a second logout: the token is dead')

  const client = await createClient(one)
  t.equal((await one.inject({ method: 'POST', url: '/auth/revoke', headers: { authorization: client.authorization } })).statusCode, 403, 'a client has no session to end')
})

t.test('a successful login upgrades a hash below the current cost; the decoy is at the current cost', async (t) => {
  const app = await buildTestApp(t, { PASSWORD_HASH_COST: '2048' })
  const sql = testSql(t)
  const user = await createUser(app)
  const weak = await hashPassword(user.password, 1024)
  await sql`update users set password_hash = ${weak} where id = ${user.id}`
  t.equal((await login(app, user.email, 'not the password at all')).statusCode, 401)
  const [unchanged] = await sql<{ password_hash: string }[]>`select password_hash from users where id = ${user.id}`
  t.equal(unchanged?.password_hash, weak, 'a failed login changes nothing')
  t.equal((await login(app, user.email, user.password)).statusCode, 200)
  const [upgraded] = await sql<{ password_hash: string }[]>`select password_hash from users where id = ${user.id}`
  t.match(upgraded?.password_hash, /^scrypt\$2048\$8\$1\$/, 'stored again at N = 2048')
  t.equal((await login(app, user.email, user.password)).statusCode, 200, 'the upgraded hash verifies')
  t.match(await decoyHash(2048), /^scrypt\$2048\$8\$1\$/, 'the decoy for unknown emails is at the current cost')
  t.ok(app.passwords.needsRehash(weak) && !app.passwords.needsRehash(upgraded?.password_hash ?? ''))
})

t.test('housekeeping purges sessions ended over an hour ago and expired ones, old used refresh tokens and old revocations', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const [ended, endedNow, expired, live] = [await createUser(app), await createUser(app), await createUser(app), await createUser(app)]
  for (const user of [ended, endedNow]) {
    t.equal((await app.inject({ method: 'POST', url: '/auth/revoke', headers: { authorization: user.authorization } })).statusCode, 204)
  }
  await sql`update sessions set ended_at = now() - interval '3901 seconds' where id = ${ended.sessionId}`
  await sql`update sessions set expires_at = now() - interval '1 second' where id = ${expired.sessionId}`
  t.equal((await app.inject({ method: 'POST', url: '/auth/token', payload: { grant_type: 'refresh_token', refresh_token: live.refreshToken } })).statusCode, 200)
  await sql`update refresh_tokens set used_at = now() - interval '31 days' where session_id = ${live.sessionId} and used_at is not null`
  await sql`insert into revocations (subject, revoked_at) values (${`session:${randomUUID()}`}, now() - interval '3 hours')`
  let purged = 0
  for (let round = 0; round < 20; round++) {
    const count = await purgeSessions(app.db, { refreshTokenTtlS: 30 * 86400, maxTokenAgeS: 3900, batch: 100_000 })
    purged += count
    if (count === 0) break
  }
  t.ok(purged >= 4)
  const [left] = await sql<{ sessions: string[], endedNow: string | null, tokens: number, old: number }[]>`
    select array(select id::text from sessions where id in (${ended.sessionId}, ${expired.sessionId}, ${live.sessionId}) order by 1) as sessions,
           (select end_reason from sessions where id = ${endedNow.sessionId}) as "endedNow",
           (select count(*)::int from refresh_tokens where session_id = ${live.sessionId}) as tokens,
           (select count(*)::int from revocations where revoked_at < now() - interval '2 hours') as old`
  t.same(left?.sessions, [live.sessionId], 'only the live session is left')
  t.equal(left?.endedNow, 'logout', 'a session ended within the access token window is kept, with why it ended')
  t.equal(left?.tokens, 1, 'with its current refresh token only')
  t.equal(left?.old, 0, 'old revocations are gone')
  t.equal((await app.inject({ method: 'GET', url: '/users/me', headers: { authorization: ended.authorization } })).statusCode, 401,
    'a purged session\'s access token is still refused (its revocation is younger than any token)')
})

t.test('the session check costs no round trip: an authenticated request makes one Redis call (the limiter) and its own SQL only', async (t) => {
  const app = await buildTestApp(t)
  const user = await createUser(app)
  // Many revocations in the list, as a busy service would hold: the check stays two in-memory lookups.
  app.revocations.markRevoked(Array.from({ length: 10_000 }, () => `session:${randomUUID()}`))
  const { response, spans } = await injectTraced(app, { method: 'GET', url: '/balances', headers: { authorization: user.authorization } })
  t.equal(response.statusCode, 200)
  t.equal(dbSpans(spans).length, 1, 'one statement: the balances themselves, no session lookup')
  t.same(spans.filter((span) => span.attributes['db.system'] === 'redis').map((span) => span.name), ['rate-limit token bucket'], 'one Redis call: the rate limiter')
})
