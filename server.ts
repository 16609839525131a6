// Telemetry first, so the tracer provider exists before the app creates a span.
import { telemetry } from './telemetry.ts'
import closeWithGrace from 'close-with-grace'
import { buildApp } from './app.ts'
import { ConfigError, loadConfig } from './config.ts'

let config
try {
  config = loadConfig()
} catch (error) {
  if (!(error instanceof ConfigError)) throw error
  console.error(error.message)
  process.exit(1)
}

const app = await buildApp(config)

// SIGTERM/SIGINT: stop accepting, let in-flight requests finish, close pools (onClose hooks), exit 0.
closeWithGrace({ delay: 10_000 }, async ({ signal, err }) => {
  if (err !== undefined) app.log.error({ err }, 'closing after an uncaught error')
  else app.log.info({ signal }, 'closing')
  await app.close()
  // A collector that is down must not turn a clean shutdown into a failed one.
  await telemetry.shutdown().catch((error: unknown) => app.log.warn({ err: error }, 'telemetry flush failed'))
})

// Slow clients must not hold sockets forever.
app.server.headersTimeout = 10_000
app.server.keepAliveTimeout = 72_000

await app.listen({ host: config.HOST, port: config.PORT })
