// The public port (plugins/http/public-port.ts): LISTEN_SOCKETS sockets on one port, every one of them served by
// the app's own server, and a close that stops all of them accepting at once and waits for the connections of all
// of them. A second process on the port: test/security/public-port.test.ts. The real process's sockets and backlog: test/scale/listen.test.ts.
import { request as httpRequest } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import t from 'tap'
import { DEFAULT_LISTEN_SOCKETS } from '../../plugins/http/config.ts'
import { loadConfig } from '../../settings.ts'
import { buildTestApp } from '../helper.ts'
import { listenBacklogs } from '../scale/support.ts'

/** One GET on a connection of its own (no agent), so each request is a new connection the kernel places. */
function getOnNewConnection (port: number, path: string): Promise<{ status: number, headers: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, agent: false, timeout: 5000 }, (res) => {
      res.resume()
      res.once('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers }))
    })
    req.once('timeout', () => req.destroy(new Error('no answer in 5 s')))
    req.once('error', reject)
    req.end()
  })
}

t.test('LISTEN_SOCKETS sockets listen on one port, and the connections each of them accepts are served', async (t) => {
  const app = await buildTestApp(t)
  await app.listenPublic({ host: '127.0.0.1', port: 0, backlog: 511, sockets: 4 })
  const { port } = app.server.address() as AddressInfo
  t.equal(listenBacklogs(port).length, 4, 'four listening sockets on the port')

  // With 64 connections over 4 sockets, a socket whose connections were not handed to the app would leave about
  // 16 of them unanswered.
  const answers = await Promise.allSettled(Array.from({ length: 64 }, () => getOnNewConnection(port, '/health/live')))
  t.equal(answers.filter((answer) => answer.status === 'fulfilled' && answer.value.status === 200).length, 64, 'all 64 answered 200')
})

t.test('one socket is a plain listen', async (t) => {
  const app = await buildTestApp(t)
  await app.listenPublic({ host: '127.0.0.1', port: 0, backlog: 511, sockets: 1 })
  const { port } = app.server.address() as AddressInfo
  t.equal(listenBacklogs(port).length, 1)
  t.equal((await getOnNewConnection(port, '/health/live')).status, 200)
})

t.test('close waits for the requests in flight on every socket before the app shuts down', async (t) => {
  let entered = 0
  let onOtherSockets = 0
  // Connections the first socket did not accept: before the HTTP server's own listener runs (it sets
  // socket.server to itself), socket.server is the socket that accepted the connection.
  const viaOtherSocket = new WeakSet<object>()
  let finished = 0
  let allEntered = () => {}
  const everyoneIn = new Promise<void>((resolve) => { allEntered = resolve })
  let release = () => {}
  const released = new Promise<void>((resolve) => { release = resolve })
  const app = await buildTestApp(t, {}, {
    beforeRoutes: (instance) => {
      // A request on a connection the first socket accepted answers at once; one on any other socket waits until
      // the test releases it, after close has begun.
      instance.get('/held', { config: { public: true, rateLimit: false } }, async (request) => {
        const otherSocket = viaOtherSocket.has(request.socket)
        if (otherSocket) onOtherSockets++
        if (++entered === 32) allEntered()
        if (otherSocket) await released
        return { ok: true }
      })
      instance.addHook('onResponse', (request, reply, done) => {
        if (request.url === '/held') finished++
        done()
      })
    }
  })
  await app.listenPublic({ host: '127.0.0.1', port: 0, backlog: 511, sockets: 4 })
  const { port } = app.server.address() as AddressInfo
  app.server.prependListener('connection', (socket: Socket & { server?: unknown }) => { if (socket.server !== app.server) viaOtherSocket.add(socket) })

  const answers = Array.from({ length: 32 }, () => getOnNewConnection(port, '/held'))
  await Promise.race([everyoneIn, new Promise((resolve) => setTimeout(resolve, 10_000))])
  t.equal(entered, 32, 'all 32 requests reached the handler')
  t.ok(onOtherSockets > 0 && onOtherSockets < 32, `${onOtherSockets} of 32 connections came through the other sockets`)

  let closedWith = -1
  const closing = app.close().then(() => { closedWith = finished })
  // While the requests above are still held, every socket has stopped accepting: a new connection, wherever the
  // kernel would place it, is refused rather than accepted for a 503.
  await new Promise((resolve) => setTimeout(resolve, 100))
  const late = await Promise.allSettled(Array.from({ length: 16 }, () => getOnNewConnection(port, '/health/live')))
  t.same(late.map((attempt) => attempt.status === 'rejected' ? (attempt.reason as NodeJS.ErrnoException).code : attempt.value.status),
    Array(16).fill('ECONNREFUSED'), 'new connections are refused once close has begun')
  setTimeout(release, 300)
  await closing
  t.equal(closedWith, 32, 'the app closed only after all 32 responses had been sent')
  const results = await Promise.all(answers)
  t.same(results.map((r) => r.status), Array(32).fill(200), 'every request in flight finished with its answer')
  t.ok(results.every((r) => r.headers.connection === 'close'), 'and each told its client the connection ends')
})

t.test('LISTEN_SOCKETS: 8 on Linux unless set, 1 to 64', async (t) => {
  const base = { ...process.env, JWT_SECRET: 'x'.repeat(40) }
  t.equal(DEFAULT_LISTEN_SOCKETS, process.platform === 'linux' ? 8 : 1)
  t.equal(loadConfig({ ...base, LISTEN_SOCKETS: undefined }).LISTEN_SOCKETS, DEFAULT_LISTEN_SOCKETS)
  t.equal(loadConfig({ ...base, LISTEN_SOCKETS: '1' }).LISTEN_SOCKETS, 1)
  t.equal(loadConfig({ ...base, LISTEN_SOCKETS: '64' }).LISTEN_SOCKETS, 64)
  for (const bad of ['0', '65', '2.5', 'many']) t.throws(() => loadConfig({ ...base, LISTEN_SOCKETS: bad }), /LISTEN_SOCKETS/, bad)
})
