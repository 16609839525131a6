import t from 'tap'
import { buildTestApp } from '../../helper.ts'
import { freePort } from '../../free-port.ts'
import { spawnApiServer } from '../../scale/support.ts'
import { SUITE_LIMITS } from '../../suite-limits.ts'

t.test('live is always 200 and public', async (t) => {
  const app = await buildTestApp(t)
  const response = await app.inject({ method: 'GET', url: '/health/live' })
  t.equal(response.statusCode, 200)
  t.same(response.json(), { status: 'ok' })
})

t.test('ready is 200 with the stack up, from a result probed before the app was ready', async (t) => {
  const app = await buildTestApp(t)
  await app.ready()
  t.equal(app.readiness.rounds(), 1, 'the first round ran in ready(), before any listener')
  const response = await app.inject({ method: 'GET', url: '/health/ready' })
  t.equal(response.statusCode, 200)
  t.same(response.json(), { status: 'ok', checks: { postgres: 'ok', redis: 'ok' } })
})

t.test('a busy pool does not make the database look down: the probe has a connection of its own', async (t) => {
  const app = await buildTestApp(t, { DATABASE_POOL_MAX: '1' })
  await app.ready()
  // The pool's one connection is busy for 2.5 s, longer than a probe may wait (900 ms).
  const busy = app.db`select pg_sleep(2.5)`.then(() => 'done')
  const rounds = app.readiness.rounds()
  const changes: string[] = []
  app.readiness.onChange((result) => { changes.push(result.checks.postgres) })
  while (app.readiness.rounds() < rounds + 2) await new Promise((resolve) => setTimeout(resolve, 50))
  t.equal(app.readiness.current().checks.postgres, 'ok', 'postgres answers while the pool is busy')
  const response = await app.inject({ method: 'GET', url: '/health/ready' })
  t.equal(response.statusCode, 200)
  t.same(changes, [], 'readiness never changed')
  t.equal(await busy, 'done')
})

t.test('the OpenAPI document is generated and public', async (t) => {
  const app = await buildTestApp(t)
  const response = await app.inject({ method: 'GET', url: '/openapi.json' })
  t.equal(response.statusCode, 200)
  const document = response.json()
  t.equal(document.openapi, '3.1.0')
  t.ok(document.paths['/health/ready'], 'routes are documented')
  const docs = await app.inject({ method: 'GET', url: '/docs/' })
  t.equal(docs.statusCode, 200)
})

t.test('OPS_PORT: a second listener with health and metrics; /metrics leaves the public port; SIGTERM closes both', async (t) => {
  const opsPort = await freePort()
  const server = await spawnApiServer(t, { NODE_ENV: 'production', OPS_PORT: String(opsPort) })
  const ops = `http://127.0.0.1:${opsPort}`
  const live = await fetch(`${ops}/health/live`)
  t.equal(live.status, 200)
  t.same(await live.json(), { status: 'ok' })
  const ready = await fetch(`${ops}/health/ready`)
  t.equal(ready.status, 200)
  t.same(await ready.json(), { status: 'ok', checks: { postgres: 'ok', redis: 'ok' } })
  const metrics = await fetch(`${ops}/metrics`)
  t.equal(metrics.status, 200)
  t.match(await metrics.text(), /^ledger_http_requests_in_flight /m, 'this process\'s metrics')
  t.equal((await fetch(`${ops}/transactions`)).status, 404, 'nothing else on the ops port')
  t.equal((await fetch(`${ops}/health/ready`, { method: 'POST' })).status, 405)

  const unknown = await fetch(`${server.url}/metrics`)
  t.equal(unknown.status, 404, 'no /metrics on the public port')
  // A process the suite starts answers 127.0.0.1 from the suite's one Redis: on the production limits (20) that one
  // request would clamp 127.0.0.1's bucket for every other test (test/suite-limits.ts).
  t.equal(unknown.headers.get('ratelimit-limit'), SUITE_LIMITS.RATE_LIMIT_PUBLIC_CAPACITY, 'a spawned server has the suite\'s limits')
  t.equal((await fetch(`${server.url}/health/ready`)).status, 200, 'health stays on the public port (no database call per request)')

  server.child.kill('SIGTERM')
  t.equal(await server.exited, 0, 'a clean drain')
  const refused = async (url: string) => fetch(url, { signal: AbortSignal.timeout(2000) }).then(() => false, () => true)
  t.ok(await refused(`${ops}/health/live`), 'the ops listener is closed')
  t.ok(await refused(`${server.url}/health/live`), 'the public listener is closed')
})
