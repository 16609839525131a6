// The public port's sockets share it with SO_REUSEPORT (plugins/http/public-port.ts, LISTEN_SOCKETS). Sharing must
// stay inside the process: another instance started on the same port, or any other program, must fail to bind it
// rather than take a share of the connections (and of the requests, tokens and bodies they carry).
import { createServer } from 'node:net'
import t from 'tap'
import { DEFAULT_LISTEN_SOCKETS } from '../../plugins/http/config.ts'
import { listenOn } from '../../plugins/http/public-port.ts'
import { freePort } from '../free-port.ts'
import { buildTestApp } from '../helper.ts'
import { listenBacklogs, spawnApiServer, startServer } from '../scale/support.ts'

function bindError (listen: () => Promise<unknown>): Promise<string> {
  return listen().then(() => 'bound', (error: NodeJS.ErrnoException) => error.code ?? String(error))
}

t.test('while the API holds its port on 8 sockets, nothing else can bind it', async (t) => {
  const port = await freePort()
  const api = await buildTestApp(t)
  await api.listenPublic({ host: '127.0.0.1', port, backlog: 511, sockets: 8 })
  t.equal(listenBacklogs(port).length, 8)

  const other = createServer()
  t.teardown(() => { other.close() })
  t.equal(await bindError(() => listenOn(other, { host: '127.0.0.1', port })), 'EADDRINUSE', 'a plain listen on the port is refused')

  const second = await buildTestApp(t)
  t.equal(await bindError(() => second.listenPublic({ host: '127.0.0.1', port, backlog: 511, sockets: 8 })), 'EADDRINUSE', 'a second instance with LISTEN_SOCKETS=8 fails to start')
  t.equal(await bindError(() => second.listenPublic({ host: '127.0.0.1', port, backlog: 511, sockets: 1 })), 'EADDRINUSE', 'and so does one with a single socket')
  t.equal(listenBacklogs(port).length, 8, 'the port still has the first instance\'s 8 sockets and no more')
})

t.test('a port that another program holds is not joined: the API fails to start', async (t) => {
  const port = await freePort()
  const holder = createServer()
  await listenOn(holder, { host: '127.0.0.1', port, reusePort: true })
  t.teardown(() => { holder.close() })
  const api = await buildTestApp(t)
  t.equal(await bindError(() => api.listenPublic({ host: '127.0.0.1', port, backlog: 511, sockets: 8 })), 'EADDRINUSE', 'even a holder that set SO_REUSEPORT itself')
  t.equal(listenBacklogs(port).length, 1, 'only the holder\'s socket')
  t.equal(api.server.listening, false)
})

t.test('while a node:cluster\'s workers hold the port, neither another program nor a second cluster can join it', { timeout: 120_000 }, async (t) => {
  const api = await spawnApiServer(t, { WORKERS: '2' }, { timeoutMs: 60_000 })
  t.equal(listenBacklogs(api.port).length, 2 * DEFAULT_LISTEN_SOCKETS, 'both workers listen')

  const other = createServer()
  t.teardown(() => { other.close() })
  t.equal(await bindError(() => listenOn(other, { host: '127.0.0.1', port: api.port })), 'EADDRINUSE', 'a plain listen on the port is refused')

  const second = startServer(t, api.port, { WORKERS: '2', LOG_LEVEL: 'info' })
  t.equal(await second.exited, 1, 'a second cluster on the port exits 1')
  t.match(second.output(), /"msg":"the public port is not free; stopping"/)
  t.notMatch(second.output(), /"msg":"starting workers"/, 'before it forks a worker')
  t.equal(listenBacklogs(api.port).length, 2 * DEFAULT_LISTEN_SOCKETS, 'the port still has the first cluster\'s sockets and no more')
  t.equal((await fetch(`${api.url}/health/ready`)).status, 200, 'and the first cluster still serves')
})
