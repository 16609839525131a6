// The API as `npm run bench` runs it: exactly what server.ts serves (telemetry first, buildApp, the same socket
// timeouts), plus the bench-only N+1 feed route that buildApp never registers. Started by bench/run.ts as its own
// process; it stops on SIGTERM/SIGINT, when the parent goes away (IPC channel closed), and in any case after
// BENCH_SERVER_MAX_S seconds, so a crashed bench never leaves it running.
import { telemetry } from '../telemetry.ts'
import { buildApp } from '../app.ts'
import { loadConfig } from '../settings.ts'
import { feedNPlusOneRoutes } from '../test/feed-n-plus-one.ts'

const config = loadConfig()
const app = await buildApp(config)
await app.register(feedNPlusOneRoutes)

app.server.headersTimeout = 10_000
app.server.keepAliveTimeout = 72_000

let closing = false
async function stop (reason: string) {
  if (closing) return
  closing = true
  app.log.warn({ reason }, 'bench server stopping')
  const force = setTimeout(() => process.exit(1), 10_000)
  force.unref()
  try {
    await app.close()
    await telemetry.shutdown().catch(() => {})
  } finally {
    process.exit(0)
  }
}

process.once('SIGTERM', () => { stop('SIGTERM').catch(() => {}) })
process.once('SIGINT', () => { stop('SIGINT').catch(() => {}) })
process.once('disconnect', () => { stop('parent gone').catch(() => {}) })
const maxSeconds = Number(process.env.BENCH_SERVER_MAX_S ?? 1800)
setTimeout(() => { stop(`reached BENCH_SERVER_MAX_S=${maxSeconds}`).catch(() => {}) }, maxSeconds * 1000).unref()

await app.warmUp.run({ seconds: config.WARM_UP_S })
await app.listenPublic({ host: config.HOST, port: config.PORT, backlog: config.LISTEN_BACKLOG, sockets: config.LISTEN_SOCKETS })
process.send?.({ listening: config.PORT })
