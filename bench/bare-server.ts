// Baseline (a): the fastest a Fastify 5 route can answer on this machine: constant JSON, no plugins, no logger,
// in a process of its own, driven by the same autocannon settings as the API. Ratios against it show what the
// API's plugins, auth, rate limiting and I/O cost. Stops on SIGTERM/SIGINT, when the parent goes away, and after
// BENCH_SERVER_MAX_S seconds.
// With BENCH_BARE_REDIS_URL, every request first takes a token from the API's own token bucket (the same Lua script
// and Redis client settings, write coalescing included): the floor for a request that must check a limit shared by
// every process, which each API request does.
import Fastify from 'fastify'
import { DEFAULT_LISTEN_BACKLOG } from '../plugins/http/config.ts'
import { createTokenBucket } from '../plugins/rate-limit/index.ts'
import { createRedis } from '../plugins/redis/index.ts'

const app = Fastify({ logger: false })
const body = { id: '00000000-0000-4000-8000-000000000000', name: 'Bare Fastify', avatarUrl: null, createdAt: '2026-01-01T00:00:00.000Z' }

const redisUrl = process.env.BENCH_BARE_REDIS_URL
if (redisUrl !== undefined && redisUrl !== '') {
  const redis = createRedis({ url: redisUrl, commandTimeoutMs: 2000 })
  await new Promise((resolve) => redis.once('ready', resolve))
  const bucket = createTokenBucket(redis, 'bench-bare:')
  let next = 0
  // 100 buckets (as the API's bench callers are many users), each too large to ever refuse.
  app.addHook('onRequest', async () => { await bucket.take(`caller:${next++ % 100}`, 1_000_000, 1_000_000) })
  app.addHook('onClose', async () => { redis.disconnect() })
}

app.get('/', async () => body)

const stop = () => { app.close().finally(() => process.exit(0)).catch(() => {}) }
process.once('SIGTERM', stop)
process.once('SIGINT', stop)
process.once('disconnect', stop)
setTimeout(stop, Number(process.env.BENCH_SERVER_MAX_S ?? 1800) * 1000).unref()

app.server.keepAliveTimeout = 72_000
const port = Number(process.env.PORT ?? 0)
// The API's backlog: with Node's 511 a thousand connections at once overflow the listen queue, and the dropped SYNs'
// retries (1 s, then 3 s) would count as the HTTP layer's latency.
await app.listen({ host: '127.0.0.1', port, backlog: DEFAULT_LISTEN_BACKLOG })
const address = app.server.address()
process.send?.({ listening: typeof address === 'object' && address !== null ? address.port : port })
