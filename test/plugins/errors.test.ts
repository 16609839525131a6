import t from 'tap'
import { z } from 'zod'
import { buildTestApp, ownerSql } from '../helper.ts'

async function appWithEchoRoute (t: Parameters<typeof buildTestApp>[0]) {
  const app = await buildTestApp(t, { BODY_LIMIT_BYTES: '2048' })
  app.post('/test/echo', {
    schema: {
      body: z.object({ amount: z.number().int().positive(), currency: z.string().length(3) }).strict(),
      querystring: z.object({ limit: z.coerce.number().int().max(10).optional() })
    }
  }, async (request) => request.body)
  return app
}

const token = async (app: Awaited<ReturnType<typeof buildTestApp>>) =>
  `Bearer ${(await app.issueToken({ id: '00000000-0000-4000-8000-000000000001', tier: 'standard', sessionId: '00000000-0000-4000-8000-000000000002' })).accessToken}`

t.test('schema failures are 400 problem+json with one entry per bad field', async (t) => {
  const app = await appWithEchoRoute(t)
  const response = await app.inject({
    method: 'POST',
    url: '/test/echo',
    headers: { authorization: await token(app) },
    payload: { amount: 1.5, currency: 'EURO' }
  })
  t.equal(response.statusCode, 400)
  t.match(response.headers['content-type'], /^application\/problem\+json/)
  const body = response.json()
  t.equal(body.status, 400)
  t.equal(body.title, 'Bad Request')
  t.same(body.errors.map((e: { path: string }) => e.path).sort(), ['amount', 'currency'])
  t.notOk(JSON.stringify(body).includes('stack'))
})

t.test('an unknown field is refused by strict schemas', async (t) => {
  const app = await appWithEchoRoute(t)
  const response = await app.inject({
    method: 'POST', url: '/test/echo', headers: { authorization: await token(app) }, payload: { amount: 1, currency: 'EUR', admin: true }
  })
  t.equal(response.statusCode, 400)
})

t.test('malformed JSON is 400, not 500', async (t) => {
  const app = await appWithEchoRoute(t)
  const response = await app.inject({
    method: 'POST', url: '/test/echo', headers: { authorization: await token(app), 'content-type': 'application/json' }, payload: '{"amount": 1,'
  })
  t.equal(response.statusCode, 400)
  t.equal(response.json().type, 'https://ledger-api.dev/problems/malformed_body')
})

t.test('a body over the limit is 413', async (t) => {
  const app = await appWithEchoRoute(t)
  const response = await app.inject({
    method: 'POST', url: '/test/echo', headers: { authorization: await token(app), 'content-type': 'application/json' }, payload: JSON.stringify({ amount: 1, currency: 'x'.repeat(4096) })
  })
  t.equal(response.statusCode, 413)
  t.match(response.headers['content-type'], /problem\+json/)
})

t.test('a non-JSON content type is 415', async (t) => {
  const app = await appWithEchoRoute(t)
  const response = await app.inject({
    method: 'POST', url: '/test/echo', headers: { authorization: await token(app), 'content-type': 'text/plain' }, payload: 'amount=1'
  })
  t.equal(response.statusCode, 415)
})

t.test('query string failures name the parameter', async (t) => {
  const app = await appWithEchoRoute(t)
  const response = await app.inject({
    method: 'POST', url: '/test/echo?limit=1000', headers: { authorization: await token(app) }, payload: { amount: 1, currency: 'EUR' }
  })
  t.equal(response.statusCode, 400)
  t.same(response.json().errors.map((e: { path: string }) => e.path), ['limit'])
})

t.test('an unexpected error is a 500 without internals, and is logged', async (t) => {
  const lines: string[] = []
  const app = await buildTestApp(t, {}, { logger: { level: 'error', stream: { write: (line: string) => { lines.push(line) } } } })
  app.get('/test/boom', { config: { public: true } }, async () => { throw new Error('secret internal detail: relation "users"') })
  const response = await app.inject({ method: 'GET', url: '/test/boom' })
  t.equal(response.statusCode, 500)
  t.notMatch(response.body, /secret internal detail|users/)
  t.ok(lines.some((line) => line.includes('secret internal detail')), 'the cause is in the log, not the body')
})

t.test('a database error is logged with its code and message, never its row data, context or parameters', async (t) => {
  const lines: string[] = []
  const app = await buildTestApp(t, {}, { logger: { level: 'info', stream: { write: (line: string) => { lines.push(line) } } } })
  const secret = `whsec_${'S3cr3tRowData'.repeat(4)}`
  // A CHECK violation: PostgreSQL's `detail` is the whole failing row, secret included.
  app.get('/test/db-row', { config: { public: true } }, async () => {
    await app.db`insert into webhook_endpoints (principal_kind, principal_id, url, events, secret)
      values ('user', gen_random_uuid(), ${'x'.repeat(3000)}, array['transaction.created'], ${secret})`
  })
  // A PL/pgSQL error: `detail` and `hint` as the code raised them, `where` its context.
  app.get('/test/db-context', { config: { public: true } }, async () => {
    await app.db.unsafe(`do $$ begin raise exception 'refused by the function' using detail = 'row: ${secret}', hint = 'hint: ${secret}'; end $$`)
  })
  // What postgres.js attaches to an error when its `debug` option is on: the statement and its parameters.
  app.get('/test/db-parameters', { config: { public: true } }, async () => {
    const error = Object.assign(new Error('relation "ledger" does not exist'), {
      code: '42P01', query: `select ${secret}`, parameters: [secret], args: [secret], types: [25]
    })
    throw error
  })
  for (const [url, code, message] of [
    ['/test/db-row', '23514', 'new row for relation "webhook_endpoints" violates check constraint "webhook_endpoints_url_check"'],
    ['/test/db-context', 'P0001', 'refused by the function'],
    ['/test/db-parameters', '42P01', 'relation "ledger" does not exist']
  ] as const) {
    lines.length = 0
    const response = await app.inject({ method: 'GET', url })
    t.equal(response.statusCode, 500, url)
    t.notMatch(response.body, secret, `${url}: nothing of it in the body`)
    const logged = lines.map((line) => JSON.parse(line) as { msg: string, err?: Record<string, unknown> }).filter((line) => line.err !== undefined)
    t.equal(logged.length, 1, `${url}: one error line`)
    const err = logged[0]?.err ?? {}
    t.equal(err.code, code, `${url}: the code is logged`)
    t.match(err.message, message, `${url}: the message is logged`)
    for (const line of lines) t.notMatch(line, secret, `${url}: the secret is in no log line`)
    for (const field of ['detail', 'hint', 'where', 'internal_query', 'query', 'parameters', 'args', 'types']) {
      t.notOk(field in err, `${url}: no ${field}`)
    }
  }
  const [written] = await ownerSql()`select count(*)::int as n from webhook_endpoints where secret = ${secret}`
  t.equal(written?.n, 0, 'and nothing was written')
})

t.test('unknown routes are a 404 problem', async (t) => {
  const app = await buildTestApp(t)
  const response = await app.inject({ method: 'GET', url: '/no/such/route' })
  t.equal(response.statusCode, 404)
  t.equal(response.json().status, 404)
})

t.test('x-request-id is echoed when safe and generated otherwise', async (t) => {
  const app = await buildTestApp(t)
  const kept = await app.inject({ method: 'GET', url: '/health/live', headers: { 'x-request-id': 'abc-123' } })
  t.equal(kept.headers['x-request-id'], 'abc-123')
  const replaced = await app.inject({ method: 'GET', url: '/health/live', headers: { 'x-request-id': 'bad id\nwith newline'.replace('\n', ' ') } })
  t.not(replaced.headers['x-request-id'], 'bad id with newline')
  t.match(String(replaced.headers['x-request-id']), /^[0-9a-f-]{36}$/)
})
