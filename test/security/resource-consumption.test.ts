// Unrestricted resource consumption: page sizes, body size, JSON depth and width, URL length, numeric
// ceilings, runaway queries (statement_timeout) and slow clients (REQUEST_TIMEOUT_MS).
import { randomBytes } from 'node:crypto'
import type { AddressInfo } from 'node:net'
import { Readable } from 'node:stream'
import t, { type Test } from 'tap'
import type { App } from '../../app.ts'
import { buildTestApp, createClient, createUser, testSql, uniqueEmail, type TestClient, type TestUser } from '../helper.ts'
import { assertProblem, fundingBody, rawExchange, TEST_CURRENCY } from './support.ts'

interface BodyRoute {
  method: 'POST' | 'PATCH'
  url: string
  /** Who sends it: nobody (public), the user, or the service client (the money route takes bodies from both). */
  auth: false | 'user' | 'client'
  headers: Record<string, string>
}

const BODY_ROUTES = (user: TestUser): BodyRoute[] => [
  { method: 'POST', url: '/users', auth: false, headers: {} },
  { method: 'POST', url: '/auth/token', auth: false, headers: {} },
  { method: 'PATCH', url: `/users/${user.id}`, auth: 'user', headers: {} },
  { method: 'POST', url: '/posts', auth: 'user', headers: {} },
  { method: 'POST', url: '/transactions', auth: 'user', headers: { 'idempotency-key': 'resource-key' } },
  { method: 'POST', url: '/transactions', auth: 'client', headers: { 'idempotency-key': 'resource-key' } }
]

const label = (route: BodyRoute) => `${route.method} ${route.url}${route.auth === 'client' ? ' (client)' : ''}`

/** Every test that sends bodies makes a user and a funds:write client, so each body route has its caller. */
async function callers (app: App) {
  return { user: await createUser(app), client: await createClient(app) }
}

const sendRaw = (app: App, who: { user: TestUser, client: TestClient }, route: BodyRoute, payload: string | Readable) =>
  app.inject({
    method: route.method,
    url: route.url,
    headers: { 'content-type': 'application/json', ...route.headers, ...(route.auth === false ? {} : { authorization: who[route.auth].authorization }) },
    payload
  })

async function stillHealthy (t: Test, app: App, user: TestUser) {
  t.equal((await app.inject({ method: 'GET', url: '/health/live' })).statusCode, 200, 'the process still answers')
  t.equal((await app.inject({ method: 'GET', url: '/balances', headers: { authorization: user.authorization } })).statusCode, 200, 'and still serves requests')
}

t.test('limit above the maximum (and other bad limits) is 400 on every list route', async (t) => {
  const app = await buildTestApp(t)
  const { user, client } = await callers(app)
  // A client's own transaction list is bounded the same way as a user's.
  const lists = [{ url: '/transactions', max: 100, who: user }, { url: '/feed', max: 50, who: user }, { url: '/transactions', max: 100, who: client }]
  for (const { url, max, who } of lists) {
    const as = who === client ? ' (client)' : ''
    t.equal((await app.inject({ method: 'GET', url: `${url}?limit=${max}`, headers: { authorization: who.authorization } })).statusCode, 200, `${url}${as} limit=${max} is allowed`)
    for (const limit of [String(max + 1), '1000', '1000000', '9007199254740993', '1e9', 'Infinity', '-1', '0', '1.5', 'NaN', '', '0x7fffffff']) {
      const response = await app.inject({ method: 'GET', url: `${url}?limit=${encodeURIComponent(limit)}`, headers: { authorization: who.authorization } })
      assertProblem(t, response, 400, `${url}${as}?limit=${limit}`)
    }
  }
})

t.test('a body over BODY_LIMIT_BYTES is 413 on every route that takes one', async (t) => {
  const app = await buildTestApp(t)
  const who = await callers(app)
  const { user } = who
  t.equal(app.config.BODY_LIMIT_BYTES, 64 * 1024, 'the default limit is 64 KiB')
  const over = JSON.stringify({ body: 'x'.repeat(64 * 1024) })
  // A well-formed funding body over the limit (a huge description), for the kind each caller may post or not.
  const overDeposit = JSON.stringify(fundingBody('deposit', user.id, 1, { description: 'x'.repeat(64 * 1024) }))
  for (const route of BODY_ROUTES(user)) {
    assertProblem(t, await sendRaw(app, who, route, over), 413, `${label(route)} with ${over.length} bytes`)
    // Without Content-Length (a stream), the limit is enforced while reading.
    const chunks = Array.from({ length: 80 }, () => Buffer.alloc(1024, 'a'))
    assertProblem(t, await sendRaw(app, who, route, Readable.from(chunks)), 413, `${label(route)} streamed without a length`)
    if (route.url === '/transactions') assertProblem(t, await sendRaw(app, who, route, overDeposit), 413, `${label(route)} with a ${overDeposit.length}-byte deposit`)
  }
  // Just under the limit is parsed, then refused by the schema (a 5000-character post body, a 500-character description at most).
  const under = JSON.stringify({ body: 'x'.repeat(60_000) })
  assertProblem(t, await sendRaw(app, who, BODY_ROUTES(user)[3]!, under), 400, 'a body just under the limit is parsed and validated')
  const underDeposit = JSON.stringify(fundingBody('deposit', user.id, 1, { description: 'x'.repeat(60_000) }))
  assertProblem(t, await sendRaw(app, who, BODY_ROUTES(user)[5]!, underDeposit), 400, 'a client\'s deposit just under the limit is parsed and validated')
  await stillHealthy(t, app, user)
})

t.test('deeply nested JSON is 400, never a 500 or a crash', async (t) => {
  const app = await buildTestApp(t)
  const who = await callers(app)
  const { user } = who
  const depth = 10_000
  const shapes: Record<string, string> = {
    arrays: '['.repeat(depth) + ']'.repeat(depth),
    'unbalanced arrays': '['.repeat(depth),
    objects: '{"a":'.repeat(depth) + '1' + '}'.repeat(depth),
    'arrays inside a field': `{"body":${'['.repeat(depth)}${']'.repeat(depth)}}`,
    'objects inside a field': `{"name":${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}}`,
    'deep __proto__': `{"body":${'{"__proto__":'.repeat(2000)}1${'}'.repeat(2000)}}`,
    // A funding body whose every field is well-formed but one, nested deep: the client's route validates it all.
    'objects inside a deposit': `{"kind":"deposit","userId":"${user.id}","amount":1,"currency":"${TEST_CURRENCY}","reference":${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}}`
  }
  for (const route of BODY_ROUTES(user)) {
    for (const [shape, payload] of Object.entries(shapes)) {
      const started = Date.now()
      const response = await sendRaw(app, who, route, payload)
      // A user's deposit is refused for its kind before its body is validated: a 403, as quickly.
      const status = shape === 'objects inside a deposit' && route.auth === 'user' && route.url === '/transactions' ? 403 : 400
      assertProblem(t, response, status, `${label(route)}: ${depth} levels of ${shape}`)
      t.ok(Date.now() - started < 2000, `${shape} is refused quickly (${Date.now() - started} ms)`)
    }
  }
  await stillHealthy(t, app, user)
})

t.test('a huge number of JSON keys is 400 and cheap', async (t) => {
  const app = await buildTestApp(t)
  const who = await callers(app)
  const { user } = who
  const keys = Object.fromEntries(Array.from({ length: 5000 }, (_, i) => [`k${i}`, 0]))
  const payload = JSON.stringify({ body: 'x', ...keys })
  // A valid deposit plus the same 5000 unknown keys: the strict funding schema names them, cheaply.
  const deposit = JSON.stringify({ ...fundingBody('deposit', user.id, 1), ...keys })
  t.ok(payload.length < 64 * 1024 && deposit.length < 64 * 1024, `${payload.length} and ${deposit.length} bytes, under the body limit`)
  for (const route of BODY_ROUTES(user)) {
    const bodies: [string, string][] = [['5000 keys', payload], ...(route.auth === 'client' ? [['a deposit with 5000 keys', deposit] as [string, string]] : [])]
    for (const [shape, body] of bodies) {
      const started = Date.now()
      const response = await sendRaw(app, who, route, body)
      assertProblem(t, response, 400, `${label(route)} with ${shape}`)
      t.ok(Date.now() - started < 2000, `refused in ${Date.now() - started} ms`)
      t.ok(response.body.length < body.length * 2, `the error is not an amplification (${response.body.length} bytes)`)
    }
  }
  // Many keys that collide in a hash table would be the classic; JSON.parse in V8 is not affected, but check timing.
  const same = `{${Array.from({ length: 6000 }, () => '"body":"x"').join(',')}}`
  const started = Date.now()
  const duplicate = await sendRaw(app, who, BODY_ROUTES(user)[3]!, same)
  t.ok(duplicate.statusCode < 500, `6000 duplicate keys: ${duplicate.statusCode}`)
  t.ok(Date.now() - started < 2000, 'duplicate keys are cheap too')
  await stillHealthy(t, app, user)
})

t.test('very long URLs and query strings', async (t) => {
  const app = await buildTestApp(t)
  const user = await createUser(app)
  const auth = { authorization: user.authorization }
  assertProblem(t, await app.inject({ method: 'GET', url: `/transactions?cursor=${'a'.repeat(100_000)}.b`, headers: auth }), 400, 'a 100 KB cursor')
  assertProblem(t, await app.inject({ method: 'GET', url: `/feed?${Array.from({ length: 5000 }, (_, i) => `p${i}=${i}`).join('&')}`, headers: auth }), 400, '5000 query parameters')
  assertProblem(t, await app.inject({ method: 'GET', url: `/feed?limit=${'1'.repeat(50_000)}`, headers: auth }), 400, 'a 50,000-digit limit')
  const repeated = await app.inject({ method: 'GET', url: `/transactions?${Array.from({ length: 5000 }, () => 'limit=1').join('&')}`, headers: auth })
  assertProblem(t, repeated, 400, '5000 repetitions of limit')

  // Past the router's maxParamLength (200) and with bad percent-encoding Fastify answers before our error
  // handler: still a 4xx, but not problem+json and with the path echoed back.
  for (const [label, url] of [['a 10,000-character id', `/users/${'a'.repeat(10_000)}`], ['bad percent-encoding', '/users/%E0%A4%A']] as const) {
    const response = await app.inject({ method: 'GET', url, headers: auth })
    t.ok([400, 404, 414].includes(response.statusCode), `${label}: a 4xx (${response.statusCode})`)
    t.match(String(response.headers['content-type']), /^application\/problem\+json/, `${label}: problem+json`)
    t.notOk(response.body.includes(url.slice(7, 60)), `${label}: the path is not echoed back`)
  }

  // On the wire, Node's header limit (16 KiB) stops an oversized request line before the app parses anything.
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo
  const huge = await rawExchange(port, [`GET /feed?x=${'a'.repeat(100_000)} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`], { timeoutMs: 5000 })
  t.ok(huge.status === 431 || huge.status === 414 || huge.status === 400, `a 100 KB request line is refused on the wire (${huge.status})`)
  t.ok(huge.closed, 'and the connection is closed')
  const manyHeaders = await rawExchange(port, [`GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n${Array.from({ length: 3000 }, (_, i) => `x-h${i}: ${i}`).join('\r\n')}\r\n\r\n`], { timeoutMs: 5000 })
  t.ok(manyHeaders.status === 431 || manyHeaders.status === 400, `3000 headers are refused on the wire (${manyHeaders.status})`)
  const after = await rawExchange(port, ['GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n'], { timeoutMs: 3000 })
  t.equal(after.status, 200, 'the server still answers afterwards')
})

t.test('money at the numeric ceiling: amounts past 2^53-1 are 400, a balance overflow is refused without a 500', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const user = await createUser(app)
  const other = await createUser(app)
  const bank = await createClient(app)
  // Money enters through a service client; the amounts it may send are the same bounded integers as a transfer's.
  const post = (key: string, kind: 'deposit' | 'withdrawal', amount: unknown, who: TestUser = user) => app.inject({
    method: 'POST', url: '/transactions', headers: { authorization: bank.authorization, 'idempotency-key': key }, payload: fundingBody(kind, who.id, amount)
  })
  const deposit = (key: string, amount: unknown, who: TestUser = user) => post(key, 'deposit', amount, who)
  for (const amount of [Number.MAX_SAFE_INTEGER + 1, 2 ** 63, 1e308, -1, 0, 0.5]) {
    assertProblem(t, await deposit(`ceiling-${amount}`, amount), 400, `deposit amount ${amount}`)
    assertProblem(t, await post(`ceiling-withdrawal-${amount}`, 'withdrawal', amount), 400, `withdrawal amount ${amount}`)
    const transfer = await app.inject({
      method: 'POST', url: '/transactions', headers: { authorization: other.authorization, 'idempotency-key': `ceiling-transfer-${amount}` }, payload: { kind: 'transfer', amount, currency: TEST_CURRENCY, toUserId: user.id }
    })
    assertProblem(t, transfer, 400, `transfer amount ${amount}`)
  }
  const raw = await app.inject({
    method: 'POST',
    url: '/transactions',
    headers: { authorization: bank.authorization, 'idempotency-key': 'ceiling-raw', 'content-type': 'application/json' },
    payload: `{"kind":"deposit","userId":"${user.id}","amount":1${'0'.repeat(400)},"currency":"${TEST_CURRENCY}","reference":"ceiling-raw"}`
  })
  assertProblem(t, raw, 400, 'a 400-digit amount literal')
  t.equal((await deposit('ceiling-max', Number.MAX_SAFE_INTEGER)).statusCode, 201, 'the largest amount is accepted once')
  const overflow = await deposit('ceiling-overflow', 1)
  t.ok(overflow.statusCode === 422, `one more cent is refused with 422 (got ${overflow.statusCode})`)
  t.equal(overflow.json().type, 'https://ledger-api.dev/problems/balance_limit_exceeded')
  t.ok(overflow.statusCode < 500, 'and is not a 5xx')
  // The same through a transfer into a full account.
  t.equal((await deposit('ceiling-other', 10, other)).statusCode, 201)
  const transfer = await app.inject({
    method: 'POST',
    url: '/transactions',
    headers: { authorization: other.authorization, 'idempotency-key': 'ceiling-transfer' },
    payload: { kind: 'transfer', amount: 5, currency: TEST_CURRENCY, toUserId: user.id }
  })
  t.ok(transfer.statusCode < 500, `a transfer into a full account is not a 5xx (got ${transfer.statusCode})`)
  const balances = await sql<{ user_id: string, balance: string }[]>`
    select user_id, balance::text from balances where user_id in (${user.id}, ${other.id}) and currency = ${TEST_CURRENCY}`
  t.same(Object.fromEntries(balances.map((r) => [r.user_id, r.balance])), { [user.id]: String(Number.MAX_SAFE_INTEGER), [other.id]: '10' }, 'nothing was half-written')
})

t.test('amounts with a fraction or an exponent are 400 at amount; the JSON parser keeps its protections on that path', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const who = await callers(app)
  const { user, client } = who
  const deposit = (amount: string, extra = '') =>
    `{"kind":"deposit","userId":"${user.id}","amount":${amount},"currency":"${TEST_CURRENCY}","reference":"sec-${randomBytes(8).toString('hex')}"${extra}}`
  const route = BODY_ROUTES(user)[5]!
  for (const literal of ['1.0000000000000001', '9007199254740990.7', '1e3', '5E-1', '-0.0', '100.00']) {
    const response = await sendRaw(app, who, route, deposit(literal))
    assertProblem(t, response, 400, `amount ${literal}`)
    t.same(response.json().errors?.map((e: { path: string }) => e.path), ['amount'], `amount ${literal} is refused at amount`)
  }
  // Each body below has a fraction, so it goes through the reviver: what Fastify's own parser refuses is still refused.
  const malformed: Record<string, string> = {
    '__proto__ beside a fraction': deposit('1.5', ',"__proto__":{"tier":"pro"}'),
    'escaped __proto__ beside an exponent': deposit('1e0', ',"\\u005f_proto__":{"tier":"pro"}'),
    'constructor.prototype beside a fraction': deposit('1.5', ',"constructor":{"prototype":{"tier":"pro"}}'),
    'truncated JSON with a fraction': deposit('1.5').slice(0, -10),
    'a bare fraction': '1.5',
    'a fraction nested 10,000 deep': `{"a":${'['.repeat(10_000)}1.5${']'.repeat(10_000)}}`
  }
  for (const bodyRoute of BODY_ROUTES(user)) {
    for (const [shape, payload] of Object.entries(malformed)) {
      const started = Date.now()
      const response = await sendRaw(app, who, bodyRoute, payload)
      // A bare number is valid JSON, refused by every route's object schema; a user's deposit is 403 before that.
      const expected = shape === 'a bare fraction' ? [400, 403] : 400
      assertProblem(t, response, expected, `${label(bodyRoute)}: ${shape}`)
      // (Nested that deep, the reviver's recursion gives up first: a 400 either way, malformed or invalid.)
      if (shape !== 'a bare fraction' && shape !== 'a fraction nested 10,000 deep') {
        // The token endpoint says it as RFC 6749 does.
        if (bodyRoute.url === '/auth/token') t.equal(response.json().error, 'invalid_request', `${label(bodyRoute)}: ${shape} is invalid_request`)
        else t.equal(response.json().type, 'https://ledger-api.dev/problems/malformed_body', `${label(bodyRoute)}: ${shape} is malformed_body`)
      }
      t.ok(Date.now() - started < 2000, `${shape} is refused quickly (${Date.now() - started} ms)`)
    }
  }
  t.notOk(({} as Record<string, unknown>).tier, 'Object.prototype is not polluted')
  const empty = await sendRaw(app, who, route, '')
  assertProblem(t, empty, 400, 'an empty body')
  t.equal(empty.json().detail, 'The JSON body is empty.')
  const text = await app.inject({
    method: 'POST', url: '/transactions', headers: { authorization: client.authorization, 'idempotency-key': 'fraction-text', 'content-type': 'text/plain' }, payload: deposit('1.5')
  })
  assertProblem(t, text, 415, 'a text/plain body is still 415')
  const over = deposit('1.5', `,"description":"${'x'.repeat(64 * 1024)}"`)
  assertProblem(t, await sendRaw(app, who, route, over), 413, 'a body over the limit is still 413')
  const [{ count } = { count: -1 }] = await sql<{ count: number }[]>`select count(*)::int as count from transactions where to_user_id = ${user.id} or client_id = ${client.id}`
  t.equal(count, 0, 'nothing was written')
  t.equal((await sendRaw(app, who, route, deposit('100'))).statusCode, 201, 'an integer amount is still a deposit')
  await stillHealthy(t, app, user)
})

t.test('a runaway query is cancelled by statement_timeout and answered 503', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const marker = `security_timeout_${Date.now()}`
  app.get('/test/runaway', { config: { public: true } }, async () => {
    // The marker is a column alias so pg_stat_activity can find this statement; it is a fixed identifier.
    const [row] = await app.db.unsafe(`select pg_sleep(10) as ${marker}`)
    return row
  })
  app.get('/test/quick', { config: { public: true } }, async () => (await app.db`select 1 as one`)[0])
  const [setting] = await sql<{ statement_timeout: string }[]>`show statement_timeout`
  t.equal(setting?.statement_timeout, '5s', 'the database default from sql/001_database_settings.sql is in force')

  const started = Date.now()
  const response = await app.inject({ method: 'GET', url: '/test/runaway' })
  const elapsed = Date.now() - started
  assertProblem(t, response, 503, 'the runaway query')
  t.equal(response.json().type, 'https://ledger-api.dev/problems/dependency_unavailable')
  t.equal(response.headers['retry-after'], '1', 'with Retry-After')
  t.notMatch(response.body, /pg_sleep|statement timeout|57014|canceling/i, 'without SQL or driver text')
  t.ok(elapsed >= 4000 && elapsed < 8000, `answered after the 5 s timeout, well under 10 s (${elapsed} ms)`)
  const [running] = await sql<{ count: number }[]>`
    select count(*)::int as count from pg_stat_activity where state = 'active' and query like ${`%${marker}%`} and pid <> pg_backend_pid()`
  t.equal(running?.count, 0, 'the statement is no longer running on the server')
  const quick = await app.inject({ method: 'GET', url: '/test/quick' })
  t.same([quick.statusCode, quick.json()], [200, { one: 1 }], 'the connection is usable afterwards')
})

t.test('slow clients are cut after REQUEST_TIMEOUT_MS', async (t) => {
  const timeoutMs = 1000
  const app = await buildTestApp(t, { REQUEST_TIMEOUT_MS: String(timeoutMs) })
  const sql = testSql(t)
  const user = await createUser(app)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo
  // Bounded: each slow client is abandoned after 6 s whatever the server does.
  const bound = timeoutMs + 3000
  const body = JSON.stringify({ body: 'slow' })
  const [stalledBody, stalledHeaders, control] = await Promise.all([
    rawExchange(port, [`POST /posts HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: ${user.authorization}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n${body.slice(0, 5)}`], { timeoutMs: 6000 }),
    rawExchange(port, ['GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: '], { timeoutMs: 6000 }),
    rawExchange(port, [`POST /posts HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: ${user.authorization}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`], { timeoutMs: 6000 })
  ])
  t.equal(control.status, 201, 'a client that sends its whole request is served meanwhile')
  for (const [label, exchange] of [['headers sent, body stalled', stalledBody], ['headers never finished', stalledHeaders]] as const) {
    t.comment(`${label}: ${exchange.closed ? 'closed' : 'still open'} after ${exchange.elapsedMs} ms, status ${exchange.status ?? 'none'}`)
    t.ok((exchange.closed || exchange.status === 408) && exchange.elapsedMs < bound, `${label}: cut within ${bound} ms`)
    if (exchange.status !== undefined) t.equal(exchange.status, 408, `${label}: answered 408 when answered at all`)
  }
  const after = await rawExchange(port, ['GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n'], { timeoutMs: 3000 })
  t.equal(after.status, 200, 'the server still answers afterwards')
  const [{ count } = { count: -1 }] = await sql<{ count: number }[]>`select count(*)::int as count from posts where author_id = ${user.id}`
  t.equal(count, 1, 'only the complete request wrote a post')
})

// Signups are the most expensive public request (a KDF); their bodies are capped before hashing.
t.test('an oversized password is refused before it is hashed', async (t) => {
  const app = await buildTestApp(t)
  const started = Date.now()
  const response = await app.inject({ method: 'POST', url: '/users', payload: { email: uniqueEmail('kdf'), name: 'KDF', password: 'p'.repeat(60_000) } })
  assertProblem(t, response, 400, 'a 60,000-character password')
  t.ok(Date.now() - started < 1000, `refused without hashing (${Date.now() - started} ms)`)
  const login = await app.inject({ method: 'POST', url: '/auth/token', payload: { email: uniqueEmail('kdf'), password: 'p'.repeat(60_000) } })
  assertProblem(t, login, 400, 'a 60,000-character login password')
})
