// The process supervisor for WORKERS > 1, run by server.ts in the primary process. It uses node:cluster: the
// primary forks the workers (each runs server.ts and builds the app with its own small pool), owns the listening
// socket and hands connections to them in turn (round-robin, Node's default on Linux), restarts a worker that
// dies, and on SIGTERM/SIGINT drains them all. It serves no requests itself and opens no database or Redis client.
//
// Beyond one machine, run one process per container (WORKERS=1) and let the orchestrator do this job (see
// docs-scaling.md); WORKERS=auto is for a VM or bare machine where one Node process would use one core.
import cluster, { type Worker } from 'node:cluster'
import { timingSafeEqual } from 'node:crypto'
import { createServer, type Server } from 'node:http'
import { hostname } from 'node:os'
import { AggregatorRegistry } from 'prom-client'

export interface SupervisorOptions {
  workers: number
  /** The script every worker runs (server.ts), whatever script started the primary (scripts/start.ts). */
  exec: string
  logLevel: string
  /** Where the primary serves the sum of every worker's metrics; 0 turns it off. */
  metricsPort: number
  host: string
  metricsToken?: string | undefined
  /** Restart backoff: first delay, doubled per consecutive crash, capped. */
  restartDelayMs?: number
  maxRestartDelayMs?: number
  /** A worker that lived this long before crashing starts the backoff over. */
  stableAfterMs?: number
  /** Consecutive failures to boot (exit before listening) after which the primary gives up and exits 1. */
  maxBootFailures?: number
  /** Workers still running this long after the shutdown signal are killed (close-with-grace gives them 10 s). */
  shutdownTimeoutMs?: number
}

const levels: Record<string, number> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60, silent: Infinity }

/** pino-shaped JSON lines, so the primary's lines sit next to the workers' in the same log pipeline. */
function createLogger (level: string) {
  const threshold = levels[level] ?? 30
  const base = { pid: process.pid, hostname: hostname(), role: 'primary' }
  const write = (value: number) => (fields: Record<string, unknown>, msg: string) => {
    if (value < threshold) return
    process.stdout.write(`${JSON.stringify({ level: value, time: Date.now(), ...base, ...fields, msg })}\n`)
  }
  return { info: write(30), warn: write(40), error: write(50) }
}

interface Slot {
  index: number
  worker: Worker | undefined
  startedAt: number
  listened: boolean
  failures: number
  bootFailures: number
  restartTimer: NodeJS.Timeout | undefined
}

export function runPrimary (options: SupervisorOptions) {
  const log = createLogger(options.logLevel)
  const restartDelayMs = options.restartDelayMs ?? 100
  const maxRestartDelayMs = options.maxRestartDelayMs ?? 10_000
  const stableAfterMs = options.stableAfterMs ?? 30_000
  const maxBootFailures = options.maxBootFailures ?? 3
  const shutdownTimeoutMs = options.shutdownTimeoutMs ?? 15_000

  cluster.setupPrimary({ exec: options.exec })
  const slots: Slot[] = Array.from({ length: options.workers }, (_, index) => ({
    index, worker: undefined, startedAt: 0, listened: false, failures: 0, bootFailures: 0, restartTimer: undefined
  }))
  let shuttingDown = false
  let exitCode = 0
  let metricsServer: Server | undefined

  function fork (slot: Slot) {
    slot.restartTimer = undefined
    slot.startedAt = Date.now()
    slot.listened = false
    // LEDGER_WORKER tells the worker it is one of several (for its logs); it is not a setting.
    const worker = cluster.fork({ LEDGER_WORKER: String(slot.index + 1) })
    slot.worker = worker
    worker.once('listening', () => {
      slot.listened = true
      slot.bootFailures = 0
      log.info({ worker: slot.index + 1, workerPid: worker.process.pid }, 'worker listening')
    })
  }

  function finish () {
    if (slots.some((slot) => slot.worker !== undefined)) return
    log.info({ exitCode }, 'all workers exited')
    metricsServer?.close()
    process.exit(exitCode)
  }

  cluster.on('exit', (worker, code, signal) => {
    const slot = slots.find((s) => s.worker === worker)
    if (slot === undefined) return
    slot.worker = undefined
    if (shuttingDown) {
      // A worker stopped by the signal before it had finished booting had nothing to drain.
      if (code !== 0 && !(signal === 'SIGTERM' && !slot.listened)) exitCode = 1
      log.info({ worker: slot.index + 1, workerPid: worker.process.pid, code, signal }, 'worker exited')
      finish()
      return
    }
    // Anything else is a crash (or someone stopped the worker by hand): put the capacity back, backing off so a
    // worker that dies at once every time does not spin.
    const lived = Date.now() - slot.startedAt
    slot.failures = lived >= stableAfterMs ? 1 : slot.failures + 1
    if (!slot.listened) slot.bootFailures++
    if (slot.bootFailures >= maxBootFailures) {
      log.error({ worker: slot.index + 1, code, signal, bootFailures: slot.bootFailures }, 'worker keeps failing to start; stopping')
      shutdown('boot failures', 1)
      return
    }
    const delay = Math.min(maxRestartDelayMs, restartDelayMs * 2 ** (slot.failures - 1))
    log.warn({ worker: slot.index + 1, workerPid: worker.process.pid, code, signal, restartInMs: delay }, 'worker died; restarting')
    slot.restartTimer = setTimeout(() => fork(slot), delay)
  })

  function shutdown (reason: string, code = 0) {
    if (shuttingDown) return
    shuttingDown = true
    exitCode = code
    log.info({ reason }, 'stopping workers')
    for (const slot of slots) {
      if (slot.restartTimer !== undefined) clearTimeout(slot.restartTimer)
      slot.restartTimer = undefined
      // Each worker's close-with-grace stops accepting, finishes in-flight requests and closes its pools.
      slot.worker?.process.kill('SIGTERM')
    }
    setTimeout(() => {
      log.error({ timeoutMs: shutdownTimeoutMs }, 'workers did not stop in time; killing them')
      for (const slot of slots) slot.worker?.process.kill('SIGKILL')
      exitCode = 1
    }, shutdownTimeoutMs).unref()
    finish()
  }

  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.on(signal, () => {
      if (!shuttingDown) {
        shutdown(signal)
        return
      }
      // A second signal means "now": the workers ignore repeats (they get one from us and, on a terminal, one
      // from the process group), so escalating is the primary's job.
      log.warn({ signal }, 'second signal; killing workers')
      for (const slot of slots) slot.worker?.process.kill('SIGKILL')
      process.exit(1)
    })
  }

  if (options.metricsPort > 0) metricsServer = serveClusterMetrics(options, log)
  log.info({ workers: options.workers }, 'starting workers')
  for (const slot of slots) fork(slot)
}

/**
 * Each worker's /metrics describes that worker only (whichever one the connection landed on), which would make
 * counters jump between scrapes. The primary asks every worker over IPC and serves the sum (prom-client's
 * AggregatorRegistry; gauges such as the pool size are summed too, process metrics use prom-client's own rules).
 */
function serveClusterMetrics (options: SupervisorOptions, log: ReturnType<typeof createLogger>): Server {
  const aggregator = new AggregatorRegistry()
  const expected = options.metricsToken === undefined ? undefined : Buffer.from(`Bearer ${options.metricsToken}`)
  const server = createServer((request, response) => {
    if (request.method !== 'GET' || request.url?.split('?')[0] !== '/metrics') {
      response.writeHead(404).end()
      return
    }
    if (expected !== undefined) {
      const given = Buffer.from(request.headers.authorization ?? '')
      if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
        response.writeHead(401, { 'www-authenticate': 'Bearer' }).end()
        return
      }
    }
    aggregator.clusterMetrics().then((text) => {
      response.writeHead(200, { 'content-type': aggregator.contentType }).end(text)
    }, (error: unknown) => {
      log.warn({ err: { message: (error as Error).message } }, 'cluster metrics failed')
      response.writeHead(503).end()
    })
  })
  server.on('error', (error) => log.error({ err: { message: error.message } }, 'metrics server failed'))
  server.listen(options.metricsPort, options.host, () => {
    log.info({ port: options.metricsPort }, 'cluster metrics listening')
  })
  return server
}
