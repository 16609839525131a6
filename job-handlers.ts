// Every job kind the worker runs, by lane, collected once for both places a worker runs (app.ts inside `npm start`,
// and worker.ts for `npm run worker`). A resource adds its handlers to a lane here.
import type { Config } from './settings.ts'
import type { CacheAside } from './plugins/cache-aside.ts'
import type { Metrics } from './plugins/metrics.ts'
import type { LaneOptions, WorkerOptions } from './plugins/worker.ts'
import { createFeedJobHandlers } from './routes/feed/jobs.ts'
import { webhookLane } from './routes/webhook-endpoints/jobs.ts'
import { closeWebhookAgents, targetPolicy } from './routes/webhook-endpoints/outbound.ts'
import { MAX_ENDPOINTS_PER_PRINCIPAL } from './routes/webhook-endpoints/schemas.ts'

/** The lanes: feed jobs and webhook deliveries never wait for each other's capacity (plugins/worker.ts). */
export function jobLanes (config: Config, metrics: Metrics, cache: CacheAside): Record<'feed' | 'webhooks', LaneOptions> {
  return {
    // Fan-out, backfill and removals clear the cached first page of each feed they change.
    feed: {
      handlers: createFeedJobHandlers({ cache, batchSize: config.FEED_FAN_OUT_BATCH }),
      concurrency: config.WORKER_FEED_CONCURRENCY
    },
    webhooks: webhookLane({
      policy: targetPolicy(config),
      timeoutMs: config.WEBHOOK_TIMEOUT_MS,
      connectTimeoutMs: config.WEBHOOK_CONNECT_TIMEOUT_MS,
      endpointConcurrency: config.WEBHOOK_ENDPOINT_CONCURRENCY,
      disableAfterS: config.WEBHOOK_DISABLE_AFTER_H * 3600,
      concurrency: config.WORKER_WEBHOOK_CONCURRENCY,
      metrics
    })
  }
}

/**
 * Whether one principal (at most MAX_ENDPOINTS_PER_PRINCIPAL endpoints, each with at most
 * WEBHOOK_ENDPOINT_CONCURRENCY attempts in flight) could fill a worker's webhook lane with hanging attempts, so that
 * everyone else's first attempts wait for a timeout. The worker says so at start (the defaults leave room: 64 > 40).
 */
export function onePrincipalCanFillWebhookLane (config: Config): boolean {
  return config.WORKER_WEBHOOK_CONCURRENCY <= MAX_ENDPOINTS_PER_PRINCIPAL * config.WEBHOOK_ENDPOINT_CONCURRENCY
}

/** The worker plugin's options from the configuration (shared by app.ts and worker.ts). */
export function workerOptions (config: Config, metrics: Metrics, cache: CacheAside, enabled: boolean): WorkerOptions {
  return {
    // Lane concurrency may exceed DATABASE_POOL_MAX: the attempts' statements then wait in postgres.js's queue for
    // a connection of their own (plugins/database.ts, withoutPipelining); webhook attempts hold none while waiting
    // for a receiver.
    lanes: jobLanes(config, metrics, cache),
    enabled,
    leaseMs: config.WORKER_LEASE_S * 1000,
    pollMaxMs: config.WORKER_POLL_MAX_MS,
    retry: { baseMs: config.JOB_RETRY_BASE_MS, maxDelayMs: config.JOB_RETRY_MAX_DELAY_S * 1000, windowMs: config.JOB_RETRY_WINDOW_S * 1000 },
    subscribe: true,
    // The outbound module's keep-alive sockets, once the last delivery has finished.
    cleanup: closeWebhookAgents
  }
}
