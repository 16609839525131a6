import { createHmac } from 'node:crypto'
import { z } from 'zod'
import type { Sql } from '../../plugins/database/index.ts'
import type { JobHandler } from '../../plugins/jobs/queue.ts'
import type { Metrics } from '../../plugins/metrics/index.ts'
import type { LaneOptions } from '../../plugins/jobs/index.ts'
import { toTransaction, TransactionKindSchema, type Transaction } from '../ledger/index.ts'
import { postWebhook, type TargetPolicy } from './outbound.ts'
import { attemptTarget, type AttemptRow, claimWebhookJobs, failIfEndpointDisabled, recordAttempt } from './repository.ts'

export const WEBHOOK_DELIVER = 'webhook.deliver'
// Receivers answer with a few bytes; more is read no further (outbound.ts bounds it) and never stored.
const MAX_RESPONSE_BYTES = 4096

export interface WebhookLaneOptions {
  policy: TargetPolicy
  /** The whole attempt, connect to last byte. */
  timeoutMs: number
  /** Connecting (DNS, TCP, TLS handshake), within timeoutMs. */
  connectTimeoutMs: number
  /** Attempts in flight per endpoint, across every worker process (the lane's claim holds it). */
  endpointConcurrency: number
  /** An endpoint whose every attempt failed for this long is disabled at its next failure. */
  disableAfterS: number
  /** Attempts at once in this process. */
  concurrency: number
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
// What the claim read for the attempt (claim_webhook_jobs()'s context): an AttemptRow, created_at as JSON text.
const ClaimedTargetSchema = z.object({
  event_id: z.string(),
  type: z.string(),
  endpoint_id: z.string(),
  url: z.string(),
  secret: z.string(),
  t_id: z.string(),
  kind: TransactionKindSchema,
  amount: z.string(),
  currency: z.string(),
  from_user_id: z.string().nullable(),
  to_user_id: z.string().nullable(),
  description: z.string().nullable(),
  reference: z.string().nullable(),
  created_at: z.string()
})

/** The attempt's target from the claim's context when it has one (no round trip), else read now. */
async function target (sql: Sql, deliveryId: string, claimed: unknown): Promise<AttemptRow | undefined> {
  const parsed = ClaimedTargetSchema.safeParse(claimed)
  if (!parsed.success) return await attemptTarget(sql, deliveryId)
  return { ...parsed.data, id: deliveryId, created_at: new Date(parsed.data.created_at) }
}

/** Webhook delivery as a lane of its own: its handler, its claim and its concurrency. */
export function webhookLane (options: WebhookLaneOptions): LaneOptions {
  const { metrics } = options

  const deliver: JobHandler<unknown> = async (job, { sql, log, retryAt, claimed }) => {
    const parsed = DeliverPayloadSchema.safeParse(job.payload)
    if (!parsed.success) throw new Error('webhook.deliver payload is malformed')
    const { deliveryId } = parsed.data
    const attempts = job.attempts + 1
    const row = await target(sql, deliveryId, claimed)
    if (row === undefined) {
      // Gone, already final (an attempt whose job row outlived it), or its endpoint was disabled as it was queued.
      await failIfEndpointDisabled(sql, deliveryId)
      return { status: 'done' }
    }

    const body = webhookBody(row.event_id, row.type, toTransaction({ ...row, id: row.t_id }))
    // The attempt's own time (receivers refuse stale timestamps); the id is the event's, the same on every retry.
    const timestamp = Math.floor(Date.now() / 1000)
    const response = await postWebhook({
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
      connectTimeoutMs: options.connectTimeoutMs,
      maxResponseBytes: MAX_RESPONSE_BYTES,
      policy: options.policy
      // No abort signal: a closing process lets the attempt finish (at most the timeout) and records it.
    })

    const delivered = response.outcome === 'delivered'
    const next = delivered ? null : (retryAt?.() ?? null)
    const recorded = await recordAttempt(sql, {
      deliveryId, jobId: job.id, attempts, statusCode: response.statusCode, delivered, nextAttemptAt: next, disableAfterS: options.disableAfterS
    })
    const status = recorded.status ?? (delivered ? 'delivered' : 'failed')
    metrics.webhookDeliveryDuration.observe({ outcome: delivered ? 'delivered' : 'failed' }, response.durationMs / 1000)
    metrics.webhookDeliveries.inc({ outcome: delivered ? 'delivered' : status === 'pending' ? 'retry' : 'failed', reason: delivered ? '' : response.error ?? 'status' })
    if (recorded.endpointDisabled) {
      metrics.webhookEndpointsDisabled.inc()
      log.warn({ endpointId: row.endpoint_id, disableAfterS: options.disableAfterS }, 'webhook endpoint disabled: every attempt failed for the whole window')
    }
    // A final outcome removed the job with it (one commit); else (the lease was lost) the worker's own check says so.
    if (status !== 'pending') return { status: 'done', removed: recorded.jobFinished }
    // The worker schedules the job at retryAt, the time just recorded for the deliveries list.
    throw new Error(`webhook attempt failed: ${response.error ?? 'status'}${response.statusCode === null ? '' : ` ${response.statusCode}`}`)
  }

  return {
    handlers: { [WEBHOOK_DELIVER]: deliver },
    concurrency: options.concurrency,
    claim: claimWebhookJobs(options.endpointConcurrency)
  }
}
