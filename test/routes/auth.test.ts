// POST /auth/token's client-credentials grant (RFC 6749 section 4.4) and revocation reaching every API process.
import { randomUUID } from 'node:crypto'
import t from 'tap'
import { revokeServiceClient } from '../../routes/auth/clients.ts'
import { buildTestApp, createClient, createUser, testSql } from '../helper.ts'

const claimsOf = (token: string) => JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString()) as Record<string, unknown>

t.test('a client gets a scoped token with JSON or a form body, and no refresh token', async (t) => {
  const app = await buildTestApp(t)
  const client = await createClient(app, ['funds:write', 'events:read'])
  const asJson = await app.inject({
    method: 'POST', url: '/auth/token', payload: { grant_type: 'client_credentials', client_id: client.id, client_secret: client.secret }
  })
  t.equal(asJson.statusCode, 200)
  t.same(Object.keys(asJson.json()).sort(), ['accessToken', 'expiresIn', 'scope', 'tokenType'])
  t.match(asJson.json(), { tokenType: 'Bearer', expiresIn: 900, scope: 'funds:write events:read' })
  const claims = claimsOf(asJson.json().accessToken)
  t.match(claims, { sub: client.id, client_id: client.id, scope: 'funds:write events:read', iss: 'ledger-api', aud: 'ledger-api' })
  t.type(claims.iat, 'number')
  t.type(claims.exp, 'number')
  t.notOk('tier' in claims, 'a client token carries no user tier')

  const form = new URLSearchParams({ grant_type: 'client_credentials', client_id: client.id, client_secret: client.secret, scope: 'events:read' })
  const asForm = await app.inject({ method: 'POST', url: '/auth/token', headers: { 'content-type': 'application/x-www-form-urlencoded' }, payload: form.toString() })
  t.equal(asForm.statusCode, 200, 'RFC 6749 form body')
  t.equal(asForm.json().scope, 'events:read', 'a requested subset of the scopes')
  t.equal(claimsOf(asForm.json().accessToken).scope, 'events:read')

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
    t.equal(response.headers['www-authenticate'], 'Bearer')
    const { instance, ...body } = response.json()
    t.equal(instance, '/auth/token')
    bodies.push(body)
  }
  t.same(new Set(bodies.map((body) => JSON.stringify(body))).size, 1, 'one answer for every failure')

  const broadScope = await app.inject({
    method: 'POST', url: '/auth/token', payload: { grant_type: 'client_credentials', client_id: client.id, client_secret: client.secret, scope: 'funds:write events:read' }
  })
  t.equal(broadScope.statusCode, 400, 'a scope the client was not granted')
  t.same(broadScope.json().errors.map((e: { path: string }) => e.path), ['scope'])
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
