import { z } from 'zod'
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod'
import { responses } from '../../plugins/openapi/index.ts'
import { toProblem, WebhookError } from './errors.ts'
import { checkTarget, targetPolicy } from './outbound.ts'
import { createEndpoint, deleteEndpoint, deliveriesPageQuery, endpointExists, listEndpoints, setEndpointEnabled, toDelivery } from './repository.ts'
import {
  CreatedWebhookEndpointSchema, CreateWebhookEndpointBodySchema, DeliveryCursorSchema, ListDeliveriesQuerySchema,
  MAX_ENDPOINTS_PER_PRINCIPAL, UpdateWebhookEndpointBodySchema, WebhookDeliveryPageSchema, WebhookEndpointIdParamsSchema,
  WebhookEndpointListSchema, WebhookEndpointSchema
} from './schemas.ts'

// Users receive the transactions that touch them; service clients (events:read) the ones they posted.
const routeConfig = { principals: ['user', 'client'] as const, scope: 'events:read' as const }

const endpointNotFound = () => toProblem(new WebhookError('endpoint_not_found'))

export const webhookEndpointsRoutes: FastifyPluginAsyncZod = async (app) => {
  const { db, cursors, config } = app
  const policy = targetPolicy(config)

  app.post('/webhook-endpoints', {
    // The answer holds the endpoint's signing secret.
    config: { ...routeConfig, carriesCredentials: true },
    schema: {
      operationId: 'createWebhookEndpoint',
      tags: ['webhooks'],
      summary: `Register a URL that receives signed events (at most ${MAX_ENDPOINTS_PER_PRINCIPAL}); the secret is shown only in this answer`,
      body: CreateWebhookEndpointBodySchema,
      ...responses({
        201: { schema: CreatedWebhookEndpointSchema, description: 'Registered: the endpoint with its signing secret, shown only here.', headers: ['Location'] },
        400: 'The URL is not allowed: not https, or it resolves to a private, loopback or link-local address.',
        409: `The caller already has ${MAX_ENDPOINTS_PER_PRINCIPAL} endpoints; delete one first.`
      })
    }
  }, async (request, reply) => {
    const { url, events } = request.body
    // Syntax, scheme and every address the host resolves to (deliveries check the connected address again).
    const target = await checkTarget(url, policy)
    if (!target.ok) throw toProblem(new WebhookError('url_not_allowed', { reason: target.reason }))
    const created = await createEndpoint(db, request.user, target.url.href, events)
    if (created === null) throw toProblem(new WebhookError('endpoint_limit'))
    return reply.code(201).header('location', `/webhook-endpoints/${created.id}`).send(created)
  })

  app.get('/webhook-endpoints', {
    config: routeConfig,
    schema: {
      operationId: 'listWebhookEndpoints',
      tags: ['webhooks'],
      summary: 'The caller\'s webhook endpoints, oldest first (never their secrets)',
      ...responses({ 200: { schema: WebhookEndpointListSchema, description: 'The caller\'s endpoints, without their secrets.' } })
    }
  }, async (request) => ({ data: await listEndpoints(db, request.user) }))

  app.patch('/webhook-endpoints/:id', {
    config: routeConfig,
    schema: {
      operationId: 'updateWebhookEndpoint',
      tags: ['webhooks'],
      summary: 'Re-enable one of the caller\'s webhook endpoints (`{ "enabled": true }`), or disable it',
      params: WebhookEndpointIdParamsSchema,
      body: UpdateWebhookEndpointBodySchema,
      ...responses({
        200: { schema: WebhookEndpointSchema, description: 'The endpoint as it is now, without its secret.' },
        404: 'No such endpoint of the caller\'s.'
      })
    }
  }, async (request) => {
    const endpoint = await setEndpointEnabled(db, request.user, request.params.id, request.body.enabled)
    if (endpoint === null) throw endpointNotFound()
    return endpoint
  })

  app.delete('/webhook-endpoints/:id', {
    config: routeConfig,
    schema: {
      operationId: 'deleteWebhookEndpoint',
      tags: ['webhooks'],
      summary: 'Delete one of the caller\'s webhook endpoints; its pending deliveries are dropped',
      params: WebhookEndpointIdParamsSchema,
      ...responses({ 204: { schema: z.null(), description: 'Deleted.' }, 404: 'No such endpoint of the caller\'s.' })
    }
  }, async (request, reply) => {
    if (!await deleteEndpoint(db, request.user, request.params.id)) throw endpointNotFound()
    return reply.code(204).send(null)
  })

  app.get('/webhook-endpoints/:id/deliveries', {
    config: routeConfig,
    schema: {
      operationId: 'listWebhookDeliveries',
      tags: ['webhooks'],
      summary: 'An endpoint\'s deliveries, newest first (cursor pagination): pending, delivered or failed, with attempts',
      params: WebhookEndpointIdParamsSchema,
      querystring: ListDeliveriesQuerySchema,
      ...responses({ 200: { schema: WebhookDeliveryPageSchema, description: 'One page, newest first; nextCursor is null on the last.' }, 400: 'The cursor is not one this list gave you.', 404: 'No such endpoint of the caller\'s.' })
    }
  }, async (request) => {
    const { id } = request.params
    const { limit, cursor } = request.query
    const scope = `webhook-deliveries:${request.user.id}:${id}`
    const before = cursors.position(scope, cursor, DeliveryCursorSchema)?.before
    if (!await endpointExists(db, request.user, id)) throw endpointNotFound()
    const rows = await deliveriesPageQuery(db, id, limit, before)
    return cursors.page(scope, rows, limit, toDelivery, (row) => ({ before: row.id }))
  })
}
