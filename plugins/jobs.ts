import type { FastifyBaseLogger } from 'fastify'
import type { Sql, TransactionSql } from './database.ts'

/**
 * The job model the worker runs: a `jobs` row (sql/009_jobs.sql) names a kind and carries a JSON payload; the worker
 * looks the kind up in the handlers it was given and runs it. Handlers live beside the resource they serve
 * (`routes/<resource>/jobs.ts`) and are collected by the app factory and the worker entry.
 *
 * Delivery is at least once: a handler may run again for the same job (a worker killed after the work and before
 * the job row is deleted), so every handler must be idempotent.
 */
export interface Job<Payload = unknown> {
  id: string
  kind: string
  payload: Payload
  /** Failed runs so far (0 on the first run). */
  attempts: number
}

export interface JobContext {
  /** The API role's pool, through PgBouncer: one statement or one `sql.begin` per step, never a session. */
  sql: Sql
  log: FastifyBaseLogger
  /** Aborted when the process is closing: stop at the next safe point and return `continue`. */
  signal: AbortSignal
}

/**
 * `done`: the job is finished and removed. `continue`: there is more to do; the payload given (for example a cursor)
 * replaces the stored one and the job runs again at once, so a long job (a fan-out to 10,000 feeds) runs in bounded
 * steps and resumes where it stopped if the worker dies. A thrown error is a failed attempt, retried with backoff.
 */
export type JobResult = { status: 'done' } | { status: 'continue', payload: unknown }

export type JobHandler<Payload = unknown> = (job: Job<Payload>, context: JobContext) => Promise<JobResult>

export type JobHandlers = Readonly<Record<string, JobHandler<never>>>

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
