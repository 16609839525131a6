import type { FastifyBaseLogger } from 'fastify'
import type { Sql, TransactionSql } from '../database/index.ts'

/**
 * The job model the worker runs: a `jobs` row (sql/009_jobs.sql) names a kind and carries a JSON payload; the worker
 * looks the kind up in the handlers it was given and runs it. Handlers live in the domain they serve
 * (`routes/<domain>/*-jobs.ts`), whose index.ts adds them as a lane (app.jobs.addLane).
 *
 * Delivery is at least once: a handler may run again for the same job (a worker killed after the work and before
 * the job row is deleted), so every handler must be idempotent.
 */
export interface Job<Payload = unknown> {
  id: string
  kind: string
  payload: Payload
  /** Runs started before this one (0 on the first run); one cut short by a dead worker counts too. */
  attempts: number
}

export interface JobContext {
  /** The API role's pool, through PgBouncer: one statement or one `sql.begin` per step, never a session. */
  sql: Sql
  log: FastifyBaseLogger
  /** Aborted when the process is closing: stop at the next safe point and return `continue`. */
  signal: AbortSignal
  /**
   * When this job runs again if this attempt throws, or null when this is its last attempt (the retry window is
   * spent: a throw marks it failed). Computed at the first call (call it when the attempt has failed: the backoff
   * counts from then) and the same afterwards: a handler that keeps its own history (webhook deliveries) records
   * the very time the worker then schedules. Optional so that a handler can be called directly (a test) with the
   * three fields above; the worker always passes it.
   */
  retryAt?: () => Date | null
  /**
   * What the lane's claim read for this attempt in the same statement (the webhook lane: what the attempt sends),
   * so the handler need not read it again; undefined when the claim read nothing for it.
   */
  claimed?: unknown
}

/**
 * `done`: the job is finished and removed (`removed`: already, by the handler's own last statement, which checked the
 * lease as the worker would, `attempts` as claimed; the worker writes nothing more). `continue`: there is more to
 * do; the payload given (for example a cursor)
 * replaces the stored one and the job runs again at once (keeping its place in the queue), so a long job (a fan-out to 10,000 feeds) runs in bounded
 * steps and resumes where it stopped if the worker dies. A thrown error is a failed attempt, retried with backoff.
 */
export type JobResult = { status: 'done', removed?: boolean } | { status: 'continue', payload: unknown }

export type JobHandler<Payload = unknown> = (job: Job<Payload>, context: JobContext) => Promise<JobResult>

export type JobHandlers = Readonly<Record<string, JobHandler<never>>>

/**
 * Thrown by a handler that cannot start now for a reason that is not the job's fault (a resource it needs is busy):
 * the job is put back for `delayMs` and the attempt is not counted.
 */
export class JobDeferred extends Error {
  override name = 'JobDeferred'
  readonly delayMs: number
  constructor (delayMs: number) {
    super(`deferred for ${delayMs} ms`)
    this.delayMs = delayMs
  }
}

export interface RetryPolicy {
  /** The first retry's delay; each next one doubles. */
  baseMs: number
  maxDelayMs: number
  /** How long after it was queued a job is still retried. */
  windowMs: number
}

/**
 * When a job that has started `attempts` runs (this one included) runs next if this one fails, or null when the
 * window is spent. Exponential with jitter (each delay drawn in [half, whole] of its step, so retries of many jobs
 * that failed together spread out), never past the window's end, so one attempt is made at the end of the window.
 */
export function nextRetryAt (policy: RetryPolicy, queuedAt: Date, attempts: number, now = Date.now(), random = Math.random): Date | null {
  const end = queuedAt.getTime() + policy.windowMs
  if (now >= end) return null
  const step = Math.min(policy.baseMs * 2 ** Math.min(Math.max(attempts - 1, 0), 30), policy.maxDelayMs)
  const delay = step / 2 + random() * step / 2
  return new Date(Math.min(now + delay, end))
}

/** The Redis channel that wakes idle workers when a commit queued work (best effort: they also poll). */
export const JOBS_WAKE_CHANNEL = 'ledger:jobs:wake'

interface WakePublisher { publish: (channel: string, message: string) => Promise<unknown> }

/** Clients with a wake-up already due to be published at the end of this turn of the event loop. */
const wakeDue = new WeakSet<WakePublisher>()

/**
 * Wakes the workers after the transaction that queued jobs has committed (never before: a woken worker must see
 * the rows). Best effort, never awaited by a request: a lost message costs at most one poll interval.
 * Commits that land in the same turn of the event loop share one message: a woken worker claims everything due, so
 * more would only cost Redis a command each and every subscribed worker a wake-up each.
 */
export function wakeWorkers (redis: WakePublisher, log: FastifyBaseLogger): void {
  if (wakeDue.has(redis)) return
  wakeDue.add(redis)
  setImmediate(() => {
    wakeDue.delete(redis)
    Promise.resolve().then(() => redis.publish(JOBS_WAKE_CHANNEL, '1'))
      .catch((error: unknown) => log.debug({ err: error }, 'worker wake-up not published'))
  })
}

/**
 * Queues a job. Pass the transaction (`sql.begin`'s argument) that writes the data the job is about, so both commit
 * or neither does.
 */
export async function enqueueJob (sql: Sql | TransactionSql, kind: string, payload: unknown, runAt?: Date): Promise<string> {
  const [row] = await sql<{ id: string }[]>`
    insert into jobs (kind, payload, run_at)
    values (${kind}, ${sql.json(payload as never)}, coalesce(${runAt ?? null}::timestamptz, now()))
    returning id`
  return row!.id
}
