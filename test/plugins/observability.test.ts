import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { freePort } from '../free-port.ts'
import { buildTestApp, createUser, dbSpans, injectTraced, openSpans } from '../helper.ts'
import { SUITE_LIMITS } from '../suite-limits.ts'

/** Parses Prometheus text exposition into `name{labels}` -> value, failing on any malformed line. */
function parsePrometheus (text: string): Map<string, number> {
  const samples = new Map<string, number>()
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('# HELP ') || line.startsWith('# TYPE ')) continue
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (-?[0-9.e+-]+|NaN|Nan|\+Inf|-Inf)$/.exec(line)
    if (match === null) throw new Error(`not Prometheus text: ${line}`)
    samples.set(match[1]!, Number(match[2]))
  }
  return samples
}

t.test('a request is one server span with its SQL spans as children, and no values in them', async (t) => {
  const app = await buildTestApp(t)
  const user = await createUser(app)
  const { response, spans } = await injectTraced(app, { method: 'GET', url: '/transactions?limit=7', headers: { authorization: user.authorization } })
  t.equal(response.statusCode, 200)
  const server = spans.filter((span) => span.kind === 1)
  t.equal(server.length, 1, 'one server span')
  t.equal(server[0]?.name, 'GET /transactions', 'named by route template')
  t.equal(server[0]?.attributes['http.response.status_code'], 200)
  const queries = dbSpans(spans)
  t.ok(queries.length >= 1)
  for (const span of queries) {
    t.equal(span.parentSpanContext?.spanId, server[0]?.spanContext().spanId, 'child of the server span')
    const text = String(span.attributes['db.query.text'])
    t.match(text, /\$1/, 'placeholders')
    t.notOk(text.includes(user.id), 'not the user id sent as a value')
    t.notOk(JSON.stringify(span.attributes).includes(user.token), 'never the token')
  }
})

t.test('cache reads and writes get Redis spans, without keys or values', async (t) => {
  const app = await buildTestApp(t)
  const alice = await createUser(app)
  const bob = await createUser(app)
  const { spans } = await injectTraced(app, { method: 'GET', url: `/users/${alice.id}`, headers: { authorization: bob.authorization } })
  const redis = spans.filter((span) => span.attributes['db.system.name'] === 'redis').map((span) => span.name)
  t.ok(redis.includes('cache get user') && redis.includes('cache set user') && redis.includes('rate-limit token bucket'), redis.join(', '))
  const redisAttributes = spans.filter((span) => span.attributes['db.system.name'] === 'redis').map((span) => span.attributes)
  t.notOk(JSON.stringify(redisAttributes).includes(alice.id), 'no key in any Redis span')
})

t.test('log lines of a request carry its trace id and request id', async (t) => {
  const lines: Array<Record<string, unknown>> = []
  const app = await buildTestApp(t, {}, {
    logger: { level: 'info', stream: { write: (line: string) => { lines.push(JSON.parse(line)) } } }
  })
  const user = await createUser(app)
  lines.length = 0
  const { response, traceId } = await injectTraced(app, { method: 'GET', url: '/transactions', headers: { authorization: user.authorization, 'x-request-id': 'trace-me-1' } })
  t.equal(response.statusCode, 200)
  const ours = lines.filter((line) => line.reqId === 'trace-me-1')
  t.ok(ours.length >= 2, 'incoming and completed lines')
  t.ok(ours.every((line) => line.trace_id === traceId && typeof line.span_id === 'string'), 'each carries the trace id')
  t.notMatch(JSON.stringify(lines), new RegExp(user.token), 'the token is not logged')
})

t.test('a request its caller did not sample makes no spans at all, and its log lines still carry its trace id', async (t) => {
  const lines: Array<Record<string, unknown>> = []
  const app = await buildTestApp(t, {}, {
    logger: { level: 'info', stream: { write: (line: string) => { lines.push(JSON.parse(line)) } } }
  })
  const alice = await createUser(app)
  const bob = await createUser(app)
  lines.length = 0
  const before = openSpans().length
  // A cache miss and a fill: database and Redis work that would each have had a span.
  const { response, spans, traceId } = await injectTraced(app, { method: 'GET', url: `/users/${alice.id}`, headers: { authorization: bob.authorization, 'x-request-id': 'unsampled-1' } }, false)
  t.equal(response.statusCode, 200)
  t.same(spans.map((span) => span.name), [], 'nothing recorded: no server, SQL or Redis span')
  t.equal(openSpans().length, before, 'and none left open')
  const ours = lines.filter((line) => line.reqId === 'unsampled-1')
  t.ok(ours.length >= 2, 'incoming and completed lines')
  t.ok(ours.every((line) => line.trace_id === traceId && typeof line.span_id === 'string' && line.span_id !== ''), 'each carries the trace id')
  const sampled = await injectTraced(app, { method: 'GET', url: `/users/${bob.id}`, headers: { authorization: alice.authorization } })
  t.ok(dbSpans(sampled.spans).length >= 1 && sampled.spans.some((span) => span.attributes['db.system.name'] === 'redis'), 'a sampled request still gets its SQL and Redis spans')
})

t.test('/metrics is Prometheus text whose counters move by exactly what was done', async (t) => {
  const app = await buildTestApp(t)
  const alice = await createUser(app)
  const bob = await createUser(app)
  const carol = await createUser(app)
  const scrape = async () => {
    const response = await app.inject({ method: 'GET', url: '/metrics' })
    t.equal(response.statusCode, 200)
    t.match(response.headers['content-type'], /^text\/plain; version=0\.0\.4/)
    return parsePrometheus(response.body)
  }
  const before = await scrape()
  for (const id of [alice.id, bob.id, alice.id]) {
    await app.inject({ method: 'GET', url: `/users/${id}`, headers: { authorization: carol.authorization } })
  }
  const after = await scrape()
  const delta = (name: string) => (after.get(name) ?? 0) - (before.get(name) ?? 0)
  t.equal(delta('ledger_cache_requests_total{cache="user",result="miss"}'), 2, 'two misses')
  t.equal(delta('ledger_cache_requests_total{cache="user",result="hit"}'), 1, 'one hit')
  t.equal(delta('ledger_http_request_duration_seconds_count{method="GET",route="/users/:id",status_code="200"}'), 3, 'three requests by route template')
  t.equal(delta('ledger_rate_limit_decisions_total{tier="standard",decision="admitted"}'), 3)
  t.ok((after.get('ledger_db_query_duration_seconds_count{statement="SELECT users",outcome="ok"}') ?? 0) >= 2, 'query histogram by statement')
  t.ok(after.has('process_resident_memory_bytes') && after.has('nodejs_eventloop_lag_seconds'), 'process metrics')
  t.equal(after.get('ledger_db_pool_max_connections'), 10)
  t.equal(after.get('ledger_http_requests_in_flight'), 1, 'only the scrape itself is in flight')
})

t.test('/metrics can require a token', async (t) => {
  const token = 'metrics-token-0123456789abcdef'
  const app = await buildTestApp(t, { METRICS_TOKEN: token })
  t.equal((await app.inject({ method: 'GET', url: '/metrics' })).statusCode, 401)
  t.equal((await app.inject({ method: 'GET', url: '/metrics', headers: { authorization: 'Bearer wrong' } })).statusCode, 401)
  t.equal((await app.inject({ method: 'GET', url: '/metrics', headers: { authorization: `Bearer ${token}` } })).statusCode, 200)
})

t.test('an overloaded event loop sheds requests with 503 + Retry-After, but liveness still answers', async (t) => {
  const app = await buildTestApp(t, { PRESSURE_MAX_EVENT_LOOP_DELAY_MS: '20' })
  const user = await createUser(app)
  let shed
  // Block the loop in bounded bursts until the sampler notices (it samples about once a second).
  for (let attempt = 0; attempt < 20 && shed === undefined; attempt++) {
    const until = Date.now() + 400
    while (Date.now() < until) { /* busy on purpose */ }
    await new Promise((resolve) => setTimeout(resolve, 20))
    const response = await app.inject({ method: 'GET', url: '/balances', headers: { authorization: user.authorization } })
    if (response.statusCode === 503) shed = response
  }
  t.ok(shed, 'a request was shed')
  t.equal(shed?.headers['retry-after'], '5')
  t.equal(shed?.json().type, 'https://ledger-api.dev/problems/overloaded')
  t.equal((await app.inject({ method: 'GET', url: '/health/live' })).statusCode, 200, 'liveness is exempt')
})

t.test('invalid OTEL_* values do not stop the real server', { timeout: 30_000 }, async (t) => {
  const port = await freePort()
  const child = spawn(process.execPath, [fileURLToPath(new URL('../../server.ts', import.meta.url))], {
    env: {
      ...process.env,
      ...SUITE_LIMITS,
      PORT: String(port),
      LOG_LEVEL: 'warn',
      OTEL_TRACES_SAMPLER: 'no-such-sampler',
      OTEL_TRACES_SAMPLER_ARG: 'lots',
      OTEL_EXPORTER_OTLP_ENDPOINT: 'not a url',
      OTEL_RESOURCE_ATTRIBUTES: '===,broken'
    },
    stdio: ['ignore', 'ignore', 'pipe']
  })
  let stderr = ''
  child.stderr.on('data', (chunk) => { stderr += chunk })
  t.teardown(() => { child.kill('SIGKILL') })
  let status = 0
  for (let attempt = 0; attempt < 100 && status !== 200 && child.exitCode === null; attempt++) {
    await new Promise((resolve) => setTimeout(resolve, 100))
    status = await fetch(`http://127.0.0.1:${port}/health/live`).then((r) => r.status, () => 0)
  }
  t.equal(status, 200, `the server answers (stderr: ${stderr.slice(0, 500)})`)
  const exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)))
  child.kill('SIGTERM')
  t.equal(await exited, 0, 'SIGTERM closes it cleanly with exit 0')
})
