import { z } from 'zod'
import { list, settingsGroup, url } from '../config-helpers.ts'

const hostPort = /^[A-Za-z0-9.-]+:\d{1,5}$/

export const redisConfig = settingsGroup('Redis', 'One Redis, or a Redis Cluster: the cache, the rate limiter\'s buckets and the job wake-ups.', {
  REDIS_URL: url(['redis:', 'rediss:']).meta({ example: 'redis://127.0.0.1:61379' })
    .describe('Required, no default (redis:// or rediss://); `npm start` fills it from the local stack when unset. With REDIS_CLUSTER_NODES it defaults to the first node.'),
  REDIS_CLUSTER_NODES: list.pipe(z.array(z.string().regex(hostPort, 'must be host:port')).min(1)).optional()
    .meta({ example: '127.0.0.1:57001,127.0.0.1:57002,127.0.0.1:57003' })
    .describe('Redis Cluster seed nodes, comma-separated host:port. Set: the client runs in cluster mode, and REDIS_URL (defaulting to the first node) only supplies credentials and rediss: for TLS. Locally: `npm run stack -- cluster up`.'),
  REDIS_COMMAND_TIMEOUT_MS: z.coerce.number().int().min(10).max(60_000).default(500)
    .describe('Milliseconds before a Redis command counts as failed (10-60000): the cache then falls back to PostgreSQL and the rate limiter fails open (RATE_LIMIT_FAIL_OPEN).')
})
