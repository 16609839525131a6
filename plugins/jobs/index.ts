import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { Sql } from '../database/index.ts'
import { JOBS_WAKE_CHANNEL, JobDeferred, nextRetryAt, type Job, type JobHandler, type JobHandlers, type JobResult, type RetryPolicy } from './queue.ts'
import type { Metrics } from '../metrics/index.ts'

/**
 * The job worker: claims due `jobs` rows (sql/009, sql/010, sql/014) and runs the handler registered for their kind.
 *
 * Lanes: every kind belongs to one lane (feed jobs, webhook deliveries), and each lane has its own claim loop and its
 * own number of attempts at once, so one kind of work never waits for capacity another holds: receivers that hang
 * for the whole webhook timeout fill at most the webhook lane, never the feed's. A lane may bring its own claim
 * statement (the webhook lane's is fair across endpoints: sql/functions/claim_webhook_jobs.sql); the default takes
 * the lane's kinds oldest due first.
 *
 * Claiming is one short statement (PgBouncer transaction pooling: no session, no LISTEN/NOTIFY, no transaction
 * held across the work): it picks due rows no other worker is claiming, leases them (run_at = now() + lease,
 * claimed_at = now()) and counts the attempt. The work runs outside any transaction; its result is recorded by a
 * second statement that only applies while this worker still holds the lease (attempts unchanged). A worker killed
 * between the two leaves the row to come due again when the lease ends: retried, never lost. N workers never run
 * one attempt twice: a row is claimable again only after its lease, and the lease (60 s) is far longer than an
 * attempt (a webhook's 10 s).
 *
 * Waking up: API processes publish on a Redis channel after a commit that queued work (wakeWorkers); every worker
 * subscribes and every lane claims at once. The poll is the fallback (Redis down, a message lost, retries coming
 * due): 50 ms after work was found, doubling while idle up to WORKER_POLL_MAX_MS, so an idle lane costs one index
 * probe a second and a busy one never sleeps.
 */
export interface LaneOptions {
  /** The lane's job kinds and their handlers. */
  handlers: JobHandlers
  /** Attempts this lane runs at once in this process. */
  concurrency: number
  /** How the lane picks its due jobs; by default its kinds, oldest due first (claimJobs). */
  claim?: LaneClaim
  /** Runs once the attempts in flight have finished on close (the handlers' pooled sockets, for example). */
  cleanup?: () => void
}

export interface WorkerOptions {
  /**
   * The lanes by name (the `lane` label of the queue metrics). A kind belongs to one lane. Domains usually add theirs
   * with app.jobs.addLane() instead, so that this plugin never needs to know them.
   */
  lanes?: Readonly<Record<string, LaneOptions>>
  /** Run the claim loops (WORKER_ENABLED). Off, runDue() still works: tests drive it for determinism. */
  enabled: boolean
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
   * Claims and runs every job due when called, batch after batch in every lane at once (a `continue` keeps its due
   * time, so a long job runs to its end), until none is left; resolves with how many attempts ran. Retries
   * scheduled meanwhile wait. The attempts go through the same claim, lease and record as the loops'.
   */
  runDue: (scope?: RunScope) => Promise<number>
  /** Ends every lane's idle wait at once (a local enqueue, or the Redis message). */
  wake: () => void
  /** Re-reads the outbox gauges (depth and oldest due age per lane, failed). */
  refreshQueueMetrics: () => Promise<void>
  /** Attempts running now, all lanes together. */
  inFlight: () => number
  /** Adds a lane (a domain's job kinds); only before the app is ready, when the loops start. */
  addLane: (name: string, lane: LaneOptions) => void
}

declare module 'fastify' {
  interface FastifyInstance {
    jobs: Worker
  }
}

/** A claimed job as every lane's claim returns it. */
export interface ClaimedRow {
  id: string
  kind: string
  payload: unknown
  /** Attempts started, the one just claimed included. */
  attempts: number
  created_at: Date
  /** When it was due (its run_at before the lease). */
  due_at: Date
  /** From due to claimed, in seconds. */
  lag_s: number
  /** From queued to claimed, in seconds, when this is the job's first attempt; else null. */
  first_attempt_lag_s: number | null
  /** What the lane's claim read for the attempt beside the job (the handler's `claimed`); absent for most lanes. */
  context?: unknown
}

export interface ClaimRequest {
  kinds: readonly string[]
  limit: number
  leaseMs: number
  /** Due at or before this time (runDue's start), else now. */
  dueBy?: Date | undefined
  matching?: readonly object[] | undefined
}

/** A lane's claim statement: leases up to `limit` due jobs of its kinds and returns them. */
export type LaneClaim = (sql: Sql, request: ClaimRequest) => Promise<ClaimedRow[]>

const MIN_IDLE_MS = 50
const QUEUE_METRICS_EVERY_MS = 5000

/**
 * The default claim: up to `limit` jobs of the given kinds due now (or due by `dueBy`), oldest due first. Only the
 * kinds this worker has handlers for: during a rolling deploy an older worker leaves a new kind to newer ones.
 */
export const claimJobs: LaneClaim = (sql, { kinds, limit, leaseMs, dueBy, matching }) => sql<ClaimedRow[]>`
    with due as (
      select id, run_at, started_at from jobs
       where failed_at is null and run_at <= ${dueBy === undefined ? sql`now()` : sql`${dueBy}`}
         and kind in ${sql(kinds as string[])}
         ${matching === undefined ? sql`` : sql`and exists (select 1 from jsonb_array_elements(${sql.json(matching as never)}) m(fragment) where payload @> m.fragment)`}
       order by run_at, id
       limit ${limit}
       for update skip locked
    )
    update jobs j
       set run_at = now() + ${leaseMs} * interval '1 millisecond', attempts = j.attempts + 1,
           claimed_at = now(), started_at = coalesce(j.started_at, now())
      from due
     where j.id = due.id
    returning j.id::text as id, j.kind, j.payload, j.attempts, j.created_at, due.run_at as due_at,
              extract(epoch from now() - due.run_at)::float8 as lag_s,
              case when due.started_at is null then extract(epoch from now() - j.created_at)::float8 end as first_attempt_lag_s`

const errorText = (error: unknown) => (error instanceof Error ? `${error.name}: ${error.message}` : String(error)).slice(0, 500)

interface Lane {
  name: string
  kinds: readonly string[]
  concurrency: number
  claim: LaneClaim
  cleanup: (() => void) | undefined
  running: Set<Promise<void>>
  wakeUp: (() => void) | undefined
}

async function workerPlugin (app: FastifyInstance, options: WorkerOptions) {
  const sql: Sql = app.db
  const metrics: Metrics = app.metrics
  const log = app.log.child({ component: 'worker' })
  const abort = new AbortController()
  const state = { closing: false }
  let loopsDone: Promise<unknown> | undefined
  let metricsTimer: NodeJS.Timeout | undefined

  const handlers: Record<string, JobHandler<never>> = {}
  const laneOf = new Map<string, string>()
  const lanes: Lane[] = []
  let started = false
  const addLane = (name: string, lane: LaneOptions) => {
    if (started) throw new Error(`lane ${name} added after the worker started`)
    if (lanes.some((existing) => existing.name === name)) throw new Error(`lane ${name} added twice`)
    for (const [kind, handler] of Object.entries(lane.handlers)) {
      if (laneOf.has(kind)) throw new Error(`job kind ${kind} is in two lanes (${laneOf.get(kind)} and ${name})`)
      laneOf.set(kind, name)
      handlers[kind] = handler
    }
    lanes.push({ name, kinds: Object.keys(lane.handlers), concurrency: lane.concurrency, claim: lane.claim ?? claimJobs, cleanup: lane.cleanup, running: new Set(), wakeUp: undefined })
  }
  for (const [name, lane] of Object.entries(options.lanes ?? {})) addLane(name, lane)

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
  // cannot overwrite the result of the one that took the job over. Each one ends the attempt (claimed_at = null).
  const runJob = async (lane: Lane, row: ClaimedRow, onFailure?: RunScope['onFailure']): Promise<void> => {
    metrics.workerLag.observe({ lane: lane.name }, Math.max(0, row.lag_s))
    if (row.first_attempt_lag_s !== null) metrics.jobFirstAttemptLag.observe({ lane: lane.name }, Math.max(0, row.first_attempt_lag_s))
    const handler = handlers[row.kind]
    let retry: { at: Date | null } | undefined
    const retryAt = () => (retry ??= { at: nextRetryAt(options.retry, row.created_at, row.attempts) }).at
    const job: Job = { id: row.id, kind: row.kind, payload: row.payload, attempts: row.attempts - 1 }
    let result: JobResult
    try {
      if (handler === undefined) throw new Error(`no handler for job kind ${row.kind}`)
      // A handler narrows its payload type (JobHandler<Payload>); the payload is whatever its own kind enqueued.
      result = await (handler as JobHandler<unknown>)(job, { sql, log, signal: abort.signal, retryAt, claimed: row.context ?? undefined })
    } catch (error) {
      if (!(error instanceof JobDeferred)) onFailure?.(error, job)
      if (error instanceof JobDeferred) {
        return record(row, 'deferred', sql`
          update jobs set run_at = now() + ${error.delayMs} * interval '1 millisecond', attempts = attempts - 1, claimed_at = null
           where id = ${row.id} and attempts = ${row.attempts}`)
      }
      const at = retryAt()
      if (at === null) {
        log.error({ err: error, jobId: row.id, kind: row.kind, attempts: row.attempts }, 'job failed for good: retry window spent')
        return record(row, 'failed', sql`
          update jobs set failed_at = now(), last_error = ${errorText(error)}, claimed_at = null
           where id = ${row.id} and attempts = ${row.attempts}`)
      }
      log.info({ err: error, jobId: row.id, kind: row.kind, attempts: row.attempts, retryAt: at }, 'job attempt failed; retrying')
      return record(row, 'retry', sql`
        update jobs set run_at = ${at}, last_error = ${errorText(error)}, claimed_at = null
         where id = ${row.id} and attempts = ${row.attempts}`)
    }
    if (result.status === 'done') {
      if (result.removed === true) return metrics.jobAttempts.inc({ kind: row.kind, outcome: 'done' })
      return record(row, 'done', sql`delete from jobs where id = ${row.id} and attempts = ${row.attempts}`)
    }
    return record(row, 'continue', sql`
      update jobs set payload = ${sql.json(result.payload as never)}, run_at = ${row.due_at}, attempts = 0, last_error = null, claimed_at = null
       where id = ${row.id} and attempts = ${row.attempts}`)
  }

  const track = (lane: Lane, promise: Promise<void>) => {
    lane.running.add(promise)
    promise.finally(() => lane.running.delete(promise)).catch(() => {})
    return promise
  }

  const claim = async (lane: Lane, limit: number, dueBy?: Date, scope: RunScope = {}) => {
    const kinds = scope.kinds === undefined ? lane.kinds : lane.kinds.filter((kind) => scope.kinds!.includes(kind))
    if (kinds.length === 0 || limit <= 0) return []
    return await lane.claim(sql, { kinds, limit, leaseMs: options.leaseMs, dueBy, matching: scope.matching })
  }

  const wake = () => {
    for (const lane of lanes) {
      const resolve = lane.wakeUp
      lane.wakeUp = undefined
      resolve?.()
    }
  }

  const idle = (lane: Lane, ms: number) => new Promise<void>((resolve) => {
    const timer = setTimeout(() => { lane.wakeUp = undefined; resolve() }, ms)
    lane.wakeUp = () => { clearTimeout(timer); resolve() }
  })

  const loop = async (lane: Lane) => {
    let idleMs = MIN_IDLE_MS
    while (!state.closing) {
      const free = lane.concurrency - lane.running.size
      if (free <= 0) {
        await Promise.race(lane.running)
        continue
      }
      let claimed: ClaimedRow[] = []
      try {
        claimed = await claim(lane, free)
      } catch (error) {
        metrics.dependencyErrors.inc({ dependency: 'postgres', operation: 'job_claim' })
        log.warn({ err: error, lane: lane.name }, 'job claim failed')
        idleMs = options.pollMaxMs
      }
      for (const row of claimed) track(lane, runJob(lane, row))
      if (claimed.length === free) continue
      if (claimed.length > 0) idleMs = MIN_IDLE_MS
      if (state.closing) break
      await idle(lane, idleMs)
      idleMs = Math.min(idleMs * 2, options.pollMaxMs)
    }
  }

  const refreshQueueMetrics = async () => {
    const rows = await sql<{ kind: string | null, due: number, oldest_s: number | null, failed: number }[]>`
      select kind, count(*) filter (where failed_at is null and run_at <= now())::int as due,
             extract(epoch from now() - min(run_at) filter (where failed_at is null and run_at <= now()))::float8 as oldest_s,
             count(*) filter (where failed_at is not null)::int as failed
        from jobs
       group by kind`
    const due = new Map(lanes.map((lane) => [lane.name, { count: 0, oldestS: 0 }]))
    let failed = 0
    for (const row of rows) {
      failed += row.failed
      const lane = due.get(laneOf.get(row.kind ?? '') ?? '')
      if (lane === undefined) continue
      lane.count += row.due
      lane.oldestS = Math.max(lane.oldestS, row.oldest_s ?? 0)
    }
    for (const [lane, { count, oldestS }] of due) {
      metrics.jobsDue.set({ lane }, count)
      metrics.jobsOldestDueAge.set({ lane }, Math.max(0, oldestS))
    }
    metrics.jobsFailed.set(failed)
  }

  const worker: Worker = {
    async runDue (scope = {}) {
      const now = new Date()
      const budget = { left: scope.limit ?? Infinity, ran: 0 }
      const drain = async (lane: Lane) => {
        for (;;) {
          const take = Math.min(lane.concurrency, budget.left)
          if (take <= 0) return
          budget.left -= take
          const claimed = await claim(lane, take, now, scope)
          budget.left += take - claimed.length
          if (claimed.length === 0) return
          await Promise.all(claimed.map((row) => track(lane, runJob(lane, row, scope.onFailure))))
          budget.ran += claimed.length
        }
      }
      const wanted = lanes.filter((lane) => scope.kinds === undefined || lane.kinds.some((kind) => scope.kinds!.includes(kind)))
      // Lanes drain side by side, as the loops run; with a limit, one after the other, so that one lane's
      // reservation never leaves another with nothing.
      if (scope.limit === undefined) await Promise.all(wanted.map(drain))
      else for (const lane of wanted) await drain(lane)
      return budget.ran
    },
    wake,
    refreshQueueMetrics,
    inFlight: () => lanes.reduce((sum, lane) => sum + lane.running.size, 0),
    addLane
  }
  app.decorate('jobs', worker)

  let subscriber: { quit: () => Promise<unknown>, disconnect: () => void } | undefined
  app.addHook('onReady', async () => {
    started = true
    if (!options.enabled) return
    if (options.subscribe === true) {
      // A connection of its own: a subscribed connection can run nothing else.
      const connection = app.redis.duplicate()
      subscriber = connection
      connection.on('error', (error: unknown) => log.debug({ err: error }, 'worker wake-up subscription error'))
      connection.on('message', () => wake())
      // The new connection is not ready yet and commands are not queued offline (plugins/redis/index.ts): subscribe once
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
    loopsDone = Promise.all(lanes.map((lane) => loop(lane).catch((error: unknown) => log.error({ err: error, lane: lane.name }, 'worker loop stopped'))))
  })

  // preClose, while the database pool is still open: no new claims, then every attempt in flight finishes and is
  // recorded (SIGTERM loses nothing and repeats nothing it could avoid). Handlers see the abort signal and
  // stop long jobs at a safe point.
  app.addHook('preClose', async () => {
    state.closing = true
    clearTimeout(metricsTimer)
    wake()
    await loopsDone
    abort.abort()
    await Promise.allSettled(lanes.flatMap((lane) => [...lane.running]))
    for (const lane of lanes) lane.cleanup?.()
    options.cleanup?.()
    if (subscriber !== undefined) await subscriber.quit().catch(() => subscriber?.disconnect())
  })
}

/**
 * The plugin's options from the configuration. Lane concurrency may exceed DATABASE_POOL_MAX: the attempts'
 * statements then wait in postgres.js's queue for a connection of their own (plugins/database/index.ts,
 * withoutPipelining); webhook attempts hold none while waiting for a receiver. The lanes are the domains' to add.
 */
export const autoConfig = (app: FastifyInstance): WorkerOptions => {
  const config = app.config
  return {
    enabled: config.WORKER_ENABLED,
    leaseMs: config.WORKER_LEASE_S * 1000,
    pollMaxMs: config.WORKER_POLL_MAX_MS,
    retry: { baseMs: config.JOB_RETRY_BASE_MS, maxDelayMs: config.JOB_RETRY_MAX_DELAY_S * 1000, windowMs: config.JOB_RETRY_WINDOW_S * 1000 },
    subscribe: true
  }
}

export default fp(workerPlugin, { name: 'jobs', dependencies: ['database', 'metrics'] })
