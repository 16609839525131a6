// Abuse of the service-client surface: tokens made for one principal used as the other, forged scope
// claims, client-secret guessing against the public limit, hostile token-endpoint bodies, and a signed token for
// a client that does not exist.
import { randomBytes, randomUUID } from 'node:crypto'
import t from 'tap'
import { createServiceClient } from '../../routes/identity/clients.ts'
import { buildTestApp, createClient, createUser, forgeToken, fund, ownerSql, testConfig, testSql } from '../helper.ts'
import { assertTablesIntact, INJECTION_STRINGS } from './support.ts'

const config = testConfig()
const now = () => Math.floor(Date.now() / 1000)
const signed = (payload: Record<string, unknown>) =>
  forgeToken({ alg: 'HS256', typ: 'JWT' }, { iss: config.JWT_ISSUER, aud: config.JWT_AUDIENCE, iat: now(), exp: now() + 300, ...payload }, config.JWT_SECRET)

t.test('claims that mix the two principals, or name scopes that do not exist, are refused', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const alice = await createUser(app)
  const client = await createClient(app)
  const deposit = { kind: 'deposit', userId: alice.id, amount: 1_000_000, currency: 'USD', reference: `forged-${randomUUID()}` }
  const forged: Array<[string, string]> = [
    ['a user token that also names a client', signed({ sub: alice.id, tier: 'standard', client_id: alice.id, scope: 'funds:write' })],
    ['a client token whose client_id is not its subject', signed({ sub: client.id, client_id: randomUUID(), scope: 'funds:write' })],
    ['a client token with an unknown scope', signed({ sub: client.id, client_id: client.id, scope: 'funds:write admin' })],
    ['a client token with no scope', signed({ sub: client.id, client_id: client.id, scope: '' })],
    ['a client token without a scope claim', signed({ sub: client.id, client_id: client.id })],
    ['a user token without a scope claim', signed({ sub: alice.id, tier: 'standard' })],
    ['a client token signed with another key', forgeToken({ alg: 'HS256', typ: 'JWT' }, { sub: client.id, client_id: client.id, scope: 'funds:write', iss: config.JWT_ISSUER, aud: config.JWT_AUDIENCE, iat: now(), exp: now() + 300 }, 'x'.repeat(40))]
  ]
  for (const [name, token] of forged) {
    const response = await app.inject({ method: 'POST', url: '/transactions', headers: { authorization: `Bearer ${token}`, 'idempotency-key': randomUUID() }, payload: deposit })
    t.equal(response.statusCode, 401, name)
  }
  const [row] = await sql`select count(*)::int as n from transactions where to_user_id = ${alice.id}`
  t.equal(row?.n, 0, 'no forged deposit was written')
})

t.test('a validly signed token for a client that does not exist moves no money', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const alice = await createUser(app)
  const ghost = await app.issueClientToken({ id: randomUUID(), scopes: ['funds:write'] })
  const response = await app.inject({
    method: 'POST',
    url: '/transactions',
    headers: { authorization: `Bearer ${ghost.accessToken}`, 'idempotency-key': randomUUID() },
    payload: { kind: 'deposit', userId: alice.id, amount: 5, currency: 'USD', reference: 'ghost-1' }
  })
  t.equal(response.statusCode, 401)
  const [row] = await sql`select count(*)::int as n from transactions where reference = 'ghost-1'`
  t.equal(row?.n, 0)
})

t.test('guessing client secrets hits the per-IP limit shared by every grant', async (t) => {
  const app = await buildTestApp(t, { RATE_LIMIT_PUBLIC_CAPACITY: '5', RATE_LIMIT_PUBLIC_REFILL_PER_S: '0.01' })
  // Made without the token endpoint: buckets live in Redis per address, and 127.0.0.1's serves the other tests.
  const { client, secret } = await createServiceClient(ownerSql(), 'guessed', ['funds:write'])
  const remoteAddress = `198.51.100.${Math.floor(Math.random() * 200) + 1}`
  const guess = (secret: string) => app.inject({
    method: 'POST', url: '/auth/token', remoteAddress, payload: { grant_type: 'client_credentials', client_id: client.id, client_secret: secret }
  })
  for (let i = 0; i < 5; i++) t.equal((await guess(`lsk_${randomBytes(32).toString('base64url')}`)).statusCode, 401, `guess ${i + 1}`)
  const right = await guess(secret)
  t.equal(right.statusCode, 429, 'the right secret is refused too once the bucket is empty')
  t.ok(Number(right.headers['retry-after']) >= 1)
  const login = await app.inject({ method: 'POST', url: '/auth/token', remoteAddress, payload: { email: 'someone@example.test', password: 'correct horse battery' } })
  t.equal(login.statusCode, 429, 'the password grant shares the bucket')
})

t.test('hostile token-endpoint bodies are 400s, 401s, 413s or 415s, never 500s', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const client = await createClient(app)
  const form = (body: string) => app.inject({ method: 'POST', url: '/auth/token', headers: { 'content-type': 'application/x-www-form-urlencoded' }, payload: body })

  const repeated = await form(`grant_type=client_credentials&client_id=${client.id}&client_id=${randomUUID()}&client_secret=${client.secret}`)
  t.equal(repeated.statusCode, 400, 'a parameter sent twice (RFC 6749 section 3.2)')
  // `client_id[]` is a parameter of another name, ignored (RFC 6749 section 3.2): the secret then names no client.
  t.equal((await form('grant_type=client_credentials&client_id[]=x&client_secret=y')).statusCode, 401, 'bracket syntax is not an array')
  t.equal((await form(`grant_type=client_credentials&client_id=${client.id}&client_secret=${'a'.repeat(70_000)}`)).statusCode, 413)
  t.equal((await form('grant_type=authorization_code&code=abc')).statusCode, 400, 'an unsupported grant')
  t.equal((await form('grant_type=client_credentials')).statusCode, 401, 'no client authentication: invalid_client')
  const formTransfer = await app.inject({
    method: 'POST',
    url: '/transactions',
    headers: { authorization: client.authorization, 'idempotency-key': randomUUID(), 'content-type': 'application/x-www-form-urlencoded' },
    payload: 'kind=deposit&amount=1'
  })
  t.equal(formTransfer.statusCode, 415, 'money routes take JSON only')

  for (const [name, payload] of Object.entries(INJECTION_STRINGS)) {
    for (const field of ['client_id', 'client_secret', 'scope'] as const) {
      const body = { grant_type: 'client_credentials', client_id: client.id, client_secret: client.secret, [field]: payload }
      const response = await app.inject({ method: 'POST', url: '/auth/token', payload: body })
      t.ok([400, 401].includes(response.statusCode), `${field} = ${name}: ${response.statusCode}`)
      t.notMatch(response.body, /PostgresError|syntax error|SQLSTATE/)
    }
  }
  await assertTablesIntact(t, sql)
})

t.test('hostile references are refused or stored as inert text, and used once', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const client = await createClient(app)
  const alice = await createUser(app)
  for (const [name, reference] of Object.entries(INJECTION_STRINGS)) {
    const response = await app.inject({
      method: 'POST',
      url: '/transactions',
      headers: { authorization: client.authorization, 'idempotency-key': randomUUID() },
      payload: { kind: 'deposit', userId: alice.id, amount: 1, currency: 'USD', reference }
    })
    if (response.statusCode === 201) {
      t.ok(/^[\x21-\x7e]{1,255}$/.test(reference), `${name}: only visible ASCII is accepted`)
      const [row] = await sql<{ reference: string }[]>`select reference from transactions where id = ${response.json().id}`
      t.equal(row?.reference, reference, `${name}: stored exactly`)
    } else {
      t.equal(response.statusCode, 400, name)
      t.same(response.json().errors.map((e: { path: string }) => e.path), ['reference'], `${name}: the reference is named`)
    }
  }
  await assertTablesIntact(t, sql)
  await fund(app, alice, 1, 'USD', { client, reference: 'once' })
  await t.rejects(fund(app, alice, 1, 'USD', { client, reference: 'once' }), /409/)
})
