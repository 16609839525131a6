// Every job kind the worker runs, collected once for both places a worker runs (app.ts inside `npm start`, and
// worker.ts for `npm run worker`). A resource adds its handlers here.
import type { Config } from './config.ts'
import type { CacheAside } from './plugins/cache-aside.ts'
import type { JobHandlers } from './plugins/jobs.ts'
import type { Metrics } from './plugins/metrics.ts'
import { createFeedJobHandlers } from './routes/feed/jobs.ts'
import { webhookJobs } from './routes/webhook-endpoints/jobs.ts'
import { closeWebhookAgents, targetPolicy } from './routes/webhook-endpoints/outbound.ts'

export function jobHandlers (config: Config, metrics: Metrics, cache: CacheAside): JobHandlers {
  return {
    ...webhookJobs({
      policy: targetPolicy(config),
      timeoutMs: config.WEBHOOK_TIMEOUT_MS,
      endpointConcurrency: config.WEBHOOK_ENDPOINT_CONCURRENCY,
      metrics
    }),
    // Fan-out, backfill and removals clear the cached first page of each feed they change.
    ...createFeedJobHandlers({ cache, batchSize: config.FEED_FAN_OUT_BATCH })
  }
}

/** The worker plugin's options from the configuration (shared by app.ts and worker.ts). */
export function workerOptions (config: Config, metrics: Metrics, cache: CacheAside, enabled: boolean) {
  return {
    handlers: jobHandlers(config, metrics, cache),
    enabled,
    // May exceed DATABASE_POOL_MAX: the attempts' statements then wait in postgres.js's queue for a connection of
    // their own (plugins/database.ts, withoutPipelining).
    concurrency: config.WORKER_CONCURRENCY,
    leaseMs: config.WORKER_LEASE_S * 1000,
    pollMaxMs: config.WORKER_POLL_MAX_MS,
    retry: { baseMs: config.JOB_RETRY_BASE_MS, maxDelayMs: config.JOB_RETRY_MAX_DELAY_S * 1000, windowMs: config.JOB_RETRY_WINDOW_S * 1000 },
    subscribe: true,
    // The outbound module's keep-alive sockets, once the last delivery has finished.
    cleanup: closeWebhookAgents
  }
}
