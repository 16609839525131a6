import { z } from 'zod'
import { boolean, settingsGroup } from '../config-helpers.ts'

export const jobsConfig = settingsGroup('Job worker', 'The job worker runs inside every API process unless WORKER_ENABLED=false (API-only processes beside `npm run worker` ones). Jobs run in lanes that never share capacity: feed jobs (fan-out, backfill, removals) and webhook deliveries each have their own attempts at once per process, so slow receivers never hold up a feed, nor a feed backlog a delivery. A Redis message wakes workers at once after a commit that queued work; the poll is the fallback. Failed attempts are retried with exponential backoff (each delay drawn in [half, whole] of its step) until the retry window ends; then the job (a webhook delivery) is marked failed.', {
  WORKER_ENABLED: boolean.default(true)
    .describe('Run the job worker (webhook deliveries, feed fan-out) inside this API process; false for API-only processes beside `npm run worker`.'),
  WORKER_FEED_CONCURRENCY: z.coerce.number().int().min(1).max(256).default(8)
    .describe('Feed jobs at once per worker process (1-256). More than DATABASE_POOL_MAX is fine: statements wait for a connection.'),
  WORKER_WEBHOOK_CONCURRENCY: z.coerce.number().int().min(1).max(1024).default(64)
    .describe('Webhook delivery attempts at once per worker process (1-1024). Larger than the feed lane because an attempt mostly waits on its receiver, holding a socket and no database connection. Keep it above 10 x WEBHOOK_ENDPOINT_CONCURRENCY (one principal\'s most endpoints), so one principal can never fill a worker; the worker warns otherwise.'),
  WORKER_CONCURRENCY: z.string().optional().meta({ deprecated: true })
    .describe('The single pool the two lanes replace: refused, with a message naming WORKER_FEED_CONCURRENCY and WORKER_WEBHOOK_CONCURRENCY.'),
  WORKER_LEASE_S: z.coerce.number().int().min(5).max(3600).default(60)
    .describe('Seconds a claimed job is leased before another worker may run it again (5-3600; longer than any attempt).'),
  WORKER_POLL_MAX_MS: z.coerce.number().int().min(10).max(60_000).default(1000)
    .describe('Longest pause of an idle worker\'s poll in ms (10-60000); the Redis wake-up is the fast path.'),
  JOB_RETRY_BASE_MS: z.coerce.number().int().min(10).max(60_000).default(5000)
    .describe('First step of the retry backoff of a failed job attempt, in ms (10-60000); each step doubles.'),
  JOB_RETRY_MAX_DELAY_S: z.coerce.number().int().min(1).max(86_400).default(3600)
    .describe('Cap of one retry delay, in seconds (1-86400).'),
  JOB_RETRY_WINDOW_S: z.coerce.number().int().min(1).max(30 * 86_400).default(86_400)
    .describe('Seconds after it was queued that a job is retried (1 s to 30 days); one attempt is made at the end of the window, then the job is marked failed.')
})
