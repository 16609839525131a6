import cluster from 'node:cluster'
import type { Server as HttpServer } from 'node:http'
import { createServer, type AddressInfo, type ListenOptions, type Server } from 'node:net'
import type { FastifyInstance, FastifyListenOptions } from 'fastify'
import fp from 'fastify-plugin'
import { REUSE_PORT_SPREADS } from './config.ts'

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
 * Fails with EADDRINUSE while any socket listens on host:port, and otherwise answers the port it could bind (the one
 * the kernel picks for port 0). One without SO_REUSEPORT cannot join a port that reuse-port sockets hold, so this
 * keeps what a single socket gives: a second instance started on the same port (an old deploy still running, a
 * mistyped PORT) fails its boot instead of silently taking a share of the traffic. A node:cluster primary calls it
 * before it forks (cluster.ts): its workers then share the port with each other, so none of them can check.
 */
export async function claimPort (host: string, port: number): Promise<number> {
  const probe = createServer()
  await listenOn(probe, { host, port, exclusive: true })
  const bound = (probe.address() as AddressInfo).port
  await new Promise((resolve) => probe.close(resolve))
  return bound
}

/**
 * Why several sockets: libuv accepts one connection each time a listening socket is reported ready, so a process
 * whose event loop is busy accepts a burst of new connections a few hundred a second at best, and they wait in the
 * kernel's accept queue while the connections already accepted are served again and again. With n sockets on the
 * port (SO_REUSEPORT) the kernel spreads new connections over n accept queues and each turn of the loop accepts up
 * to n (docs/performance.md has the measurements). The extra sockets hand their connections to the app's server,
 * so Fastify still sees one server.
 *
 * A node:cluster worker opens its own sockets the same way (`exclusive`: not through the primary), so the kernel
 * spreads connections over every worker's sockets. Through the primary, each connection waited for a hand-off over
 * IPC that a busy worker acknowledges once per turn of its event loop: the same stall as one socket, and seconds of
 * it at 1,000 connections (docs/performance.md). Where the kernel does not spread reuse-port sockets, a worker keeps
 * the plain listen and the primary accepts for it.
 */
async function publicPortPlugin (app: FastifyInstance) {
  const extras: Server[] = []

  app.decorate('listenPublic', async ({ host, port, backlog, sockets }: PublicPortOptions) => {
    const ownSockets = cluster.isPrimary || REUSE_PORT_SPREADS
    if (!ownSockets || (sockets <= 1 && cluster.isPrimary)) {
      await app.listen({ host, port, backlog })
      return
    }
    if (cluster.isPrimary && port !== 0) await claimPort(host, port)
    const first: FastifyListenOptions & { reusePort: boolean } = { host, port, backlog, reusePort: true, exclusive: true }
    await app.listen(first)
    // The port the first socket got (PORT=0 picks one) and its address (Fastify resolves `localhost`).
    const bound = app.server.address() as AddressInfo
    for (let i = 1; i < sockets; i++) {
      const extra = handOffServer(app.server)
      await listenOn(extra, { host: bound.address, port: bound.port, backlog, reusePort: true, exclusive: true })
      extras.push(extra)
    }
  })

  // After graceful-close's own preClose (the plugin's dependency), so every response already says
  // `Connection: close`. Every socket stops accepting here, the first one too: Fastify would close it only after
  // this hook, and meanwhile it would take new connections just to answer them 503, where a refused connection
  // sends the client (or its load balancer) to another instance at once. Fastify's drain waits only for the
  // connections its server accepted itself, so the app does not close (pools, Redis) before the extra sockets'
  // connections have ended; its own later close of the first socket is a no-op that it expects.
  app.addHook('preClose', async () => {
    if (extras.length === 0) return
    const drained = extras.map((extra) => new Promise((resolve) => extra.close(resolve)))
    app.server.close()
    app.server.closeIdleConnections()
    await Promise.all(drained)
  })
}

export default fp(publicPortPlugin, { name: 'public-port', dependencies: ['graceful-close'] })
