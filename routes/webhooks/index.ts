import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { webhookLane } from './delivery-jobs.ts'
import { webhookEndpointsRoutes } from './endpoints.ts'
import { closeWebhookAgents, targetPolicy } from './outbound.ts'
import { purgeDeliveries } from './repository.ts'
import { MAX_ENDPOINTS_PER_PRINCIPAL } from './schemas.ts'

/**
 * Webhooks: endpoints registered by principals, the SSRF-guarded outbound client and the delivery jobs (a lane of
 * their own). This file is the domain's public face: what other modules may use of it, and its two plugins.
 */

/**
 * Whether one principal (at most MAX_ENDPOINTS_PER_PRINCIPAL endpoints, each with at most
 * WEBHOOK_ENDPOINT_CONCURRENCY attempts in flight) could fill a worker's webhook lane with hanging attempts, so that
 * everyone else's first attempts wait for a timeout. The worker says so at start (the defaults leave room: 64 > 40).
 */
export function onePrincipalCanFillWebhookLane (config: { WORKER_WEBHOOK_CONCURRENCY: number, WEBHOOK_ENDPOINT_CONCURRENCY: number }): boolean {
  return config.WORKER_WEBHOOK_CONCURRENCY <= MAX_ENDPOINTS_PER_PRINCIPAL * config.WEBHOOK_ENDPOINT_CONCURRENCY
}

/** What runs whether or not this process serves HTTP: the delivery lane and the purge of old deliveries. */
async function webhooksServices (app: FastifyInstance) {
  const config = app.config
  app.jobs.addLane('webhooks', {
    ...webhookLane({
      policy: targetPolicy(config),
      timeoutMs: config.WEBHOOK_TIMEOUT_MS,
      connectTimeoutMs: config.WEBHOOK_CONNECT_TIMEOUT_MS,
      endpointConcurrency: config.WEBHOOK_ENDPOINT_CONCURRENCY,
      disableAfterS: config.WEBHOOK_DISABLE_AFTER_H * 3600,
      concurrency: config.WORKER_WEBHOOK_CONCURRENCY,
      metrics: app.metrics
    }),
    // The outbound client's keep-alive sockets, once the last delivery has finished.
    cleanup: closeWebhookAgents
  })
  // Finished deliveries (delivered, failed) stay listed this long; pending ones are never purged: their job still runs.
  app.housekeeping.add({
    operation: 'webhook_delivery_purge',
    done: 'purged finished webhook deliveries past retention',
    run: (batch) => purgeDeliveries(app.db, config.WEBHOOK_DELIVERY_RETENTION_H * 3600, batch)
  })
}

async function webhooksRoutes (app: FastifyInstance) {
  await app.register(webhookEndpointsRoutes)
}

export const webhooks = {
  services: fp(webhooksServices, { name: 'webhooks', dependencies: ['jobs', 'housekeeping', 'metrics'] }),
  routes: fp(webhooksRoutes, { name: 'webhooks-routes' })
}
