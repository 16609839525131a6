// WORKERS=2: server.ts as a node:cluster primary with two workers behind one port. Proves the limiter holds
// across workers, the per-worker pool is sized from PgBouncer's cap, a crashed worker is replaced, and SIGTERM
// drains a request that is still arriving before everything exits 0.
import { connect } from 'node:net'
import t from 'tap'
import { buildTestApp, createUser } from '../helper.ts'
import { freePort } from '../free-port.ts'
import { childPids, spawnApiServer } from './support.ts'

const app = await buildTestApp(t)
const metricsPort = await freePort()
const server = await spawnApiServer(t, {
  WORKERS: '2',
  METRICS_PORT: String(metricsPort),
  // Request lines carry each worker's pid, which tells which worker answered.
  LOG_LEVEL: 'info',
  RATE_LIMIT_STANDARD_CAPACITY: '20',
  RATE_LIMIT_STANDARD_REFILL_PER_S: '0.001'
})
const primary = server.child.pid!

async function waitFor (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (await check()) return
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  throw new Error(`timed out waiting for ${what}`)
}

const servedBy = (reqIdPrefix: string) => new Set(server.output().split('\n')
  .filter((line) => line.includes(`"reqId":"${reqIdPrefix}`) && line.includes('request completed'))
  .map((line) => (JSON.parse(line) as { pid: number }).pid))

/** How many times the primary has logged a worker as listening (each start and each replacement). */
const workersListened = () => (server.output().match(/"msg":"worker listening"/g) ?? []).length

t.test('two workers share one port and one token bucket', async (t) => {
  // Both workers listen (spawnApiServer); the primary's log lines of it may still be in the pipe.
  await waitFor('two listening workers', () => workersListened() >= 2)
  t.equal(childPids(primary).length, 2, 'two workers')
  const user = await createUser(app)
  const responses = await Promise.all(Array.from({ length: 100 }, (_, i) => fetch(`${server.url}/balances`, {
    headers: { authorization: user.authorization, 'x-request-id': `bucket-${i}` },
    signal: AbortSignal.timeout(10_000)
  })))
  await Promise.all(responses.map((r) => r.arrayBuffer()))
  t.equal(responses.filter((r) => r.status === 200).length, 20, 'exactly the capacity')
  t.equal(responses.filter((r) => r.status === 429).length, 80)
  await waitFor('request logs', () => servedBy('bucket-').size === 2, 5000).catch(() => {})
  t.same([...servedBy('bucket-')].sort(), childPids(primary).sort(), 'both workers answered some of them')
})

t.test('the pool is split between workers and the primary sums their metrics', async (t) => {
  const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`, { signal: AbortSignal.timeout(10_000) })).text()
  // WORKERS=2 with DATABASE_POOL_MAX unset: floor(20 / 2) = 10 each, 20 in all = PgBouncer's max_db_connections.
  t.match(text, /^ledger_db_pool_max_connections 20$/m, 'two pools of 10')
  t.match(text, /ledger_rate_limit_decisions_total\{tier="standard",decision="rejected"\} 80/, 'counters of both workers, summed')
  t.equal((await fetch(`http://127.0.0.1:${metricsPort}/other`)).status, 404)
  // The same listener (OPS_PORT, also accepted as METRICS_PORT) answers readiness from the workers' reports.
  const ready = await fetch(`http://127.0.0.1:${metricsPort}/health/ready`)
  t.equal(ready.status, 200, 'ready while both workers are')
  t.same(await ready.json(), { status: 'ok', checks: { postgres: 'ok', redis: 'ok' } })
})

t.test('a worker that dies is replaced', async (t) => {
  const [victim] = childPids(primary)
  process.kill(victim!, 'SIGKILL')
  await waitFor('a replacement worker', () => {
    const pids = childPids(primary)
    return pids.length === 2 && !pids.includes(victim!)
  })
  t.match(server.output(), /"msg":"worker died; restarting"/)
  await waitFor('the replacement to listen', () => workersListened() >= 3)
  const statuses = await Promise.all(Array.from({ length: 10 }, () => fetch(`${server.url}/health/ready`).then((r) => r.status)))
  t.same(statuses, Array(10).fill(200), 'both workers answer again')
})

t.test('SIGTERM drains a request still in flight, then every process exits 0', async (t) => {
  const user = await createUser(app)
  const workers = childPids(primary)
  const body = JSON.stringify({ body: 'sent across a shutdown' })
  const socket = connect(server.port, '127.0.0.1')
  let response = ''
  socket.on('data', (chunk) => { response += chunk.toString() })
  const closed = new Promise((resolve) => socket.once('close', resolve))
  await new Promise((resolve) => socket.once('connect', resolve))
  // Headers and half the body: the request is in flight in a worker when the signal arrives.
  socket.write(`POST /posts HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: ${user.authorization}\r\n` +
    `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body.slice(0, 10)}`)
  await new Promise((resolve) => setTimeout(resolve, 300))
  process.kill(primary, 'SIGTERM')
  await new Promise((resolve) => setTimeout(resolve, 500))
  t.equal(await fetch(`${server.url}/health/live`).then((r) => r.status, () => 'refused'), 'refused', 'no new connections once draining')
  // write, not end: a half-closed client socket makes Node's HTTP server drop the reply (httpAllowHalfOpen).
  socket.write(body.slice(10))
  await closed
  t.match(response, /^HTTP\/1\.1 201 /, 'the in-flight request completes')
  t.equal(await server.exited, 0, 'the primary exits 0 once every worker has')
  t.same(workers.filter((pid) => { try { process.kill(pid, 0); return true } catch { return false } }), [], 'no worker is left')
  t.match(server.output(), /"msg":"all workers exited"/)
})
