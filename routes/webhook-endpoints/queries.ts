import { randomBytes } from 'node:crypto'
import type { Sql } from '../../plugins/database.ts'
import { MAX_ENDPOINTS_PER_PRINCIPAL, type WebhookDelivery, type WebhookEndpoint, type WebhookEventType } from './schemas.ts'

export interface Principal {
  kind: 'user' | 'client'
  id: string
}

interface EndpointRow {
  id: string
  url: string
  events: string[]
  created_at: Date
}

const toEndpoint = (row: EndpointRow): WebhookEndpoint => ({
  id: row.id, url: row.url, events: row.events, createdAt: row.created_at.toISOString()
})

/** `whsec_` + base64 of 32 random bytes (Standard Webhooks' secret form; the bytes are the HMAC key). */
export const newWebhookSecret = () => `whsec_${randomBytes(32).toString('base64')}`

/**
 * Registers an endpoint unless the principal has MAX_ENDPOINTS_PER_PRINCIPAL already: a transaction-scoped
 * advisory lock per principal serializes concurrent registrations (safe under PgBouncer transaction pooling), so
 * ten racing requests cannot make eleven endpoints. Null when the limit is reached.
 */
// postgres.js runs without fetch_types (plugins/database.ts): text[] goes in as its literal (the event names are a
// fixed enum of plain words) and comes back as JSON.
export async function createEndpoint (sql: Sql, principal: Principal, url: string, events: readonly WebhookEventType[]) {
  const secret = newWebhookSecret()
  return await sql.begin(async (tx) => {
    await tx`select pg_advisory_xact_lock(hashtextextended(${`webhook_endpoints:${principal.id}`}, 0))`
    const [row] = await tx<EndpointRow[]>`
      insert into webhook_endpoints (principal_kind, principal_id, url, events, secret)
      select ${principal.kind}, ${principal.id}, ${url}, ${`{${events.join(',')}}`}::text[], ${secret}
       where (select count(*) from webhook_endpoints where principal_id = ${principal.id}) < ${MAX_ENDPOINTS_PER_PRINCIPAL}
      returning id, url, to_json(events) as events, created_at`
    return row === undefined ? null : { ...toEndpoint(row), secret }
  })
}

export async function listEndpoints (sql: Sql, principal: Principal): Promise<WebhookEndpoint[]> {
  const rows = await sql<EndpointRow[]>`
    select id, url, to_json(events) as events, created_at from webhook_endpoints
     where principal_id = ${principal.id} and principal_kind = ${principal.kind}
     order by created_at, id`
  return rows.map(toEndpoint)
}

/** Deletes the caller's endpoint (its pending deliveries with it: their jobs find nothing and finish). */
export async function deleteEndpoint (sql: Sql, principal: Principal, id: string): Promise<boolean> {
  const rows = await sql`
    delete from webhook_endpoints where id = ${id} and principal_id = ${principal.id} and principal_kind = ${principal.kind}
    returning id`
  return rows.length === 1
}

export async function endpointExists (sql: Sql, principal: Principal, id: string): Promise<boolean> {
  const rows = await sql`
    select 1 from webhook_endpoints where id = ${id} and principal_id = ${principal.id} and principal_kind = ${principal.kind}`
  return rows.length === 1
}

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

/** An endpoint's deliveries, newest first, plus one look-ahead row (cursors.page): one range scan of its index. */
export function deliveriesPageQuery (sql: Sql, endpointId: string, limit: number, before?: string) {
  return sql<DeliveryRow[]>`
    select id, event_id, type, transaction_id, status, attempts, last_status_code, next_attempt_at, created_at
      from webhook_deliveries
     where endpoint_id = ${endpointId}
       ${before === undefined ? sql`` : sql`and id < ${before}`}
     order by id desc
     limit ${limit + 1}`
}

/** Finished deliveries past the retention window, oldest first, one bounded batch (plugins/housekeeping.ts). */
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
