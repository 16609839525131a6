// How server.ts opens its public port: its listening sockets and the backlog the kernel keeps for each, and the warm-up it runs before
// (plugins/http/warm-up.ts), alone and as a node:cluster primary's workers.
import { readFileSync } from 'node:fs'
import t from 'tap'
import { DEFAULT_LISTEN_SOCKETS } from '../../plugins/http/config.ts'
import { freePort } from '../free-port.ts'
import { childPids, listenBacklogs, listenerPids, spawnApiServer, startServer } from './support.ts'

const somaxconn = Number(readFileSync('/proc/sys/net/core/somaxconn', 'utf8'))

t.test('the public port listens on 8 sockets, each with a backlog of 4096 (capped by somaxconn), not Node\'s 511', async (t) => {
  const api = await spawnApiServer(t)
  t.same(listenBacklogs(api.port), Array(DEFAULT_LISTEN_SOCKETS).fill(Math.min(4096, somaxconn)))
  t.equal(DEFAULT_LISTEN_SOCKETS, 8)
})

t.test('LISTEN_BACKLOG and LISTEN_SOCKETS set them', async (t) => {
  const api = await spawnApiServer(t, { LISTEN_BACKLOG: '1234', LISTEN_SOCKETS: '3' })
  t.same(listenBacklogs(api.port), Array(3).fill(Math.min(1234, somaxconn)))
})

t.test('each node:cluster worker listens on 8 sockets of its own; the primary holds none', async (t) => {
  const api = await spawnApiServer(t, { WORKERS: '2' }, { timeoutMs: 60_000 })
  const workers = childPids(api.child.pid!).sort()
  t.equal(workers.length, 2)
  t.same(listenBacklogs(api.port), Array(2 * DEFAULT_LISTEN_SOCKETS).fill(Math.min(4096, somaxconn)))
  const owners = listenerPids(api.port)
  t.same([...new Set(owners)].sort(), workers, 'every socket is a worker\'s')
  t.same(workers.map((pid) => owners.filter((owner) => owner === pid).length), [DEFAULT_LISTEN_SOCKETS, DEFAULT_LISTEN_SOCKETS])
})

t.test('with WARM_UP_S the process warms up before the public port listens', async (t) => {
  const api = await spawnApiServer(t, { WARM_UP_S: '1', LOG_LEVEL: 'info' })
  const lines = api.output().split('\n').filter(Boolean).map((line) => JSON.parse(line) as Record<string, unknown>)
  const warmed = lines.findIndex((line) => line.msg === 'warmed up')
  const listening = lines.findIndex((line) => typeof line.msg === 'string' && line.msg.startsWith('Server listening'))
  t.ok(warmed >= 0, 'one line says the warm-up ran')
  t.ok(listening > warmed, 'the port opened afterwards')
  t.ok(Number(lines[warmed]!.requests) > 0, `${String(lines[warmed]!.requests)} requests`)
  t.same(Object.keys(lines[warmed]!.statuses as object).sort(), ['200', '401', '404'])
})

t.test('the operations port answers /health/live during the warm-up and /health/ready only after it', async (t) => {
  const opsPort = await freePort()
  const started = spawnApiServer(t, { WARM_UP_S: '3', OPS_PORT: String(opsPort), LOG_LEVEL: 'info' })
  const ops = `http://127.0.0.1:${opsPort}`
  let live = 0
  const deadline = Date.now() + 20_000
  while (live !== 200 && Date.now() < deadline) {
    live = await fetch(`${ops}/health/live`).then((r) => r.status, () => 0)
    if (live !== 200) await new Promise((resolve) => setTimeout(resolve, 50))
  }
  t.equal(live, 200, 'live while warming up')
  t.equal(await fetch(`${ops}/health/ready`).then((r) => r.status, () => 0), 503, 'not ready while warming up')
  const api = await started
  t.equal((await fetch(`${ops}/health/ready`)).status, 200, 'ready once the public port listens')
  const lines = api.output().split('\n').filter(Boolean).map((line) => JSON.parse(line) as Record<string, unknown>)
  t.ok(lines.some((line) => line.msg === 'warmed up'))
})

t.test('each cluster worker warms itself up before the primary reports ready', async (t) => {
  // The primary's readiness (on OPS_PORT) needs every worker's: the public port answers as soon as one worker
  // listens, so it is the operations port that must wait for both warm-ups. Polled from the start, not after a
  // worker's own readiness.
  const opsPort = await freePort()
  const api = startServer(t, await freePort(), { WARM_UP_S: '1', WORKERS: '2', OPS_PORT: String(opsPort), LOG_LEVEL: 'info' })
  const warmUps = () => api.output().split('\n').filter((line) => line.includes('"msg":"warmed up"'))
  let ready = false
  const deadline = Date.now() + 60_000
  while (!ready && Date.now() < deadline) {
    ready = await fetch(`http://127.0.0.1:${opsPort}/health/ready`).then((r) => r.status === 200, () => false)
    if (!ready) await new Promise((resolve) => setTimeout(resolve, 50))
  }
  t.ok(ready, 'the primary said ready')
  // The lines were written before readiness was reported; 200 ms lets this process read them off the pipe. A worker
  // that warmed up only after the primary said ready would log its line a second (WARM_UP_S) later.
  await new Promise((resolve) => setTimeout(resolve, 200))
  t.equal(warmUps().length, 2, 'both workers had warmed up when the primary said ready')
  t.equal(new Set(warmUps().map((line) => (JSON.parse(line) as { pid: number }).pid)).size, 2, 'two warm-ups, in two processes')
})
