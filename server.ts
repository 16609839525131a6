// The only file that listens. With WORKERS=1 (the default) this process is the server; with WORKERS > 1 (or
// `auto`, one per core) it becomes the node:cluster primary (cluster.ts), and every worker it forks runs this
// same file and opens its own sockets on the same port.
import cluster from 'node:cluster'
import { fileURLToPath } from 'node:url'
import { API_NODE_FLAGS } from './plugins/http/config.ts'
import { loadConfigOrExit, type Config } from './settings.ts'

const config = loadConfigOrExit()

if (cluster.isPrimary && config.WORKERS > 1) {
  const { runPrimary } = await import('./cluster.ts')
  runPrimary({
    workers: config.WORKERS,
    exec: fileURLToPath(import.meta.url),
    logLevel: config.LOG_LEVEL,
    publicHost: config.HOST,
    publicPort: config.PORT,
    opsPort: config.OPS_PORT,
    opsHost: config.OPS_HOST,
    metricsToken: config.METRICS_TOKEN
  })
} else {
  await serve(config)
}

async function serve (config: Config) {
  // Telemetry first, so the tracer provider exists before the app creates a span.
  const { telemetry } = await import('./telemetry.ts')
  const { default: closeWithGrace } = await import('close-with-grace')
  const { buildApp } = await import('./app.ts')

  const app = await buildApp(config)
  // node:cluster's workers inherit the primary's flags, so one check here covers every process.
  const missingFlags = API_NODE_FLAGS.filter((flag) => !process.execArgv.includes(flag))
  if (missingFlags.length > 0) {
    app.log.warn({ missingFlags }, `started without the V8 flags that keep a process warm through quiet periods: the first seconds after an idle period will be slow (node ${API_NODE_FLAGS.join(' ')} server.ts)`)
  }

  // SIGTERM/SIGINT: stop accepting, let in-flight requests finish, close pools (onClose hooks), exit 0.
  const grace = closeWithGrace({
    delay: 10_000,
    // A worker gets the primary's SIGTERM and, from a terminal, the process group's SIGINT as well: a repeat
    // must not cut its drain short. The primary turns a second signal to itself into SIGKILL.
    ...(cluster.isWorker ? { onSecondSignal: (signal: string) => app.log.info({ signal }, 'already closing') } : {})
  }, async ({ signal, err }) => {
    if (err !== undefined) app.log.error({ err }, 'closing after an uncaught error')
    else app.log.info({ signal }, 'closing')
    await app.close()
    // A collector that is down must not turn a clean shutdown into a failed one.
    await telemetry.shutdown().catch((error: unknown) => app.log.warn({ err: error }, 'telemetry flush failed'))
  })

  if (cluster.isWorker) {
    // The primary serves OPS_PORT: it is ready while every worker is (each tells it its readiness over IPC) ...
    const report = (result: { ok: boolean, checks: unknown }) => { process.send?.({ type: 'ledger:readiness', ok: result.ok, checks: result.checks }) }
    app.readiness.onChange(report)
    app.addHook('onReady', async () => { report(app.readiness.current()) })
    // ... and sums every worker's metrics; this answers its requests over IPC.
    // Constructing an AggregatorRegistry is what installs prom-client's responder in a worker.
    const { AggregatorRegistry } = await import('prom-client')
    const responder = new AggregatorRegistry()
    AggregatorRegistry.setRegistries([app.metrics.registry])
    app.addHook('onClose', async () => { responder.clear() })
    // The primary is gone (killed): nobody restarts us, answers the operations port or counts our metrics any more,
    // and a new primary's workers would share the port with us, so drain and leave.
    process.once('disconnect', () => grace.close())
  }

  // Longer than the usual load balancer idle timeout (60 s), so the balancer, not us, closes idle connections.
  app.server.keepAliveTimeout = 72_000

  // Not ready (503 on /health/ready, here and on the operations port) until the warm-up is over.
  const warming = app.readiness.hold()

  // Opened before the public port, so a port clash fails the boot before any traffic arrives; it answers
  // /health/live from the start, so the kubelet's startup probe passes while the process warms up.
  if (cluster.isPrimary && config.OPS_PORT > 0) {
    const { serveOps } = await import('./ops-server.ts')
    await serveOps(app, config)
  }

  // Before the public port opens: traffic arrives once the request path is optimised (plugins/http/warm-up.ts).
  await app.warmUp.run({ seconds: config.WARM_UP_S })

  await app.listenPublic({ host: config.HOST, port: config.PORT, backlog: config.LISTEN_BACKLOG, sockets: config.LISTEN_SOCKETS })
  if (cluster.isWorker) process.send?.({ type: 'ledger:listening' })
  warming()
}
