import cluster from 'node:cluster'
import type { Server as HttpServer } from 'node:http'
import { createServer, type AddressInfo, type ListenOptions, type Server } from 'node:net'
import type { FastifyInstance, FastifyListenOptions } from 'fastify'
import fp from 'fastify-plugin'

export interface PublicPortOptions {
  host: string
  port: number
  /** listen(2) backlog of each socket (LISTEN_BACKLOG). */
  backlog: number
  /** Listening sockets on the port (LISTEN_SOCKETS); above 1 they share it with SO_REUSEPORT. */
  sockets: number
}

declare module 'fastify' {
  interface FastifyInstance {
    /** Opens the public port: `app.listen`, plus the further sockets LISTEN_SOCKETS asks for. */
    listenPublic: (options: PublicPortOptions) => Promise<void>
  }
}

/**
 * A listening socket whose connections the app's own HTTP server serves, as node:cluster and TLS-terminating
 * proxies hand them over: every request goes through the same server, with its timeouts, hooks and drain.
 * `noDelay` is http.createServer's own default for the sockets it accepts.
 */
export function handOffServer (target: HttpServer): Server {
  return createServer({ noDelay: true }, (socket) => { target.emit('connection', socket) })
}

export function listenOn (server: Server, options: ListenOptions): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(options, () => {
      server.off('error', reject)
      resolve()
    })
  })
}

/**
 * Fails with EADDRINUSE while any socket listens on host:port. One without SO_REUSEPORT cannot join a port that
 * reuse-port sockets hold, so this keeps what a single socket gives: a second instance started on the same port
 * (an old deploy still running, a mistyped PORT) fails its boot instead of silently taking a share of the traffic.
 */
async function assertPortFree (host: string, port: number) {
  const probe = createServer()
  await listenOn(probe, { host, port, exclusive: true })
  await new Promise((resolve) => probe.close(resolve))
}

/**
 * Why several sockets: libuv accepts one connection each time a listening socket is reported ready, so a process
 * whose event loop is busy accepts a burst of new connections a few hundred a second at best, and they wait in the
 * kernel's accept queue while the connections already accepted are served again and again. With n sockets on the
 * port (SO_REUSEPORT) the kernel spreads new connections over n accept queues and each turn of the loop accepts up
 * to n (docs/performance.md has the measurements). The extra sockets hand their connections to the app's server,
 * so Fastify still sees one server.
 *
 * In a node:cluster worker `listen` goes through the primary, which owns the port and hands connections round-robin;
 * its event loop does nothing else, so it accepts quickly, and the worker keeps the plain listen.
 */
async function publicPortPlugin (app: FastifyInstance) {
  const extras: Server[] = []

  app.decorate('listenPublic', async ({ host, port, backlog, sockets }: PublicPortOptions) => {
    if (sockets <= 1 || cluster.isWorker) {
      await app.listen({ host, port, backlog })
      return
    }
    if (port !== 0) await assertPortFree(host, port)
    const first: FastifyListenOptions & { reusePort: boolean } = { host, port, backlog, reusePort: true }
    await app.listen(first)
    // The port the first socket got (PORT=0 picks one) and its address (Fastify resolves `localhost`).
    const bound = app.server.address() as AddressInfo
    for (let i = 1; i < sockets; i++) {
      const extra = handOffServer(app.server)
      await listenOn(extra, { host: bound.address, port: bound.port, backlog, reusePort: true })
      extras.push(extra)
    }
  })

  // After graceful-close's own preClose (the plugin's dependency), so every response already says
  // `Connection: close`. Fastify's drain waits only for the connections its server accepted itself: the extra
  // sockets stop accepting here and the app does not close (pools, Redis) before their connections have ended.
  app.addHook('preClose', async () => {
    if (extras.length === 0) return
    const drained = extras.map((extra) => new Promise((resolve) => extra.close(resolve)))
    app.server.closeIdleConnections()
    await Promise.all(drained)
  })
}

export default fp(publicPortPlugin, { name: 'public-port', dependencies: ['graceful-close'] })
