import { z } from 'zod'
import { CursorParamSchema } from '../../plugins/auth/cursors.ts'
import { MAX_URL_LENGTH } from './outbound.ts'

export const webhookEventTypes = ['transaction.created'] as const
export const MAX_ENDPOINTS_PER_PRINCIPAL = 10

export const CreateWebhookEndpointBodySchema = z.object({
  // Syntax, address rules and the length once normalised are outbound.ts's (checkTarget); this bounds the input
  // before it gets there.
  url: z.string().min(1).max(MAX_URL_LENGTH),
  events: z.array(z.enum(webhookEventTypes)).min(1).max(10)
    .transform((events) => [...new Set(events)])
    .default(['transaction.created'])
}).strict()

export const WebhookEndpointSchema = z.object({
  id: z.uuid(),
  url: z.string(),
  events: z.array(z.string()),
  status: z.enum(['enabled', 'disabled'])
    .describe('`disabled`: nothing is delivered to it (every attempt failed for 3 days, or its owner disabled it); PATCH `{ "enabled": true }` resumes delivery with the next event'),
  consecutiveFailures: z.number().int().min(0).describe('Failed attempts in a row (0 after any delivery)'),
  failingSince: z.iso.datetime().nullable().describe('When the current run of failed attempts began; null when the last attempt was delivered'),
  disabledAt: z.iso.datetime().nullable(),
  createdAt: z.iso.datetime()
}).meta({ id: 'WebhookEndpoint' })

/** The one response that carries the secret: it is never shown again. */
export const CreatedWebhookEndpointSchema = WebhookEndpointSchema.extend({
  secret: z.string()
}).meta({ id: 'CreatedWebhookEndpoint' })

export const WebhookEndpointListSchema = z.object({
  data: z.array(WebhookEndpointSchema)
}).meta({ id: 'WebhookEndpointList' })

export const UpdateWebhookEndpointBodySchema = z.object({
  enabled: z.boolean().describe('true re-enables a disabled endpoint (its run of failures starts again from zero); false disables it and fails its pending deliveries')
}).strict()

export const WebhookEndpointIdParamsSchema = z.object({ id: z.uuid().toLowerCase() }).strict()

export const WebhookDeliverySchema = z.object({
  eventId: z.string(),
  type: z.string(),
  transactionId: z.string(),
  status: z.enum(['pending', 'delivered', 'failed']),
  attempts: z.number().int().describe('Attempts started, one in progress included'),
  lastStatusCode: z.number().int().nullable(),
  nextAttemptAt: z.iso.datetime().nullable().describe('When the next attempt is due; null once final, and while an attempt is in progress'),
  createdAt: z.iso.datetime()
}).meta({ id: 'WebhookDelivery' })

export const WebhookDeliveryPageSchema = z.object({
  data: z.array(WebhookDeliverySchema),
  nextCursor: z.string().nullable()
}).meta({ id: 'WebhookDeliveryPage' })

export const ListDeliveriesQuerySchema = z.object({
  limit: z.coerce.number().int().min(1).max(100).default(50),
  cursor: CursorParamSchema.optional()
}).strict()

export const DeliveryCursorSchema = z.object({ before: z.string().regex(/^[1-9][0-9]{0,18}$/) }).strict()

export type WebhookEventType = typeof webhookEventTypes[number]
export type WebhookEndpoint = z.infer<typeof WebhookEndpointSchema>
export type WebhookDelivery = z.infer<typeof WebhookDeliverySchema>
