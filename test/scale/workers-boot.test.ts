// A cluster that cannot serve must say so with exit 1, so whatever supervises it (systemd, Kubernetes) sees it:
// a public port that something else holds stops the primary before it forks a worker, and workers that keep failing
// to boot make it give up instead of restarting them forever.
import { createServer, type Server } from 'node:net'
import t from 'tap'
import { listenOn } from '../../plugins/http/public-port.ts'
import { freePort } from '../free-port.ts'
import { startServer } from './support.ts'

interface Teardown { teardown: (fn: () => unknown) => void }

const startCluster = (t: Teardown, port: number) => startServer(t, port, { WORKERS: '2', LOG_LEVEL: 'info' })

function squat (t: Teardown, port: number): Promise<Server> {
  const squatter = createServer()
  t.teardown(() => { squatter.close() })
  return listenOn(squatter, { host: '127.0.0.1', port }).then(() => squatter)
}

t.test('a public port that something else holds stops the primary at once, before any worker starts', { timeout: 60_000 }, async (t) => {
  const port = await freePort()
  await squat(t, port)
  const cluster = startCluster(t, port)
  t.equal(await cluster.exited, 1, 'exit 1')
  t.match(cluster.output(), /"msg":"the public port is not free; stopping"/)
  t.match(cluster.output(), /EADDRINUSE/, 'it says why')
  t.notMatch(cluster.output(), /"msg":"starting workers"/, 'no worker was forked')
})

t.test('workers that cannot start make the primary give up and exit 1 instead of restarting forever', { timeout: 110_000 }, async (t) => {
  const port = await freePort()
  const cluster = startCluster(t, port)
  // Taken between the primary's check and the workers' listen (a worker needs seconds to boot), so every worker
  // fails before it listens.
  const deadline = Date.now() + 30_000
  while (!cluster.output().includes('"msg":"starting workers"') && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
  await squat(t, port)
  t.equal(await cluster.exited, 1, 'exit 1, so the process manager above (systemd, Kubernetes) sees the failure')
  t.match(cluster.output(), /"msg":"worker keeps failing to start; stopping"/)
  t.match(cluster.output(), /EADDRINUSE/, 'the workers say why')
})
