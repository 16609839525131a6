// The warm-up a process runs before its public port listens (plugins/http/warm-up.ts): what it sends, what it
// leaves behind (no log line per request, no recorded span), the readiness it holds, and the settings that drive it.
// That it writes nothing and keeps no listener: test/security/warm-up.test.ts.
import t from 'tap'
import { loadConfig } from '../../settings.ts'
import { DEFAULT_WARM_UP_S } from '../../plugins/http/config.ts'
import { buildTestApp, spanExporter, testConfig } from '../helper.ts'

t.test('the warm-up sends every domain\'s requests through the HTTP server for the time asked, then stops', async (t) => {
  const lines: Array<Record<string, unknown>> = []
  const app = await buildTestApp(t, { LOG_LEVEL: 'info' }, { logger: { level: 'info', stream: { write: (line: string) => { lines.push(JSON.parse(line) as Record<string, unknown>) } } } })
  const spansBefore = spanExporter.getFinishedSpans().filter((span) => span.name.startsWith('GET ') || span.name.startsWith('POST ')).length
  const result = await app.warmUp.run({ seconds: 1, connections: 3 })

  t.ok(result.requests >= 25, `${result.requests} requests in about a second`)
  t.ok(result.seconds >= 1 && result.seconds < 10, `stopped after ${result.seconds.toFixed(2)} s`)
  // Reads of made-up principals: 200 (an empty page), 404 (no such user); writes stop at the session and client
  // checks (401), since neither exists. Nothing else: no 429 (a new principal every few hundred requests), no 5xx.
  t.same(Object.keys(result.statuses).sort(), ['200', '401', '404'], `statuses ${JSON.stringify(result.statuses)}`)
  t.equal(Object.values(result.statuses).reduce((a, b) => a + b, 0), result.requests, 'every response counted')

  t.equal(lines.filter((line) => line.msg === 'incoming request' || line.msg === 'request completed').length, 0, 'no request log line while warming up')
  t.match(lines.find((line) => line.msg === 'warmed up'), { requests: result.requests }, 'one line says what the warm-up did')
  t.equal(app.log.level, 'info', 'the log level is back afterwards')
  const spansAfter = spanExporter.getFinishedSpans().filter((span) => span.name.startsWith('GET ') || span.name.startsWith('POST ')).length
  t.equal(spansAfter, spansBefore, 'no server span recorded: the warm-up\'s traceparent is not sampled')
  t.equal(app.server.listening, false, 'the app\'s own server never listened: the warm-up had a loopback port of its own')

  const response = await app.inject({ method: 'GET', url: '/health/ready' })
  t.equal(response.statusCode, 200, 'the app serves normally afterwards')
})

t.test('0 seconds sends nothing', async (t) => {
  const app = await buildTestApp(t)
  t.same(await app.warmUp.run({ seconds: 0 }), { requests: 0, statuses: {}, seconds: 0 })
})

t.test('WARM_UP_S: unset is on in production and off in development and test; a value wins', async (t) => {
  const base = { ...process.env, JWT_SECRET: 'x'.repeat(40) }
  t.equal(loadConfig({ ...base, NODE_ENV: 'production' }).WARM_UP_S, DEFAULT_WARM_UP_S)
  t.equal(loadConfig({ ...base, NODE_ENV: undefined }).WARM_UP_S, DEFAULT_WARM_UP_S, 'unset NODE_ENV counts as production')
  t.equal(loadConfig({ ...base, NODE_ENV: 'development' }).WARM_UP_S, 0)
  t.equal(loadConfig({ ...base, NODE_ENV: 'test' }).WARM_UP_S, 0)
  t.equal(loadConfig({ ...base, NODE_ENV: 'production', WARM_UP_S: '0' }).WARM_UP_S, 0)
  t.equal(loadConfig({ ...base, NODE_ENV: 'test', WARM_UP_S: '2.5' }).WARM_UP_S, 2.5)
  t.throws(() => loadConfig({ ...base, WARM_UP_S: '-1' }), /WARM_UP_S/)
  t.throws(() => loadConfig({ ...base, WARM_UP_S: 'soon' }), /WARM_UP_S/)
  t.equal(testConfig().WARM_UP_S, 0, 'the tests\' apps start at once')
})

t.test('readiness held for the warm-up: /health/ready answers 503 until released, and listeners hear both changes', async (t) => {
  const app = await buildTestApp(t)
  await app.ready()
  t.equal(app.readiness.current().ok, true, 'ready to begin with')
  const heard: boolean[] = []
  app.readiness.onChange((result) => { heard.push(result.ok) })
  const release = app.readiness.hold()
  t.equal(app.readiness.current().ok, false, 'held: not ready')
  t.equal((await app.inject({ method: 'GET', url: '/health/ready' })).statusCode, 503)
  t.equal((await app.inject({ method: 'GET', url: '/health/live' })).statusCode, 200, 'alive all the same')
  release()
  release()
  t.equal(app.readiness.current().ok, true, 'released: ready again')
  t.equal((await app.inject({ method: 'GET', url: '/health/ready' })).statusCode, 200)
  t.same(heard, [false, true], 'a second release changes nothing')
})

t.test('a warm-up request that never answers does not hold the boot: the client is stopped after the grace, and the app starts', async (t) => {
  const lines: Array<Record<string, unknown>> = []
  const app = await buildTestApp(t, {}, {
    logger: { level: 'info', stream: { write: (line: string) => { lines.push(JSON.parse(line) as Record<string, unknown>) } } },
    beforeRoutes: (instance) => {
      instance.get('/never-answers', { config: { rateLimit: false } }, () => new Promise(() => {}))
    }
  })
  app.warmUp.add((who) => ({ method: 'GET', url: '/never-answers', authorization: who.user.authorization }))
  const started = performance.now()
  const result = await app.warmUp.run({ seconds: 0.2, connections: 2, graceS: 1 })
  const took = (performance.now() - started) / 1000
  t.ok(took >= 1 && took < 5, `returned after ${took.toFixed(1)} s`)
  t.match(lines.find((line) => line.msg === 'warm-up failed; serving without it'), { level: 40 }, 'logged as a warning')
  t.equal(result.requests, 0, 'and counted as no requests')
  t.equal((await app.inject({ method: 'GET', url: '/health/live' })).statusCode, 200, 'the app serves')
})
