// `npm run worker`: job delivery (webhooks, feed fan-out) as a process of its own, beside API processes started with
// WORKER_ENABLED=false or not. A minimal Fastify instance (configuration, metrics, tracing, database, Redis, the
// cache the feed jobs invalidate, the worker) with no listener; any number may run side by side on one queue. SIGTERM/SIGINT: stop claiming, finish
// and record the attempts in flight, close the pools, exit 0.
import Fastify from 'fastify'
import { loadConfigOrExit } from './settings.ts'
import { onePrincipalCanFillWebhookLane, workerOptions } from './job-handlers.ts'
import cacheAsidePlugin from './plugins/cache-aside.ts'
import databasePlugin from './plugins/database.ts'
import errorsPlugin, { logSerializers } from './plugins/errors.ts'
import metricsPlugin, { createMetrics } from './plugins/metrics.ts'
import redisPlugin from './plugins/redis.ts'
import tracingPlugin from './plugins/tracing.ts'
import workerPlugin from './plugins/worker.ts'

const config = loadConfigOrExit()

const { telemetry } = await import('./telemetry.ts')
const { default: closeWithGrace } = await import('close-with-grace')

const app = Fastify({ logger: { level: config.LOG_LEVEL, serializers: logSerializers } })
app.decorate('config', config)
const metrics = createMetrics()
await app.register(errorsPlugin)
await app.register(metricsPlugin, { metrics, token: config.METRICS_TOKEN })
await app.register(tracingPlugin)
await app.register(databasePlugin, {
  url: config.DATABASE_URL,
  max: config.DATABASE_POOL_MAX,
  idleTimeoutS: config.DATABASE_IDLE_TIMEOUT_S,
  connectTimeoutS: config.DATABASE_CONNECT_TIMEOUT_S,
  circuit: { failureThreshold: config.DATABASE_CIRCUIT_FAILURES, openMs: config.DATABASE_CIRCUIT_OPEN_MS }
})
await app.register(redisPlugin, { url: config.REDIS_URL, commandTimeoutMs: config.REDIS_COMMAND_TIMEOUT_MS, clusterNodes: config.REDIS_CLUSTER_NODES })
// The worker invalidates cache entries but reads none, so it holds none in a near cache.
await app.register(cacheAsidePlugin, { jitter: config.CACHE_JITTER })
// This process exists to run the loop: WORKER_ENABLED is for API processes.
await app.register(workerPlugin, workerOptions(config, metrics, app.cache, true))

closeWithGrace({ delay: config.WEBHOOK_TIMEOUT_MS + 10_000 }, async ({ signal, err }) => {
  if (err !== undefined) app.log.error({ err }, 'closing after an uncaught error')
  else app.log.info({ signal }, 'closing')
  await app.close()
  await telemetry.shutdown().catch((error: unknown) => app.log.warn({ err: error }, 'telemetry flush failed'))
})

await app.ready()
if (onePrincipalCanFillWebhookLane(config)) {
  app.log.warn({ webhookConcurrency: config.WORKER_WEBHOOK_CONCURRENCY, endpointConcurrency: config.WEBHOOK_ENDPOINT_CONCURRENCY },
    'WORKER_WEBHOOK_CONCURRENCY is not above 10 endpoints x WEBHOOK_ENDPOINT_CONCURRENCY: one principal\'s hanging endpoints can fill this worker\'s webhook lane')
}
app.log.info({ lanes: { feed: config.WORKER_FEED_CONCURRENCY, webhooks: config.WORKER_WEBHOOK_CONCURRENCY } }, 'worker started')
