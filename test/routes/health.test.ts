import { get } from 'node:http'
import t from 'tap'
import { buildTestApp } from '../helper.ts'
import { spawnApiServer, pickFreePort } from '../scale/support.ts'

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

/**
 * Probe statements (`select 1`) this app sent so far: every statement is observed in this histogram, labelled
 * by operation and table, and the probe is the only one without a table (the pollers for revocations and
 * currencies, which also run in the background, read theirs).
 */
async function statementsSent (app: Awaited<ReturnType<typeof buildTestApp>>): Promise<number> {
  const { values } = await app.metrics.dbQueryDuration.get()
  return values.filter((v) => v.metricName === 'ledger_db_query_duration_seconds_count' && v.labels.statement === 'SELECT').reduce((sum, v) => sum + v.value, 0)
}

t.test('1,000 concurrent readiness calls over real sockets send no statement: only the background round does', async (t) => {
  const app = await buildTestApp(t)
  await app.listen({ host: '127.0.0.1', port: 0 })
  const address = app.server.address()
  const url = `http://127.0.0.1:${typeof address === 'object' && address !== null ? address.port : 0}/health/ready`

  // The measure sees probes: a background round is one statement.
  const beforeRound = await statementsSent(app)
  const roundsBefore = app.readiness.rounds()
  await new Promise((resolve) => setTimeout(resolve, 1300))
  t.ok(app.readiness.rounds() > roundsBefore, 'a round ran within a second or so')
  t.equal(await statementsSent(app) - beforeRound, app.readiness.rounds() - roundsBefore, 'one probe statement per round: the measure sees probes')

  // One socket per call (Node's global agent has no socket limit), all sent at once.
  const call = () => new Promise<number>((resolve, reject) => {
    get(url, (response) => {
      response.resume()
      response.on('end', () => resolve(response.statusCode ?? 0))
    }).on('error', reject)
  })
  const statementsBefore = await statementsSent(app)
  const rounds = app.readiness.rounds()
  const statuses = await Promise.all(Array.from({ length: 1000 }, call))
  const roundsDuring = app.readiness.rounds() - rounds
  const statements = await statementsSent(app) - statementsBefore
  t.equal(statuses.filter((s) => s === 200).length, 1000, 'every call answered 200')
  t.equal(statements, roundsDuring, `only the background rounds sent probes (${statements} during the flood, not 1000)`)
  t.ok(statements < 20, 'far from one per call')
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
  const opsPort = await pickFreePort()
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

  t.equal((await fetch(`${server.url}/metrics`)).status, 404, 'no /metrics on the public port')
  t.equal((await fetch(`${server.url}/health/ready`)).status, 200, 'health stays on the public port (no database call per request)')

  server.child.kill('SIGTERM')
  t.equal(await server.exited, 0, 'a clean drain')
  const refused = async (url: string) => fetch(url, { signal: AbortSignal.timeout(2000) }).then(() => false, () => true)
  t.ok(await refused(`${ops}/health/live`), 'the ops listener is closed')
  t.ok(await refused(`${server.url}/health/live`), 'the public listener is closed')
})
