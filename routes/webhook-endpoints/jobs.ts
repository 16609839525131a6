import { createHmac } from 'node:crypto'
import { z } from 'zod'
import { JobDeferred, type JobHandler, type JobHandlers } from '../../plugins/jobs.ts'
import type { Metrics } from '../../plugins/metrics.ts'
import { toTransaction } from '../transactions/queries.ts'
import type { Transaction } from '../transactions/schemas.ts'
import { postWebhook, type TargetPolicy } from './outbound.ts'

export const WEBHOOK_DELIVER = 'webhook.deliver'
// Receivers answer with a few bytes; more is read no further (outbound.ts bounds it) and never stored.
const MAX_RESPONSE_BYTES = 4096

export interface WebhookJobOptions {
  policy: TargetPolicy
  timeoutMs: number
  /** Attempts at once per endpoint in this process; more wait (deferred, uncounted) a moment. */
  endpointConcurrency: number
  metrics: Metrics
}

/** Standard Webhooks v1: base64 HMAC-SHA256 of "{id}.{timestamp}.{body}" keyed with the secret's decoded bytes. */
export function signWebhook (secret: string, id: string, timestamp: number, body: string): string {
  const key = Buffer.from(secret.replace(/^whsec_/, ''), 'base64')
  return `v1,${createHmac('sha256', key).update(`${id}.${timestamp}.${body}`).digest('base64')}`
}

/** What a receiver gets: `{ id, type, timestamp, data }`, `data` the transaction exactly as GET /transactions/:id answers. */
export function webhookBody (eventId: string, type: string, transaction: Transaction): string {
  return JSON.stringify({ id: eventId, type, timestamp: transaction.createdAt, data: transaction })
}

const DeliverPayloadSchema = z.object({ deliveryId: z.string().regex(/^[1-9][0-9]{0,18}$/) })

interface DeliveryRow {
  id: string
  event_id: string
  type: string
  status: string
  endpoint_id: string
  url: string
  secret: string
  t_id: string
  kind: Transaction['kind']
  amount: string
  currency: string
  from_user_id: string | null
  to_user_id: string | null
  description: string | null
  reference: string | null
  created_at: Date
}

export function webhookJobs (options: WebhookJobOptions): JobHandlers {
  const busy = new Map<string, number>()
  const { metrics } = options

  const deliver: JobHandler<unknown> = async (job, { sql, retryAt }) => {
    const parsed = DeliverPayloadSchema.safeParse(job.payload)
    if (!parsed.success) throw new Error('webhook.deliver payload is malformed')
    const [row] = await sql<DeliveryRow[]>`
      select d.id::text, d.event_id, d.type, d.status, d.endpoint_id, e.url, e.secret,
             t.id::text as t_id, t.kind, t.amount, t.currency, t.from_user_id, t.to_user_id, t.description, t.reference, t.created_at
        from webhook_deliveries d
        join webhook_endpoints e on e.id = d.endpoint_id
        join transactions t on t.id = d.transaction_id
       where d.id = ${parsed.data.deliveryId}`
    // Gone (endpoint deleted, purged) or already recorded by an attempt whose job row outlived it: nothing to send.
    if (row === undefined || row.status !== 'pending') return { status: 'done' }

    const inFlight = busy.get(row.endpoint_id) ?? 0
    if (inFlight >= options.endpointConcurrency) throw new JobDeferred(100 + Math.floor(Math.random() * 150))
    busy.set(row.endpoint_id, inFlight + 1)
    let response
    try {
      const body = webhookBody(row.event_id, row.type, toTransaction({ ...row, id: row.t_id }))
      // The attempt's own time (receivers refuse stale timestamps); the id is the event's, the same on every retry.
      const timestamp = Math.floor(Date.now() / 1000)
      response = await postWebhook({
        url: row.url,
        headers: {
          'webhook-id': row.event_id,
          'webhook-timestamp': String(timestamp),
          'webhook-signature': signWebhook(row.secret, row.event_id, timestamp, body),
          'user-agent': 'ledger-api-webhooks/1'
        },
        body,
        timeoutMs: options.timeoutMs,
        maxResponseBytes: MAX_RESPONSE_BYTES,
        policy: options.policy
        // No abort signal: a closing process lets the attempt finish (at most the timeout) and records it.
      })
    } finally {
      const left = (busy.get(row.endpoint_id) ?? 1) - 1
      if (left <= 0) busy.delete(row.endpoint_id)
      else busy.set(row.endpoint_id, left)
    }

    const attempts = job.attempts + 1
    const delivered = response.outcome === 'delivered'
    const next = delivered ? null : retryAt()
    const status = delivered ? 'delivered' : next === null ? 'failed' : 'pending'
    metrics.webhookDeliveryDuration.observe({ outcome: delivered ? 'delivered' : 'failed' }, response.durationMs / 1000)
    metrics.webhookDeliveries.inc({ outcome: delivered ? 'delivered' : status === 'failed' ? 'failed' : 'retry', reason: delivered ? '' : response.error ?? 'status' })
    await sql`
      update webhook_deliveries
         set status = ${status}, attempts = greatest(attempts, ${attempts}), last_status_code = ${response.statusCode},
             next_attempt_at = ${next}
       where id = ${row.id} and status = 'pending'`
    if (status !== 'pending') return { status: 'done' }
    // The worker schedules the job at retryAt, the time just recorded for the deliveries list.
    throw new Error(`webhook attempt failed: ${response.error ?? 'status'}${response.statusCode === null ? '' : ` ${response.statusCode}`}`)
  }

  return { [WEBHOOK_DELIVER]: deliver }
}
