// `npm run worker`: job delivery (webhooks, feed fan-out) as a process of its own, beside API processes started with
// WORKER_ENABLED=false or not. The same composition as the API (app.ts) without its routes and public listener, so
// the two cannot drift; with OPS_PORT set it serves /health/live, /health/ready and /metrics (its lanes' queue
// metrics) there. Any number may run side by side on one queue. SIGTERM/SIGINT: stop claiming, finish and record
// the attempts in flight, close the pools, exit 0.
import { loadConfigOrExit } from './settings.ts'
import { onePrincipalCanFillWebhookLane } from './routes/webhooks/index.ts'

// This process exists to run the loop: WORKER_ENABLED is for API processes. The ledger check is the API processes'
// (RECONCILE_INTERVAL_S): a whole-ledger snapshot held in a worker would also hold back the cleanup of the job
// rows its claims walk.
const config = { ...loadConfigOrExit(), WORKER_ENABLED: true, RECONCILE_INTERVAL_S: 0 }

// Telemetry first, so the tracer provider exists before the app creates a span.
const { telemetry } = await import('./telemetry.ts')
const { default: closeWithGrace } = await import('close-with-grace')
const { buildApp } = await import('./app.ts')

const app = await buildApp(config, { routes: false })

closeWithGrace({ delay: config.WEBHOOK_TIMEOUT_MS + 10_000 }, async ({ signal, err }) => {
  if (err !== undefined) app.log.error({ err }, 'closing after an uncaught error')
  else app.log.info({ signal }, 'closing')
  await app.close()
  await telemetry.shutdown().catch((error: unknown) => app.log.warn({ err: error }, 'telemetry flush failed'))
})

if (config.OPS_PORT > 0) {
  const { serveOps } = await import('./ops-server.ts')
  await serveOps(app, config)
}
await app.ready()
if (onePrincipalCanFillWebhookLane(config)) {
  app.log.warn({ webhookConcurrency: config.WORKER_WEBHOOK_CONCURRENCY, endpointConcurrency: config.WEBHOOK_ENDPOINT_CONCURRENCY },
    'WORKER_WEBHOOK_CONCURRENCY is not above 10 endpoints x WEBHOOK_ENDPOINT_CONCURRENCY: one principal\'s hanging endpoints can fill this worker\'s webhook lane')
}
app.log.info({ lanes: { feed: config.WORKER_FEED_CONCURRENCY, webhooks: config.WORKER_WEBHOOK_CONCURRENCY } }, 'worker started')
