import { createHmac } from 'node:crypto'
import { z } from 'zod'
import { JobDeferred, type JobHandler, type JobHandlers } from '../../plugins/jobs.ts'
import type { Metrics } from '../../plugins/metrics.ts'
import { toTransaction, type TransactionRow } from '../transactions/queries.ts'
import type { Transaction } from '../transactions/schemas.ts'
import { postWebhook, type TargetPolicy } from './outbound.ts'

export const WEBHOOK_DELIVER = 'webhook.deliver'
// Receivers answer with a few bytes; more is read no further (outbound.ts bounds it) and never stored.
const MAX_RESPONSE_BYTES = 4096

export interface WebhookJobOptions {
  policy: TargetPolicy
  timeoutMs: number
  /** Attempts at once per endpoint in this process (see endpointSlots). */
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

/** The delivery, its endpoint and its transaction (`t_id`: the transaction's id beside the delivery's own). */
interface DeliveryRow extends Omit<TransactionRow, 'id'> {
  id: string
  event_id: string
  type: string
  status: string
  endpoint_id: string
  url: string
  secret: string
  t_id: string
}

/** How long an attempt waits for a slot of its endpoint before it is put back (uncounted) for later. */
const SLOT_WAIT_MS = 1000

/**
 * At most `limit` attempts at once per endpoint in this process. An attempt over the limit waits briefly in line
 * (a fast receiver frees slots in milliseconds), then gives its worker slot back: put back for a second or two
 * rather than claimed again at once, so a slow endpoint neither blocks the others nor turns into a claim loop.
 */
export function endpointSlots (limit: number) {
  const active = new Map<string, { running: number, waiting: Array<() => void> }>()
  return {
    async acquire (endpointId: string, waitMs = SLOT_WAIT_MS): Promise<boolean> {
      let entry = active.get(endpointId)
      if (entry === undefined) active.set(endpointId, entry = { running: 0, waiting: [] })
      if (entry.running < limit) {
        entry.running++
        return true
      }
      const line = entry
      return await new Promise<boolean>((resolve) => {
        const take = () => { clearTimeout(timer); resolve(true) }
        const timer = setTimeout(() => {
          line.waiting.splice(line.waiting.indexOf(take), 1)
          resolve(false)
        }, waitMs)
        line.waiting.push(take)
      })
    },
    release (endpointId: string) {
      const entry = active.get(endpointId)
      if (entry === undefined) return
      // The slot passes straight to the next in line (running stays the same), else it is freed.
      const next = entry.waiting.shift()
      if (next !== undefined) next()
      else if (--entry.running === 0) active.delete(endpointId)
    }
  }
}

export function webhookJobs (options: WebhookJobOptions): JobHandlers {
  const slots = endpointSlots(options.endpointConcurrency)
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

    if (!await slots.acquire(row.endpoint_id)) throw new JobDeferred(1000 + Math.floor(Math.random() * 1000))
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
          'content-type': 'application/json',
          'user-agent': 'ledger-api-webhooks/1'
        },
        body,
        timeoutMs: options.timeoutMs,
        maxResponseBytes: MAX_RESPONSE_BYTES,
        policy: options.policy
        // No abort signal: a closing process lets the attempt finish (at most the timeout) and records it.
      })
    } finally {
      slots.release(row.endpoint_id)
    }

    const attempts = job.attempts + 1
    const delivered = response.outcome === 'delivered'
    const next = delivered ? null : (retryAt?.() ?? null)
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
