import fastifyRateLimit, { type FastifyRateLimitStore, type RateLimitOptions } from '@fastify/rate-limit'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import type { Result } from 'ioredis'
import type { Principal } from '../auth/index.ts'
import { notFound, ProblemError, sendProblem, serviceUnavailable } from '../errors/index.ts'
import type { Metrics } from '../metrics/index.ts'
import type { RedisClient } from '../redis/index.ts'
import { traceRedis } from '../tracing/index.ts'

declare module 'ioredis' {
  interface RedisCommander<Context> {
    tokenBucket: (key: string, capacity: number, refillPerMs: number, cost: number) => Result<[number, string, number], Context>
  }
}

/**
 * One bucket is one Redis hash {tokens, ts}. Refill is computed from Redis's own clock (TIME), so every API
 * process on every machine agrees, and the whole read-refill-take-write runs atomically inside Redis. One key
 * per call keeps it valid on Redis Cluster: a bucket lives on one master, so one clock decides it (ioredis routes
 * the EVALSHA by its key's slot). An idle bucket expires once it would be full again anyway.
 * Returns {allowed, tokens left, ms until `cost` tokens are available (0 when allowed)}.
 */
const TOKEN_BUCKET_LUA = `
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = math.ceil((cost - tokens) / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate) + 1000)
return { allowed, tostring(tokens), wait }
`

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Set on every route the limiter applies to; the OpenAPI document reads it (429, RateLimit-* headers). */
    rateLimited?: boolean
  }
}

export interface TokenBucketResult {
  allowed: boolean
  /** Whole tokens left after this request. */
  remaining: number
  /** Milliseconds until the request could pass (refused) or until the bucket is full again (allowed). */
  resetMs: number
}

export interface TokenBucket {
  take: (key: string, capacity: number, refillPerSecond: number, cost?: number) => Promise<TokenBucketResult>
}

export function createTokenBucket (redis: RedisClient, keyPrefix = 'rl:'): TokenBucket {
  if (typeof redis.tokenBucket !== 'function') {
    // defineCommand sends EVALSHA and falls back to EVAL (loading the script) only when Redis lacks it.
    redis.defineCommand('tokenBucket', { numberOfKeys: 1, lua: TOKEN_BUCKET_LUA })
  }
  return {
    // Not async: every request takes a token, and chaining on the command's promise saves a wrapper promise per call.
    take (key, capacity, refillPerSecond, cost = 1) {
      const refillPerMs = refillPerSecond / 1000
      return traceRedis('EVALSHA', 'rate-limit token bucket', () => redis.tokenBucket(`${keyPrefix}${key}`, capacity, refillPerMs, cost))
        .then(([allowed, tokensText, waitMs]) => {
          const tokens = Number(tokensText)
          return {
            allowed: allowed === 1,
            remaining: Math.floor(tokens),
            resetMs: allowed === 1 ? Math.ceil((capacity - tokens) / refillPerMs) : waitMs
          }
        })
    }
  }
}

export interface Tier {
  capacity: number
  refillPerSecond: number
}

export interface RateLimitPluginOptions {
  tiers: Record<string, Tier>
  /** Limit of the public routes (signup, login), per client IP and per route. */
  publicTier: Tier
  failOpen: boolean
}

/**
 * The key a client address is limited under: an IPv4 address as it is, an IPv6 address by its /64 prefix (one
 * subscriber's network: a host picks any of its 2^64 addresses at will, so per-address limits would not limit it).
 * IPv4-mapped IPv6 (::ffff:a.b.c.d, a dual-stack socket) is the IPv4 address.
 */
export function clientAddressKey (address: string): string {
  if (!address.includes(':')) return address
  const lower = address.toLowerCase().replace(/%.*$/, '')
  const mapped = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/.exec(lower)
  if (mapped !== null) return mapped[1]!
  const [head = '', tail = ''] = lower.split('::', 2)
  const headGroups = head === '' ? [] : head.split(':')
  const tailGroups = lower.includes('::') ? (tail === '' ? [] : tail.split(':')) : []
  const missing = Math.max(0, 8 - headGroups.length - tailGroups.length)
  const groups = [...headGroups, ...Array<string>(missing).fill('0'), ...tailGroups]
  return `${groups.slice(0, 4).map((group) => group.padStart(4, '0')).join(':')}::/64`
}

/** The route config that turns a public route's limit into a per-IP (IPv6: per /64) one. */
export const publicRouteRateLimit = (group: string): RateLimitOptions => ({
  groupId: group,
  keyGenerator: (request: FastifyRequest) => `ip:${clientAddressKey(request.ip)}:`
})

// @fastify/jwt decorates every request with `user: null` until a token is verified (public routes, 404s).
const callerOf = (request: FastifyRequest): Principal | undefined => (request.user as Principal | null) ?? undefined
const tierOf = (request: FastifyRequest) => callerOf(request)?.tier ?? 'public'

async function rateLimitPlugin (app: FastifyInstance, options: RateLimitPluginOptions) {
  const bucket = createTokenBucket(app.redis)
  const metrics: Metrics = app.metrics
  const tierFor = (request: FastifyRequest): Tier => {
    const caller = callerOf(request)
    return caller === undefined || request.routeOptions.config?.public === true
      ? options.publicTier
      : options.tiers[caller.tier] ?? options.publicTier
  }

  let lastLogged = 0
  const redisFailed = (error: unknown) => {
    metrics.dependencyErrors.inc({ dependency: 'redis', operation: 'rate_limit' })
    const now = Date.now()
    if (now - lastLogged > 10_000) {
      lastLogged = now
      app.log.warn({ err: error, failOpen: options.failOpen }, 'rate limiter cannot reach redis')
    }
  }

  // @fastify/rate-limit owns the hooks and headers; this store gives it token-bucket answers in the shape it
  // expects: `current` above `max` means refused, `ttl` is when to come back (Retry-After / RateLimit-Reset).
  class TokenBucketStore implements FastifyRateLimitStore {
    incr (key: string, callback: (error: Error | null, result?: { current: number, ttl: number }) => void, timeWindow: number, max: number) {
      const refillPerSecond = max / (timeWindow / 1000)
      bucket.take(key, max, refillPerSecond).then((result) => {
        callback(null, { current: result.allowed ? max - result.remaining : max + 1, ttl: result.resetMs })
      }, (error: unknown) => {
        redisFailed(error)
        if (options.failOpen) callback(null, { current: 0, ttl: 0 })
        else callback(serviceUnavailable('rate limiter', error))
      })
    }

    child () {
      return new TokenBucketStore()
    }
  }

  await app.register(fastifyRateLimit, {
    global: true,
    hook: 'onRequest',
    store: TokenBucketStore,
    enableDraftSpec: true,
    // Failures are handled inside the store (fail open or 503), never by the plugin's own fallback.
    skipOnError: false,
    keyGenerator: (request) => {
      const caller = callerOf(request)
      return caller === undefined ? `ip:${clientAddressKey(request.ip)}` : `${caller.kind}:${caller.id}`
    },
    // The plugin's window/max pair carries the bucket's shape: capacity = max, refill = max per window.
    max: (request) => tierFor(request).capacity,
    timeWindow: (request) => {
      const tier = tierFor(request)
      return Math.round(tier.capacity / tier.refillPerSecond * 1000)
    },
    onExceeding: (request) => { metrics.rateLimitDecisions.inc({ tier: tierOf(request), decision: 'admitted' }) },
    onExceeded: (request) => { metrics.rateLimitDecisions.inc({ tier: tierOf(request), decision: 'rejected' }) },
    errorResponseBuilder: (request, context) => new ProblemError(429, 'rate_limited',
      `Too many requests; retry in ${Math.max(1, Math.ceil(context.ttl / 1000))} s.`)
  })

  // The limiter applies to every route registered from here on unless its config says `rateLimit: false`.
  app.addHook('onRoute', (route) => {
    if (route.config?.rateLimit !== false) route.config = { ...route.config, rateLimited: true }
  })

  // Unknown URLs cost a token too: unlimited 404s would let a client map the API for free.
  app.setNotFoundHandler({ preHandler: app.rateLimit() }, (request, reply) => sendProblem(request, reply, notFound('No such route.')))
}

/** The plugin's options from the configuration. */
export const autoConfig = (app: FastifyInstance): RateLimitPluginOptions => {
  const config = app.config
  return {
    tiers: {
      standard: { capacity: config.RATE_LIMIT_STANDARD_CAPACITY, refillPerSecond: config.RATE_LIMIT_STANDARD_REFILL_PER_S },
      pro: { capacity: config.RATE_LIMIT_PRO_CAPACITY, refillPerSecond: config.RATE_LIMIT_PRO_REFILL_PER_S },
      service: { capacity: config.RATE_LIMIT_SERVICE_CAPACITY, refillPerSecond: config.RATE_LIMIT_SERVICE_REFILL_PER_S }
    },
    publicTier: { capacity: config.RATE_LIMIT_PUBLIC_CAPACITY, refillPerSecond: config.RATE_LIMIT_PUBLIC_REFILL_PER_S },
    failOpen: config.RATE_LIMIT_FAIL_OPEN
  }
}

export default fp(rateLimitPlugin, { name: 'rate-limit', dependencies: ['redis', 'metrics', 'auth', 'errors'] })
