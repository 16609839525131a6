import { randomBytes } from 'node:crypto'
import type { Sql, TransactionSql } from '../../plugins/database/index.ts'
import type { ClaimedRow, LaneClaim } from '../../plugins/jobs/index.ts'
import type { TransactionRow } from '../ledger/index.ts'
import { MAX_ENDPOINTS_PER_PRINCIPAL, type WebhookDelivery, type WebhookEndpoint, type WebhookEventType } from './schemas.ts'

// Endpoints

export interface Principal {
  kind: 'user' | 'client'
  id: string
}

interface EndpointRow {
  id: string
  url: string
  events: string[]
  created_at: Date
  disabled_at: Date | null
  consecutive_failures: number
  failing_since: Date | null
}

const toEndpoint = (row: EndpointRow): WebhookEndpoint => ({
  id: row.id,
  url: row.url,
  events: row.events,
  status: row.disabled_at === null ? 'enabled' : 'disabled',
  consecutiveFailures: row.consecutive_failures,
  failingSince: row.failing_since?.toISOString() ?? null,
  disabledAt: row.disabled_at?.toISOString() ?? null,
  createdAt: row.created_at.toISOString()
})

const endpointColumns = (sql: Sql | TransactionSql) => sql`id, url, to_json(events) as events, created_at, disabled_at, consecutive_failures, failing_since`

/** `whsec_` + base64 of 32 random bytes (Standard Webhooks' secret form; the bytes are the HMAC key). */
export const newWebhookSecret = () => `whsec_${randomBytes(32).toString('base64')}`

/**
 * Registers an endpoint unless the principal has MAX_ENDPOINTS_PER_PRINCIPAL already: a transaction-scoped
 * advisory lock per principal serializes concurrent registrations (safe under PgBouncer transaction pooling), so
 * ten racing requests cannot make eleven endpoints. Null when the limit is reached.
 */
// postgres.js runs without fetch_types (plugins/database/index.ts): text[] goes in as its literal (the event names are a
// fixed enum of plain words) and comes back as JSON.
export async function createEndpoint (sql: Sql, principal: Principal, url: string, events: readonly WebhookEventType[]) {
  const secret = newWebhookSecret()
  return await sql.begin(async (tx) => {
    await tx`select pg_advisory_xact_lock(hashtextextended(${`webhook_endpoints:${principal.id}`}, 0))`
    const [row] = await tx<EndpointRow[]>`
      insert into webhook_endpoints (principal_kind, principal_id, url, events, secret)
      select ${principal.kind}, ${principal.id}, ${url}, ${`{${events.join(',')}}`}::text[], ${secret}
       where (select count(*) from webhook_endpoints where principal_id = ${principal.id}) < ${MAX_ENDPOINTS_PER_PRINCIPAL}
      returning ${endpointColumns(tx)}`
    return row === undefined ? null : { ...toEndpoint(row), secret }
  })
}

export async function listEndpoints (sql: Sql, principal: Principal): Promise<WebhookEndpoint[]> {
  const rows = await sql<EndpointRow[]>`
    select ${endpointColumns(sql)} from webhook_endpoints
     where principal_id = ${principal.id} and principal_kind = ${principal.kind}
     order by created_at, id`
  return rows.map(toEndpoint)
}

/**
 * Deletes the caller's endpoint, its deliveries (the foreign key) and its queued jobs. An attempt in flight finishes,
 * finds no delivery and records nothing.
 */
export async function deleteEndpoint (sql: Sql, principal: Principal, id: string): Promise<boolean> {
  const rows = await sql`
    with gone as (
      delete from webhook_endpoints where id = ${id} and principal_id = ${principal.id} and principal_kind = ${principal.kind}
      returning id
    ), queued as (
      delete from jobs where endpoint_id in (select id from gone) and not (claimed_at is not null and run_at > now())
    )
    select id from gone`
  return rows.length === 1
}

/**
 * Enables or disables the caller's endpoint; null when it is not theirs. Disabling fails its pending deliveries and
 * drops their jobs (disable_webhook_endpoint(), as the worker does after WEBHOOK_DISABLE_AFTER_H of failures);
 * enabling clears the run of failures, so the health clock starts again, and the next event is delivered.
 */
export async function setEndpointEnabled (sql: Sql, principal: Principal, id: string, enabled: boolean): Promise<WebhookEndpoint | null> {
  const owned = () => sql`id = ${id} and principal_id = ${principal.id} and principal_kind = ${principal.kind}`
  if (enabled) {
    const [row] = await sql<EndpointRow[]>`
      update webhook_endpoints set disabled_at = null, consecutive_failures = 0, failing_since = null
       where ${owned()}
      returning ${endpointColumns(sql)}`
    return row === undefined ? null : toEndpoint(row)
  }
  // The function's writes are not visible to the statement that calls it: the endpoint is read by the next one.
  const disabled = await sql`select disable_webhook_endpoint(id) from webhook_endpoints where ${owned()}`
  if (disabled.length === 0) return null
  const [row] = await sql<EndpointRow[]>`select ${endpointColumns(sql)} from webhook_endpoints where ${owned()}`
  return row === undefined ? null : toEndpoint(row)
}

export async function endpointExists (sql: Sql, principal: Principal, id: string): Promise<boolean> {
  const rows = await sql`
    select 1 from webhook_endpoints where id = ${id} and principal_id = ${principal.id} and principal_kind = ${principal.kind}`
  return rows.length === 1
}

// Deliveries

interface DeliveryRow {
  id: string
  event_id: string
  type: string
  transaction_id: string
  status: WebhookDelivery['status']
  attempts: number
  last_status_code: number | null
  next_attempt_at: Date | null
  created_at: Date
}

export const toDelivery = (row: DeliveryRow): WebhookDelivery => ({
  eventId: row.event_id,
  type: row.type,
  transactionId: row.transaction_id,
  status: row.status,
  attempts: row.attempts,
  lastStatusCode: row.last_status_code,
  nextAttemptAt: row.status === 'pending' && row.next_attempt_at !== null ? row.next_attempt_at.toISOString() : null,
  createdAt: row.created_at.toISOString()
})

/**
 * An endpoint's deliveries, newest first, plus one look-ahead row (cursors.page): one range scan of its index. An
 * attempt counts from when it starts: the delivery row is written once per attempt, with its outcome, and an
 * attempt still running (or cut short by a dead worker, until its job runs again) is read from its job row, claimed
 * for it with the attempt counted (jobs_in_flight_idx: only the endpoint's claimed jobs, a handful). While it runs
 * there is no next attempt.
 */
export function deliveriesPageQuery (sql: Sql, endpointId: string, limit: number, before?: string) {
  return sql<DeliveryRow[]>`
    select d.id, d.event_id, d.type, d.transaction_id, d.status,
           greatest(d.attempts, coalesce(j.attempts, 0)) as attempts, d.last_status_code,
           case when j.attempts is null then d.next_attempt_at end as next_attempt_at, d.created_at
      from webhook_deliveries d
      left join lateral (
        select max(f.attempts) as attempts from jobs f
         where d.status = 'pending' and f.endpoint_id = d.endpoint_id and f.claimed_at is not null
           and f.payload->>'deliveryId' = d.id::text
      ) j on true
     where d.endpoint_id = ${endpointId}
       ${before === undefined ? sql`` : sql`and d.id < ${before}`}
     order by d.id desc
     limit ${limit + 1}`
}

/** Finished deliveries past the retention window, oldest first, one bounded batch (plugins/housekeeping/index.ts). */
export async function purgeDeliveries (sql: Sql, retentionS: number, batch: number): Promise<number> {
  const rows = await sql`
    delete from webhook_deliveries
     where id in (
       select id from webhook_deliveries
        where status <> 'pending' and created_at < now() - ${retentionS} * interval '1 second'
        order by created_at
        limit ${batch}
        for update skip locked)
    returning 1`
  return rows.length
}

// Attempts: the lane's claim, what an attempt sends, its outcome

/**
 * The webhook lane's claim (sql/functions/claim_webhook_jobs.sql): round-robin across endpoints, first attempts
 * ahead of retries, at most `endpointConcurrency` attempts in flight per endpoint across every worker process. One
 * slow, hanging or failing endpoint holds at most its own share; everyone else's first attempts take the next free
 * slots. The claim counts each attempt on its job row, which the deliveries list reads while the attempt runs.
 */
export function claimWebhookJobs (endpointConcurrency: number): LaneClaim {
  return (sql, { limit, leaseMs, dueBy, matching }) => sql<ClaimedRow[]>`
    select id, kind, payload, attempts, created_at, due_at, lag_s, first_attempt_lag_s, context
      from claim_webhook_jobs(${limit}::int, ${leaseMs}::int, ${endpointConcurrency}::int, ${dueBy ?? null}::timestamptz,
                              ${matching === undefined ? null : sql.json(matching as never)}::jsonb)`
}

/** What one attempt sends: the delivery, its endpoint and its transaction (`t_id`: the transaction's id). */
export interface AttemptRow extends Omit<TransactionRow, 'id'> {
  id: string
  event_id: string
  type: string
  endpoint_id: string
  url: string
  secret: string
  t_id: string
}

/**
 * What an attempt sends: the delivery (its attempt counted from the lane's claim), its endpoint's URL and
 * secret, and its transaction. Undefined when there is nothing to send: the delivery is gone or final, or its
 * endpoint is disabled (see failIfEndpointDisabled).
 */
export async function attemptTarget (sql: Sql, deliveryId: string): Promise<AttemptRow | undefined> {
  const [row] = await sql<AttemptRow[]>`
    select d.id::text, d.event_id, d.type, d.endpoint_id, e.url, e.secret,
           t.id::text as t_id, t.kind, t.amount, t.currency, t.from_user_id, t.to_user_id, t.description, t.reference, t.created_at
      from webhook_deliveries d
      join webhook_endpoints e on e.id = d.endpoint_id
      join transactions t on t.id = d.transaction_id
     where d.id = ${deliveryId} and d.status = 'pending' and e.disabled_at is null`
  return row
}

/** A delivery still pending on a disabled endpoint (queued as the endpoint was being disabled) is failed, not sent. */
export async function failIfEndpointDisabled (sql: Sql, deliveryId: string): Promise<void> {
  await sql`
    update webhook_deliveries d set status = 'failed', next_attempt_at = null
      from webhook_endpoints e
     where d.id = ${deliveryId} and d.status = 'pending' and e.id = d.endpoint_id and e.disabled_at is not null`
}

export interface AttemptOutcome {
  deliveryId: string
  /** The attempt's job, removed with a final outcome (its lease: attempts). */
  jobId: string
  /** Attempts started, this one included. */
  attempts: number
  statusCode: number | null
  delivered: boolean
  /** When the next attempt runs; null when this was the last one. */
  nextAttemptAt: Date | null
  disableAfterS: number
}

/**
 * Records an attempt's outcome on the delivery and its endpoint's health, one statement (a failure through
 * record_webhook_attempt(), which may disable the endpoint; a success as the same writes, sent directly);
 * a final outcome removes the attempt's job in the same transaction (`jobFinished`). `status` is null when only the
 * attempt was counted (the delivery is no longer pending).
 */
export async function recordAttempt (sql: Sql, outcome: AttemptOutcome): Promise<{ status: WebhookDelivery['status'] | null, endpointDisabled: boolean, jobFinished: boolean }> {
  if (outcome.delivered) {
    // The healthy path as record_webhook_attempt() writes it, sent as one plain statement: a success never
    // disables anything, and the function call's own cost (its pinned search_path, PL/pgSQL) was most of the
    // statement's time. The delivery, its endpoint's run of failures (written only when there is one), the job;
    // a delivery already final (deleted or disabled endpoint, a late attempt) only counts the attempt.
    const [done] = await sql<Array<{ status: 'delivered' | null, job_finished: boolean }>>`
      with delivered as (
        update webhook_deliveries d
           set status = 'delivered', attempts = greatest(d.attempts, ${outcome.attempts}::int),
               last_status_code = ${outcome.statusCode}::int, next_attempt_at = null
         where d.id = ${outcome.deliveryId}::bigint and d.status = 'pending'
        returning d.endpoint_id
      ), healthy as (
        update webhook_endpoints e set consecutive_failures = 0, failing_since = null
         where e.id = (select x.endpoint_id from delivered x) and e.consecutive_failures > 0
      ), finished as (
        delete from jobs j where j.id = ${outcome.jobId}::bigint and j.attempts = ${outcome.attempts}::int
        returning 1
      ), counted as (
        update webhook_deliveries d set attempts = ${outcome.attempts}::int
         where d.id = ${outcome.deliveryId}::bigint and d.attempts < ${outcome.attempts}::int and d.status <> 'pending'
           and not exists (select 1 from delivered)
      )
      select (select 'delivered' from delivered) as status, exists (select 1 from finished) as job_finished`
    return { status: done?.status ?? null, endpointDisabled: false, jobFinished: done?.job_finished === true }
  }
  const [row] = await sql<Array<{ status: WebhookDelivery['status'] | null, endpoint_disabled: boolean, job_finished: boolean }>>`
    select status, endpoint_disabled, job_finished from record_webhook_attempt(
      ${outcome.deliveryId}::bigint, ${outcome.attempts}::int, ${outcome.statusCode}::int, ${outcome.delivered}::boolean,
      ${outcome.nextAttemptAt}::timestamptz, ${outcome.disableAfterS}::int, ${outcome.jobId}::bigint)`
  return { status: row?.status ?? null, endpointDisabled: row?.endpoint_disabled === true, jobFinished: row?.job_finished === true }
}
