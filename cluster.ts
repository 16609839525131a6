// The process supervisor for WORKERS > 1, run by server.ts in the primary process. It uses node:cluster: the
// primary checks that the public port is free, forks the workers (each runs server.ts, builds the app with its own
// small pool and opens its own sockets on the port, which the kernel spreads connections over: see
// plugins/http/public-port.ts), restarts a worker that dies, and on SIGTERM/SIGINT drains them all. It serves no
// requests itself and opens no database or Redis client.
//
// Beyond one machine, run one process per container (WORKERS=1) and let the orchestrator do this job (see
// docs-scaling.md); WORKERS=auto is for a VM or bare machine where one Node process would use one core.
import cluster, { type Worker } from 'node:cluster'
import type { Server } from 'node:http'
import { hostname } from 'node:os'
import { AggregatorRegistry } from 'prom-client'
import { closeOps, createOpsServer, listenOps } from './ops-server.ts'
import { REUSE_PORT_SPREADS } from './plugins/http/config.ts'
import { claimPort } from './plugins/http/public-port.ts'
import type { CheckResult } from './plugins/http/readiness.ts'

export interface SupervisorOptions {
  workers: number
  /** The script every worker runs (server.ts), whatever script started the primary (scripts/start.ts). */
  exec: string
  logLevel: string
  /** The public port (HOST, PORT) the workers share; PORT=0 becomes one free port for all of them. */
  publicHost: string
  publicPort: number
  /** Where the primary serves health and the sum of every worker's metrics (OPS_PORT); 0 turns it off. */
  opsPort: number
  opsHost: string
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

interface ReadinessReport { ok: boolean, checks: { postgres: CheckResult, redis: CheckResult } }

interface Slot {
  index: number
  worker: Worker | undefined
  startedAt: number
  listened: boolean
  /** Some worker of this slot has listened since the primary started: the first boot of every slot is over. */
  everListened: boolean
  failures: number
  bootFailures: number
  restartTimer: NodeJS.Timeout | undefined
  /** The worker's last readiness report (plugins/http/readiness.ts, relayed by server.ts). */
  readiness: ReadinessReport | undefined
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
    index, worker: undefined, startedAt: 0, listened: false, everListened: false, failures: 0, bootFailures: 0, restartTimer: undefined, readiness: undefined
  }))
  let shuttingDown = false
  let exitCode = 0
  let opsServer: Server | undefined
  let publicPort = options.publicPort

  function fork (slot: Slot) {
    slot.restartTimer = undefined
    slot.startedAt = Date.now()
    slot.listened = false
    slot.readiness = undefined
    // LEDGER_WORKER tells the worker it is one of several (for its logs); it is not a setting.
    const worker = cluster.fork({ LEDGER_WORKER: String(slot.index + 1), PORT: String(publicPort) })
    slot.worker = worker
    worker.on('message', (message: { type?: unknown, ok?: unknown, checks?: ReadinessReport['checks'] }) => {
      if (message.type === 'ledger:readiness' && typeof message.ok === 'boolean' && message.checks !== undefined) {
        slot.readiness = { ok: message.ok, checks: message.checks }
      }
      // Sent by server.ts once its public port listens: a worker's own sockets (exclusive) raise no cluster
      // 'listening' event in the primary.
      if (message.type === 'ledger:listening' && !slot.listened) {
        slot.listened = true
        slot.everListened = true
        slot.bootFailures = 0
        log.info({ worker: slot.index + 1, workerPid: worker.process.pid }, 'worker listening')
      }
    })
  }

  function finish () {
    if (slots.some((slot) => slot.worker !== undefined)) return
    log.info({ exitCode }, 'all workers exited')
    const exit = () => process.exit(exitCode)
    if (opsServer === undefined) exit()
    else closeOps(opsServer).then(exit, exit)
  }

  cluster.on('exit', (worker, code, signal) => {
    const slot = slots.find((s) => s.worker === worker)
    if (slot === undefined) return
    slot.worker = undefined
    slot.readiness = undefined
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

  if (options.opsPort > 0) opsServer = serveOps(options, log, slots, () => shuttingDown)
  // The workers share the port with each other (SO_REUSEPORT), so none of them can tell a stranger already holds
  // it: the primary checks once, before any of them starts.
  const claimed = REUSE_PORT_SPREADS ? claimPort(options.publicHost, options.publicPort) : Promise.resolve(options.publicPort)
  claimed.then((port) => {
    if (shuttingDown) return
    publicPort = port
    log.info({ workers: options.workers, port }, 'starting workers')
    for (const slot of slots) fork(slot)
  }, (error: NodeJS.ErrnoException) => {
    log.error({ err: { message: error.message, code: error.code }, host: options.publicHost, port: options.publicPort }, 'the public port is not free; stopping')
    shutdown('public port unavailable', 1)
  })
}

/**
 * Readiness: not before every worker has booted once (a primary that said ready with one of its workers up would
 * get the traffic of all of them), then ready while every worker that is up has finished booting and reports ready
 * (a dependency down shows in all of them; a worker being replaced is not counted, the others serve meanwhile),
 * and not while shutting down. Metrics: each worker's /metrics describes that worker only (whichever one the connection landed
 * on), which would make counters jump between scrapes, so the primary asks every worker over IPC and serves the
 * sum (prom-client's AggregatorRegistry; gauges such as the pool size are summed too, process metrics use
 * prom-client's own rules).
 */
function serveOps (options: SupervisorOptions, log: ReturnType<typeof createLogger>, slots: Slot[], shuttingDown: () => boolean): Server {
  const aggregator = new AggregatorRegistry()
  const server = createOpsServer({
    readiness: () => {
      const running = slots.filter((slot) => slot.worker !== undefined && slot.listened)
      const reports = running.map((slot) => slot.readiness)
      const down = (name: 'postgres' | 'redis'): CheckResult =>
        reports.length === 0 || reports.some((report) => report === undefined || report.checks[name] === 'down') ? 'down' : 'ok'
      const checks = { postgres: down('postgres'), redis: down('redis') }
      const booted = slots.every((slot) => slot.everListened)
      const ok = !shuttingDown() && booted && reports.length > 0 && reports.every((report) => report?.ok === true)
      return { ok, checks }
    },
    metrics: async () => ({ contentType: aggregator.contentType, text: await aggregator.clusterMetrics() }),
    metricsToken: options.metricsToken,
    onError: (error) => log.error({ err: { message: error.message } }, 'operations listener failed')
  })
  listenOps(server, options.opsPort, options.opsHost).then(
    () => log.info({ host: options.opsHost, port: options.opsPort }, 'operations listener (health, cluster metrics) listening'),
    (error: Error) => log.error({ err: { message: error.message } }, 'operations listener failed')
  )
  return server
}
