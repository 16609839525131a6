// A real Prometheus (Debian's 2.42, installed with apt-get when missing: scripts/prometheus-tools.ts) scrapes the
// real service (server.ts, its ops port with the metrics token, as deploy/observability/prometheus/scrape-config.yaml
// does) through a short load, and evaluates the rules of deploy/observability with every window and `for` divided by
// 100: the same expressions, windows sized for a one-minute test. Then every dashboard panel's query must return a
// series with a value, and stopping PgBouncer must fire the breaker and availability alerts within their `for`
// windows. Runs with the fault suite: it stops PgBouncer. Prometheus listens on loopback with its data in the
// stack folder, and is stopped (and its data removed) whatever happens.
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes, randomUUID } from 'node:crypto'
import { mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { parse, stringify } from 'yaml'
import { controlService, stackDir } from '../../scripts/local-stack.ts'
import { prometheusBinaries } from '../../scripts/prometheus-tools.ts'
import { dashboardPanels, durationMs, fromJobLanes, panelQuery, readText, ruleFiles, scaledRules, alertRules } from '../deploy/observability-files.ts'
import { buildTestApp, createClient, createUser, fund, hasLocalStack, makeFollowers, registerWebhookEndpoint, type TestUser } from '../helper.ts'
import { startReceiver } from '../webhook-receiver.ts'
import { freePort } from '../free-port.ts'
import { fetchSender, sleep, startServer, waitFor, type Send } from './support.ts'

const skip = hasLocalStack ? false : 'needs the local stack started by scripts/test.ts'

const FACTOR = 100
const SCRAPE_MS = 1000
const EVAL_MS = 1000
/** The rate window the panels are queried with, as Grafana's $__rate_interval would be over this test's minute. */
const RATE_INTERVAL = '1m'

interface Sample { metric: Record<string, string>, value: [number, string] }
interface AlertState { labels: Record<string, string>, state: 'pending' | 'firing', activeAt: string }

t.test('a real Prometheus: every dashboard panel has data, and stopping PgBouncer fires the breaker and availability alerts', { skip }, async (t) => {
  const { prometheus } = prometheusBinaries()
  const dir = join(stackDir(), `prometheus-test-${process.pid}`)
  rmSync(dir, { recursive: true, force: true })
  mkdirSync(join(dir, 'rules'), { recursive: true })
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))

  // --- The service: a real server.ts with its ops port, the worker and the ledger check on ---------------------
  const token = randomBytes(24).toString('hex')
  writeFileSync(join(dir, 'metrics-token'), token, { mode: 0o600 })
  // Every third delivery attempt is refused, so deliveries retry.
  const receiver = await startReceiver((n) => ({ status: n % 3 === 1 ? 503 : 200 }))
  t.teardown(() => receiver.close())
  const opsPort = await freePort()
  const server = await startServer({
    OPS_PORT: String(opsPort),
    METRICS_TOKEN: token,
    WORKER_ENABLED: 'true',
    WEBHOOK_ALLOW_PRIVATE_TARGETS: 'true',
    JOB_RETRY_BASE_MS: '200',
    JOB_RETRY_MAX_DELAY_S: '1',
    RECONCILE_INTERVAL_S: '2'
  })
  t.teardown(() => server.kill())

  // --- Prometheus: the deploy job against this server, the rules with test-sized windows -------------------------
  for (const file of ruleFiles) writeFileSync(join(dir, 'rules', file.split('/').pop() as string), scaledRules(file, FACTOR, 250))
  const deployed = (parse(readText('prometheus/scrape-config.yaml')) as { scrape_configs: Array<Record<string, any>> }).scrape_configs[0] as Record<string, any>
  const job = {
    job_name: deployed.job_name,
    metrics_path: deployed.metrics_path,
    scheme: deployed.scheme,
    authorization: { type: deployed.authorization.type, credentials_file: join(dir, 'metrics-token') },
    scrape_interval: `${SCRAPE_MS}ms`,
    scrape_timeout: `${SCRAPE_MS}ms`,
    // The pods the Kubernetes discovery would find: this server's ops port.
    static_configs: [{ targets: [`127.0.0.1:${opsPort}`] }]
  }
  writeFileSync(join(dir, 'prometheus.yml'), stringify({
    global: { scrape_interval: `${SCRAPE_MS}ms`, evaluation_interval: `${EVAL_MS}ms` },
    rule_files: [join(dir, 'rules', '*.yaml')],
    scrape_configs: [job]
  }))
  const promPort = await freePort()
  const promUrl = `http://127.0.0.1:${promPort}`
  const child: ChildProcess = spawn(prometheus, [
    `--config.file=${join(dir, 'prometheus.yml')}`,
    `--storage.tsdb.path=${join(dir, 'data')}`,
    '--storage.tsdb.retention.time=1h',
    `--web.listen-address=127.0.0.1:${promPort}`,
    '--log.level=warn'
  ], { stdio: ['ignore', 'pipe', 'pipe'] })
  let promOutput = ''
  child.stdout?.on('data', (chunk: Buffer) => { promOutput = (promOutput + chunk.toString()).slice(-20_000) })
  child.stderr?.on('data', (chunk: Buffer) => { promOutput = (promOutput + chunk.toString()).slice(-20_000) })
  const promExited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  t.teardown(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return
    child.kill('SIGTERM')
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000)
    await promExited
    clearTimeout(timer)
  })

  const api = async <T>(path: string): Promise<T> => {
    const response = await fetch(`${promUrl}${path}`, { signal: AbortSignal.timeout(5000) })
    const body = await response.json() as { status: string, data: T, error?: string }
    if (body.status !== 'success') throw new Error(`${path}: ${body.error ?? response.status}`)
    return body.data
  }
  const query = (expr: string) => api<{ result: Sample[] }>(`/api/v1/query?query=${encodeURIComponent(expr)}`).then((data) => data.result)
  const alerts = () => api<{ alerts: AlertState[] }>('/api/v1/alerts').then((data) => data.alerts)

  t.ok(await waitFor(async () => (await fetch(`${promUrl}/-/ready`, { signal: AbortSignal.timeout(1000) })).status === 200, 30_000, 200) >= 0, `Prometheus is ready\n${promOutput}`)
  const up = await waitFor(async () => (await query('up{job="ledger-api"} == 1')).length === 1, 20_000, 250)
  t.ok(up >= 0, 'the target is up: the ops port answers the scrape with the token')
  const rules = await api<{ groups: Array<{ name: string, rules: Array<{ name: string, health: string }> }> }>('/api/v1/rules')
  t.equal(rules.groups.flatMap((group) => group.rules).filter((rule) => rule.health === 'err').length, 0, 'every rule evaluates without an error')
  t.equal(rules.groups.flatMap((group) => group.rules).length, ruleFiles.flatMap((file) => (parse(readText(file)) as { groups: Array<{ rules: unknown[] }> }).groups.flatMap((group) => group.rules)).length, 'every rule of the files is loaded')

  // --- A short load through the real server --------------------------------------------------------------------
  const app = await buildTestApp(t)
  const send: Send = fetchSender(server.baseUrl, 10_000)
  const funder = await createClient(app, ['funds:write', 'events:read'])
  await registerWebhookEndpoint(t, app, funder, receiver.url)
  const users: TestUser[] = []
  for (let i = 0; i < 4; i++) users.push(await createUser(app))
  for (const user of users) await fund(app, user, 1_000_000, 'USD', { client: funder })
  // Followers, so a post fans out (the feed lane's jobs).
  await makeFollowers((users[0] as TestUser).id, 20)

  const load = { stop: false, outage: false }
  const statuses = new Map<number, number>()
  const step = async (i: number) => {
    const user = users[i % users.length] as TestUser
    const other = users[(i + 1) % users.length] as TestUser
    const key = randomUUID()
    const transfer = { kind: 'transfer', amount: 1 + (i % 50), currency: 'USD', toUserId: other.id }
    const requests: Array<Parameters<Send>[0]> = [
      { method: 'POST', url: '/transactions', authorization: user.authorization, idempotencyKey: key, body: transfer },
      // The same key and body: replayed.
      { method: 'POST', url: '/transactions', authorization: user.authorization, idempotencyKey: key, body: transfer },
      { method: 'GET', url: `/users/${other.id}`, authorization: user.authorization },
      { method: 'GET', url: `/users/${other.id}`, authorization: user.authorization },
      { method: 'GET', url: '/balances', authorization: user.authorization }
    ]
    if (i % 4 === 0) {
      // A deposit with the funder's reference (a webhook delivery) and a refusal for want of funds.
      requests.push({ method: 'POST', url: '/transactions', authorization: funder.authorization, idempotencyKey: randomUUID(), body: { kind: 'deposit', userId: user.id, amount: 100, currency: 'USD', reference: `prom-${randomUUID()}` } })
      requests.push({ method: 'POST', url: '/transactions', authorization: user.authorization, idempotencyKey: randomUUID(), body: { ...transfer, amount: 1_000_000_000 } })
    }
    // Not while PgBouncer is stopped: POST /posts is a transaction, and postgres.js 3.4.9 crashes the process when a
    // reserved connection closes with a write scheduled (porsager/postgres#1154, #1208; unfixed upstream). This
    // test is about the alerts; that crash needs a fix of its own.
    if (i % 8 === 0 && !load.outage) {
      requests.push({ method: 'POST', url: '/posts', authorization: (users[0] as TestUser).authorization, body: { body: `post ${i}` } })
      requests.push({ method: 'GET', url: '/feed', authorization: other.authorization })
      requests.push({ method: 'GET', url: '/transactions', authorization: user.authorization })
    }
    for (const request of requests) {
      const response = await send(request)
      statuses.set(response.status, (statuses.get(response.status) ?? 0) + 1)
    }
  }
  const loadLoop = async (worker: number, maxMs: number) => {
    const started = performance.now()
    for (let i = worker; !load.stop && performance.now() - started < maxMs; i += 4) {
      await step(i)
      await sleep(20)
    }
  }
  // The panels are read while the load runs, as on a live dashboard: the test-sized 5-minute window is 3 s.
  const healthyLoad = Promise.all([0, 1, 2, 3].map((worker) => loadLoop(worker, 40_000)))
  await sleep(15_000)

  // --- Every panel's query returns a series with a value ----------------------------------------------------------
  const exported = await (await fetch(`http://127.0.0.1:${opsPort}/metrics`, { headers: { authorization: `Bearer ${token}` } })).text()
  /** Series whose value is a number (NaN, from a histogram without observations or 0/0, is no data). */
  const withData = async (expr: string) => (await query(panelQuery(expr, RATE_INTERVAL))).filter((sample) => Number.isFinite(Number(sample.value[1])))
  for (const panel of dashboardPanels()) {
    for (const target of panel.targets ?? []) {
      const series = await withData(target.expr)
      const pendingMetrics = [...fromJobLanes].filter((name) => target.expr.includes(name.replace(/_bucket$/, '')) && !exported.includes(`\n${name}`))
      if (pendingMetrics.length > 0 && series.length === 0) {
        t.ok(false, `panel "${panel.title}" ${target.refId}: waits for ${pendingMetrics.join(', ')} (the worker's job lanes)`, { todo: 'exported once the job lanes are merged' })
        continue
      }
      t.ok(series.length > 0, `panel "${panel.title}" ${target.refId}: ${series.length} series (${series.slice(0, 3).map((sample) => `${JSON.stringify(sample.metric)}=${sample.value[1]}`).join(' ')})`)
    }
  }
  // The check itself can fail: a query that names no exported series returns nothing.
  t.equal((await withData('sum by (kind, outcome) (rate(ledger_money_writes_totl[$__rate_interval]))')).length, 0, 'a misspelt metric returns no series (such a panel fails above)')
  const replays = await withData('sum(increase(ledger_money_writes_total{outcome="replayed"}[$__rate_interval]))')
  t.ok(Number(replays[0]?.value[1]) > 10, `idempotent replays were counted (${replays[0]?.value[1]})`)
  load.stop = true
  await healthyLoad
  load.stop = false
  t.comment(`load statuses: ${JSON.stringify(Object.fromEntries(statuses))}`)
  t.ok((statuses.get(201) ?? 0) > 50 && (statuses.get(200) ?? 0) > 100, 'the load wrote and read')
  t.equal(statuses.get(0) ?? 0, 0, 'no connection error')

  // --- PgBouncer stops: the breaker and availability alerts fire within their `for` windows ----------------------
  const watched = ['LedgerDatabaseCircuitOpen', 'LedgerAvailabilityBurnRateFast']
  // The availability alert of the money routes (other groups with traffic may page too).
  const wanted: Record<string, Record<string, string>> = { LedgerDatabaseCircuitOpen: { pool: 'primary' }, LedgerAvailabilityBurnRateFast: { route_group: 'money' } }
  const firing = async (name: string) => (await alerts()).find((alert) => alert.labels.alertname === name && alert.state === 'firing' &&
    Object.entries(wanted[name] ?? {}).every(([label, value]) => alert.labels[label] === value))
  for (const name of watched) t.notOk((await alerts()).some((alert) => alert.labels.alertname === name), `${name} is not even pending on the healthy service`)
  const rule = (name: string) => alertRules().find((alert) => alert.alert === name)
  // Each alert's bound: its `for`, its shortest window (the errors must fill it), and a scrape plus an evaluation
  // at each step (the breaker opening, the first 503 counted, the recorded ratio, the alert) plus a second of slack.
  const boundMs = (name: string) => {
    const windows = [...(rule(name)?.expr ?? '').matchAll(/\[([0-9a-z]+)\]/g)].map((match) => durationMs(match[1] as string) / FACTOR)
    const forMs = durationMs(rule(name)?.for ?? '0s') / FACTOR
    return Math.round(forMs + Math.min(...windows, 5 * 60_000 / FACTOR) + 4 * (SCRAPE_MS + EVAL_MS) + 1000)
  }
  statuses.clear()
  load.outage = true
  const outageLoad = Promise.all([0, 1, 2, 3].map((worker) => loadLoop(worker, 60_000)))
  await sleep(1000)
  const firedAfter: Record<string, number> = {}
  const firedAlerts: Record<string, AlertState> = {}
  try {
    await controlService('stop', 'pgbouncer')
    const stoppedAt = performance.now()
    const deadline = Math.max(...watched.map(boundMs))
    await waitFor(async () => {
      for (const name of watched) {
        const alert = firedAfter[name] === undefined ? await firing(name) : undefined
        if (alert !== undefined) {
          firedAfter[name] = Math.round(performance.now() - stoppedAt)
          firedAlerts[name] = alert
        }
      }
      return watched.every((name) => firedAfter[name] !== undefined)
    }, deadline + 5000, 200)
  } finally {
    await controlService('start', 'pgbouncer')
    load.stop = true
    await outageLoad
  }
  t.comment(`outage statuses: ${JSON.stringify(Object.fromEntries(statuses))}; fired after ${JSON.stringify(firedAfter)} ms; bounds ${JSON.stringify(Object.fromEntries(watched.map((name) => [name, boundMs(name)])))} ms`)
  for (const name of watched) {
    t.ok(firedAfter[name] !== undefined && (firedAfter[name] as number) <= boundMs(name), `${name} fired ${firedAfter[name]} ms after PgBouncer stopped (bound ${boundMs(name)} ms: for ${rule(name)?.for} / ${FACTOR})`)
  }
  const availability = firedAlerts.LedgerAvailabilityBurnRateFast
  t.equal(availability?.labels.route_group, 'money', 'the availability alert names the money routes')
  t.equal(availability?.labels.severity, 'critical')
  t.equal(firedAlerts.LedgerDatabaseCircuitOpen?.labels.pool, 'primary', 'the breaker alert names the pool')
  t.ok(server.running(), 'the service kept running through the outage')
  if (!server.running()) t.comment(server.output())
})
