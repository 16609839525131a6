import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { Sql } from './database.ts'
import { JOBS_WAKE_CHANNEL, JobDeferred, nextRetryAt, type Job, type JobHandler, type JobHandlers, type JobResult, type RetryPolicy } from './jobs.ts'
import type { Metrics } from './metrics.ts'

/**
 * The job worker: claims due `jobs` rows (sql/009, sql/010) and runs the handler registered for their kind.
 *
 * Claiming is one short statement (PgBouncer transaction pooling: no session, no LISTEN/NOTIFY, no transaction
 * held across the work): FOR UPDATE SKIP LOCKED picks due rows no other worker is claiming, and the same statement
 * leases them (run_at = now() + lease) and counts the attempt. The work runs outside any transaction; its result is
 * recorded by a second statement that only applies while this worker still holds the lease (attempts unchanged).
 * A worker killed between the two leaves the row to come due again when the lease ends: retried, never lost. N
 * workers never run one attempt twice: a row is claimable again only after its lease, and the lease (60 s) is far
 * longer than an attempt (a webhook's 10 s).
 *
 * Waking up: API processes publish on a Redis channel after a commit that queued work (wakeWorkers); every worker
 * subscribes and claims at once. The poll is the fallback (Redis down, a message lost, retries coming due): 50 ms
 * after work was found, doubling while idle up to WORKER_POLL_MAX_MS, so an idle worker costs one index probe a
 * second and a busy one never sleeps.
 */
export interface WorkerOptions {
  handlers: JobHandlers
  /** Run the claim loop (WORKER_ENABLED). Off, runDue() still works: tests drive it for determinism. */
  enabled: boolean
  concurrency: number
  leaseMs: number
  pollMaxMs: number
  retry: RetryPolicy
  /** Subscribe to the wake-up channel (needs app.redis). */
  subscribe?: boolean
  /** Runs once the attempts in flight have finished on close (handlers' pooled sockets, for example). */
  cleanup?: () => void
}

/** A subset of the due jobs for runDue: a test's own jobs while other test files share the queue, an operator's run. */
export interface RunScope {
  /** Only these kinds (of those this worker has handlers for). */
  kinds?: readonly string[]
  /** Only jobs whose payload contains one of these JSON fragments (`payload @> fragment`). */
  matching?: readonly object[]
  /** Stop after this many attempts (a test stopping a long job part-way). */
  limit?: number
  /** Told of every failed attempt (the error the handler threw), besides the log. */
  onFailure?: (error: unknown, job: Job) => void
}

export interface Worker {
  /**
   * Claims and runs every job due when called, batch after batch (a `continue` keeps its due time, so a long job
   * runs to its end), until none is left; resolves with how many attempts ran. Retries scheduled meanwhile wait.
   * The attempts go through the same claim, lease and record as the loop's.
   */
  runDue: (scope?: RunScope) => Promise<number>
  /** Ends the idle wait at once (a local enqueue, or the Redis message). */
  wake: () => void
  /** Re-reads the outbox gauges (depth, oldest due age, failed). */
  refreshQueueMetrics: () => Promise<void>
  /** Attempts running now. */
  inFlight: () => number
}

declare module 'fastify' {
  interface FastifyInstance {
    worker: Worker
  }
}

interface ClaimedRow {
  id: string
  kind: string
  payload: unknown
  attempts: number
  created_at: Date
  due_at: Date
  lag_s: number
}

const MIN_IDLE_MS = 50
const QUEUE_METRICS_EVERY_MS = 5000

/**
 * Leases up to `limit` jobs due now (or due by `dueBy`: runDue's bound, so retries coming due meanwhile wait), of
 * the kinds this worker has handlers for: during a rolling deploy an older worker leaves a new kind to newer ones.
 */
export function claimJobs (sql: Sql, kinds: readonly string[], limit: number, leaseMs: number, dueBy?: Date, matching?: readonly object[]) {
  return sql<ClaimedRow[]>`
    with due as (
      select id, run_at from jobs
       where failed_at is null and run_at <= ${dueBy === undefined ? sql`now()` : sql`${dueBy}`}
         and kind in ${sql(kinds as string[])}
         ${matching === undefined ? sql`` : sql`and exists (select 1 from jsonb_array_elements(${sql.json(matching as never)}) m(fragment) where payload @> m.fragment)`}
       order by run_at, id
       limit ${limit}
       for update skip locked
    )
    update jobs j
       set run_at = now() + ${leaseMs} * interval '1 millisecond', attempts = j.attempts + 1
      from due
     where j.id = due.id
    returning j.id::text as id, j.kind, j.payload, j.attempts, j.created_at, due.run_at as due_at,
              extract(epoch from now() - due.run_at)::float8 as lag_s`
}

const errorText = (error: unknown) => (error instanceof Error ? `${error.name}: ${error.message}` : String(error)).slice(0, 500)

async function workerPlugin (app: FastifyInstance, options: WorkerOptions) {
  const sql: Sql = app.db
  const metrics: Metrics = app.metrics
  const log = app.log.child({ component: 'worker' })
  const abort = new AbortController()
  const running = new Set<Promise<void>>()
  const state = { closing: false }
  let wakeUp: (() => void) | undefined
  let loopDone: Promise<void> | undefined
  let metricsTimer: NodeJS.Timeout | undefined

  const record = async (job: ClaimedRow, outcome: string, statement: Promise<{ count: number }>) => {
    try {
      const { count } = await statement
      // Another worker took the job over after this one's lease ran out: its result stands, not ours.
      if (count === 0) log.warn({ jobId: job.id, kind: job.kind, attempts: job.attempts, outcome }, 'job result not recorded: the lease was lost')
      metrics.jobAttempts.inc({ kind: job.kind, outcome })
    } catch (error) {
      // The lease runs out and the job is claimed again: at least once, as promised.
      metrics.jobAttempts.inc({ kind: job.kind, outcome: 'error' })
      metrics.dependencyErrors.inc({ dependency: 'postgres', operation: 'job_record' })
      log.warn({ err: error, jobId: job.id, kind: job.kind }, 'job result not recorded; it runs again after its lease')
    }
  }

  // Every update names the attempt it records (attempts = the claimed value): a worker that outlived its lease
  // cannot overwrite the result of the one that took the job over.
  const runJob = async (row: ClaimedRow, onFailure?: RunScope['onFailure']): Promise<void> => {
    metrics.workerLag.observe(Math.max(0, row.lag_s))
    const handler = options.handlers[row.kind]
    let retry: { at: Date | null } | undefined
    const retryAt = () => (retry ??= { at: nextRetryAt(options.retry, row.created_at, row.attempts) }).at
    const job: Job = { id: row.id, kind: row.kind, payload: row.payload, attempts: row.attempts - 1 }
    let result: JobResult
    try {
      if (handler === undefined) throw new Error(`no handler for job kind ${row.kind}`)
      // A handler narrows its payload type (JobHandler<Payload>); the payload is whatever its own kind enqueued.
      result = await (handler as JobHandler<unknown>)(job, { sql, log, signal: abort.signal, retryAt })
    } catch (error) {
      if (!(error instanceof JobDeferred)) onFailure?.(error, job)
      if (error instanceof JobDeferred) {
        return record(row, 'deferred', sql`
          update jobs set run_at = now() + ${error.delayMs} * interval '1 millisecond', attempts = attempts - 1
           where id = ${row.id} and attempts = ${row.attempts}`)
      }
      const at = retryAt()
      if (at === null) {
        log.error({ err: error, jobId: row.id, kind: row.kind, attempts: row.attempts }, 'job failed for good: retry window spent')
        return record(row, 'failed', sql`
          update jobs set failed_at = now(), last_error = ${errorText(error)}
           where id = ${row.id} and attempts = ${row.attempts}`)
      }
      log.info({ err: error, jobId: row.id, kind: row.kind, attempts: row.attempts, retryAt: at }, 'job attempt failed; retrying')
      return record(row, 'retry', sql`
        update jobs set run_at = ${at}, last_error = ${errorText(error)}
         where id = ${row.id} and attempts = ${row.attempts}`)
    }
    if (result.status === 'done') {
      return record(row, 'done', sql`delete from jobs where id = ${row.id} and attempts = ${row.attempts}`)
    }
    return record(row, 'continue', sql`
      update jobs set payload = ${sql.json(result.payload as never)}, run_at = ${row.due_at}, attempts = 0, last_error = null
       where id = ${row.id} and attempts = ${row.attempts}`)
  }

  const track = (promise: Promise<void>) => {
    running.add(promise)
    promise.finally(() => running.delete(promise)).catch(() => {})
    return promise
  }

  const kinds = Object.keys(options.handlers)
  const claim = async (limit: number, dueBy?: Date, scope: RunScope = {}) => {
    const wanted = scope.kinds === undefined ? kinds : kinds.filter((kind) => scope.kinds!.includes(kind))
    return wanted.length === 0 || limit <= 0 ? [] : await claimJobs(sql, wanted, limit, options.leaseMs, dueBy, scope.matching)
  }

  const wake = () => {
    const resolve = wakeUp
    wakeUp = undefined
    resolve?.()
  }

  const idle = (ms: number) => new Promise<void>((resolve) => {
    const timer = setTimeout(() => { wakeUp = undefined; resolve() }, ms)
    wakeUp = () => { clearTimeout(timer); resolve() }
  })

  const loop = async () => {
    let idleMs = MIN_IDLE_MS
    while (!state.closing) {
      const free = options.concurrency - running.size
      if (free <= 0) {
        await Promise.race(running)
        continue
      }
      let claimed: ClaimedRow[] = []
      try {
        claimed = await claim(free)
      } catch (error) {
        metrics.dependencyErrors.inc({ dependency: 'postgres', operation: 'job_claim' })
        log.warn({ err: error }, 'job claim failed')
        idleMs = options.pollMaxMs
      }
      for (const row of claimed) track(runJob(row))
      if (claimed.length === free) continue
      if (claimed.length > 0) idleMs = MIN_IDLE_MS
      if (state.closing) break
      await idle(idleMs)
      idleMs = Math.min(idleMs * 2, options.pollMaxMs)
    }
  }

  const refreshQueueMetrics = async () => {
    const [row] = await sql<{ due: number, oldest_s: number | null, failed: number }[]>`
      select count(*) filter (where failed_at is null and run_at <= now())::int as due,
             extract(epoch from now() - min(run_at) filter (where failed_at is null and run_at <= now()))::float8 as oldest_s,
             count(*) filter (where failed_at is not null)::int as failed
        from jobs`
    metrics.jobsDue.set(row?.due ?? 0)
    metrics.jobsOldestDueAge.set(Math.max(0, row?.oldest_s ?? 0))
    metrics.jobsFailed.set(row?.failed ?? 0)
  }

  const worker: Worker = {
    async runDue (scope = {}) {
      const now = new Date()
      const limit = scope.limit ?? Infinity
      let ran = 0
      for (;;) {
        const claimed = await claim(Math.min(options.concurrency, limit - ran), now, scope)
        if (claimed.length === 0) return ran
        await Promise.all(claimed.map((row) => track(runJob(row, scope.onFailure))))
        ran += claimed.length
      }
    },
    wake,
    refreshQueueMetrics,
    inFlight: () => running.size
  }
  app.decorate('worker', worker)

  let subscriber: { quit: () => Promise<unknown>, disconnect: () => void } | undefined
  app.addHook('onReady', async () => {
    if (!options.enabled) return
    if (options.subscribe === true) {
      // A connection of its own: a subscribed connection can run nothing else.
      const connection = app.redis.duplicate()
      subscriber = connection
      connection.on('error', (error: unknown) => log.debug({ err: error }, 'worker wake-up subscription error'))
      connection.on('message', () => wake())
      // The new connection is not ready yet and commands are not queued offline (plugins/redis.ts): subscribe once
      // it is; ioredis subscribes again by itself after a reconnect.
      const subscribe = () => {
        connection.subscribe(JOBS_WAKE_CHANNEL).catch((error: unknown) => log.warn({ err: error }, 'worker wake-up subscription failed; polling only'))
      }
      if (connection.status === 'ready') subscribe()
      else connection.once('ready', subscribe)
    }
    const refresh = () => {
      refreshQueueMetrics().catch((error: unknown) => log.debug({ err: error }, 'queue metrics not refreshed'))
      metricsTimer = setTimeout(refresh, QUEUE_METRICS_EVERY_MS)
      metricsTimer.unref()
    }
    refresh()
    loopDone = loop().catch((error: unknown) => log.error({ err: error }, 'worker loop stopped'))
  })

  // preClose, while the database pool is still open: no new claims, then every attempt in flight finishes and is
  // recorded (SIGTERM loses nothing and repeats nothing it could avoid). Handlers see the abort signal and
  // stop long jobs at a safe point.
  app.addHook('preClose', async () => {
    state.closing = true
    clearTimeout(metricsTimer)
    wake()
    await loopDone
    abort.abort()
    await Promise.allSettled([...running])
    options.cleanup?.()
    if (subscriber !== undefined) await subscriber.quit().catch(() => subscriber?.disconnect())
  })
}

export default fp(workerPlugin, { name: 'worker', dependencies: ['database', 'metrics'] })
