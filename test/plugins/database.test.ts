import t from 'tap'
import { buildTestApp, dbSpans, injectTraced } from '../helper.ts'
import { summarizeStatement } from '../../plugins/database/index.ts'

t.test('one query makes exactly one span, with placeholders and never the values', async (t) => {
  const app = await buildTestApp(t)
  const secretValue = 'value-that-must-not-leak-' + Date.now()
  app.get('/test/query', { config: { public: true } }, async () => {
    const [row] = await app.db`select ${secretValue}::text as echoed, 42 as answer`
    return row
  })
  const { response, spans } = await injectTraced(app, { method: 'GET', url: '/test/query' })
  t.equal(response.statusCode, 200)
  t.equal(response.json().echoed, secretValue, 'the query really ran with the value')
  const queries = dbSpans(spans)
  t.equal(queries.length, 1)
  const span = queries[0]!
  t.equal(span.attributes['db.system'], 'postgresql')
  t.match(String(span.attributes['db.query.text']), /select \$1::text as echoed, 42 as answer/)
  t.notOk(JSON.stringify(span.attributes).includes(secretValue), 'the value is not in the span')
  const server = spans.find((s) => s.attributes['http.route'] === '/test/query')
  t.ok(server, 'a server span exists')
  t.equal(span.parentSpanContext?.spanId, server?.spanContext().spanId, 'the query span is a child of the request span')
})

t.test('a failing query marks its span as an error', async (t) => {
  const app = await buildTestApp(t)
  app.get('/test/fail', { config: { public: true } }, async () => app.db`select * from table_that_does_not_exist`)
  const { response, spans } = await injectTraced(app, { method: 'GET', url: '/test/fail' })
  t.equal(response.statusCode, 500)
  const [span] = dbSpans(spans)
  t.equal(span?.status.code, 2)
  t.equal(span?.attributes['db.response.status_code'], '42P01')
})

t.test('statements inside a transaction are traced too', async (t) => {
  const app = await buildTestApp(t)
  app.get('/test/tx', { config: { public: true } }, async () => app.db.begin(async (tx) => {
    await tx`select 1`
    return (await tx`select 2 as two`)[0]
  }))
  const { response, spans } = await injectTraced(app, { method: 'GET', url: '/test/tx' })
  t.equal(response.statusCode, 200)
  t.equal(dbSpans(spans).length, 2)
})

t.test('statement summaries give low-cardinality names', async (t) => {
  t.same(summarizeStatement('select id from users where id = $1'), { operation: 'SELECT', table: 'users' })
  t.same(summarizeStatement('insert into posts (a) values ($1)'), { operation: 'INSERT', table: 'posts' })
  t.same(summarizeStatement('select * from post_transaction($1)'), { operation: 'SELECT', table: 'post_transaction' })
  t.same(summarizeStatement('select purge_idempotency_keys($1, $2) as purged'), { operation: 'SELECT', table: 'purge_idempotency_keys' }, 'a function call is named by its function')
  t.same(summarizeStatement('select 1'), { operation: 'SELECT', table: '' }, 'the readiness probe stays bare')
})
