// The operations listener (OPS_PORT): /health/live, /health/ready and /metrics on a port of their own, for the
// kubelet and Prometheus, so the public port need not serve them. One implementation for both process models:
// with WORKERS=1 server.ts serves this process's readiness and metrics; with WORKERS > 1 the cluster primary
// serves its workers' readiness (all of them ready) and the sum of their metrics (cluster.ts). Plain node:http:
// three fixed answers need no framework, and the primary loads no app.
import { createServer, type Server } from 'node:http'
import type { FastifyInstance } from 'fastify'
import type { Config } from './settings.ts'
import { bearerMatches } from './plugins/metrics/index.ts'
import type { ReadinessResult } from './plugins/http/readiness.ts'
import { readyBody } from './routes/health/index.ts'

export interface OpsServerOptions {
  readiness: () => Pick<ReadinessResult, 'ok' | 'checks'>
  metrics: () => Promise<{ contentType: string, text: string }>
  /** When set, /metrics here requires `Authorization: Bearer <token>` too (defence in depth; the port is private). */
  metricsToken?: string | undefined
  onError: (error: Error) => void
}

const json = (status: number, body: unknown) => ({ status, type: 'application/json; charset=utf-8', text: JSON.stringify(body) })

export function createOpsServer (options: OpsServerOptions): Server {
  const server = createServer(async (request, response) => {
    const path = request.url?.split('?')[0]
    let answer: { status: number, type: string, text: string, headers?: Record<string, string> }
    if (request.method !== 'GET' && request.method !== 'HEAD') answer = json(405, { status: 'method_not_allowed' })
    else if (path === '/health/live') answer = json(200, { status: 'ok' })
    else if (path === '/health/ready') {
      const result = options.readiness()
      answer = json(result.ok ? 200 : 503, readyBody(result))
    } else if (path === '/metrics') {
      if (options.metricsToken !== undefined && !bearerMatches(request.headers.authorization, options.metricsToken)) {
        answer = { ...json(401, { status: 'unauthorized' }), headers: { 'www-authenticate': 'Bearer' } }
      } else {
        try {
          const { contentType, text } = await options.metrics()
          answer = { status: 200, type: contentType, text }
        } catch (error) {
          options.onError(error as Error)
          answer = json(503, { status: 'unavailable' })
        }
      }
    } else answer = json(404, { status: 'not_found' })
    response.writeHead(answer.status, { 'content-type': answer.type, 'cache-control': 'no-store', ...answer.headers })
    response.end(request.method === 'HEAD' ? undefined : answer.text)
  })
  // Probes and scrapes are small and quick; a slow client must not hold a socket here.
  server.headersTimeout = 5000
  server.requestTimeout = 10_000
  server.on('error', options.onError)
  return server
}

/** Listens and resolves once bound (rejects on EADDRINUSE and the like, so boot fails loudly). */
export function listenOps (server: Server, port: number, host: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, () => {
      server.off('error', reject)
      resolve()
    })
  })
}

/** Stops accepting and ends its connections (a scrape cut short is retried; nothing here needs draining). */
export function closeOps (server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve())
    server.closeAllConnections()
  })
}

/**
 * Serves an app's own readiness and metrics on OPS_PORT (a single-process server, the standalone worker). Readiness
 * is as on the public port, where load shedding answers /health/ready with 503: an overloaded pod leaves rotation.
 * Closed after the public port has drained (onClose runs after it closed); readiness is 503 from preClose on.
 */
export async function serveOps (app: FastifyInstance, config: Pick<Config, 'OPS_PORT' | 'OPS_HOST' | 'METRICS_TOKEN'>): Promise<void> {
  const ops = createOpsServer({
    readiness: () => {
      const result = app.readiness.current()
      return app.isUnderPressure() ? { ...result, ok: false } : result
    },
    metrics: async () => ({ contentType: app.metrics.registry.contentType, text: await app.metrics.registry.metrics() }),
    metricsToken: config.METRICS_TOKEN,
    onError: (error) => app.log.error({ err: error }, 'operations listener failed')
  })
  app.addHook('onClose', async () => { await closeOps(ops) })
  // The first readiness round runs in ready(), so the kubelet never sees a result that was not probed.
  await app.ready()
  await listenOps(ops, config.OPS_PORT, config.OPS_HOST)
  app.log.info({ host: config.OPS_HOST, port: config.OPS_PORT }, 'operations listener (health, metrics) listening')
}
