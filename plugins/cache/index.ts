import { randomUUID } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { Result } from 'ioredis'
import type { Metrics } from '../metrics/index.ts'
import { createNearCache, type NearCache } from './near-cache.ts'
import type { RedisClient } from '../redis/index.ts'
import { traceRedis } from '../tracing/index.ts'

declare module 'fastify' {
  interface FastifyInstance {
    cache: CacheAside
  }
}

declare module 'ioredis' {
  interface RedisCommander<Context> {
    cacheFill: (key: string, lease: string, value: string, ttlSeconds: number) => Result<number, Context>
    cacheRelease: (key: string, lease: string) => Result<number, Context>
  }
}

/**
 * Leases make invalidation hold across processes. A reader that misses puts a lease (a unique token) in the
 * entry's own key before loading, and stores its value only if the key still holds that lease (compare-and-set in
 * Lua, one key: valid on Redis Cluster). An invalidation from any process deletes the key, lease included, so a
 * load that began before someone else's write can no longer put the old value back afterwards. Values are JSON,
 * which never starts with NUL, so a lease can never be mistaken for one.
 */
const LEASE_PREFIX = '\u0000lease:'
const isValue = (stored: string) => !stored.startsWith(LEASE_PREFIX)
const FILL_LUA = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
`
const RELEASE_LUA = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`

export interface CacheAsideOptions {
  /** Fraction of the TTL added at random (0.1 = up to +10 %), so keys written together expire apart. */
  jitter: number
  /** Entries also held in this process while Redis says they are unchanged (plugins/cache/near-cache.ts); none by default. */
  near?: NearCache | undefined
  keyPrefix?: string
  /** How long a reader's lease lasts (ms): a load slower than this is served but not stored. */
  leaseMs?: number
}

export interface CacheAside {
  /**
   * Returns the cached value for `key`, or loads it, stores it for `ttlSeconds` (plus jitter) and returns it.
   * `null` from the loader is returned but not cached. Redis failures fall back to the loader.
   */
  get: <T>(cache: string, key: string, ttlSeconds: number, loader: () => Promise<T | null>) => Promise<T | null>
  invalidate: (cache: string, key: string) => Promise<void>
  /**
   * Invalidates many keys of one cache at once (a feed fan-out batch: up to one key per follower). Each key is its
   * own single-key UNLINK, all sent together: the client's auto-pipelining writes them in one batch per node, so the
   * cost is one round trip per Redis node, not per key, and no command spans two hash slots (valid on a Cluster).
   */
  invalidateMany: (cache: string, keys: readonly string[]) => Promise<void>
}

export function createCacheAside (redis: RedisClient, metrics: Metrics, options: CacheAsideOptions, onError: (error: unknown, operation: string) => void): CacheAside {
  const prefix = options.keyPrefix ?? 'cache:'
  const near = options.near
  const leaseMs = options.leaseMs ?? 10_000
  // Concurrent misses for one key inside this process share one load: a burst on a cold key costs one query.
  const inFlight = new Map<string, { promise: Promise<unknown>, stale: boolean }>()
  if (typeof redis.cacheFill !== 'function') {
    redis.defineCommand('cacheFill', { numberOfKeys: 1, lua: FILL_LUA })
    redis.defineCommand('cacheRelease', { numberOfKeys: 1, lua: RELEASE_LUA })
  }

  const redisKey = (cache: string, key: string) => `${prefix}${cache}:${key}`

  const failed = (error: unknown, operation: string) => {
    metrics.dependencyErrors.inc({ dependency: 'redis', operation })
    onError(error, operation)
  }

  async function takeLease (cache: string, fullKey: string): Promise<string | undefined> {
    const lease = `${LEASE_PREFIX}${randomUUID()}`
    try {
      const taken = await traceRedis('SET', `cache lease ${cache}`, () => redis.set(fullKey, lease, 'PX', leaseMs, 'NX'))
      return taken === 'OK' ? lease : undefined
    } catch (error) {
      failed(error, 'cache_lease')
      return undefined
    }
  }

  async function load<T> (cache: string, fullKey: string, ttlSeconds: number, loader: () => Promise<T | null>, flight: { stale: boolean }): Promise<T | null> {
    let cached: string | null = null
    let reachable = true
    try {
      cached = await traceRedis('GET', `cache get ${cache}`, () => near === undefined ? redis.get(fullKey) : near.get(fullKey, isValue))
    } catch (error) {
      reachable = false
      failed(error, 'cache_get')
    }
    if (cached !== null && isValue(cached)) {
      metrics.cacheRequests.inc({ cache, result: 'hit' })
      return JSON.parse(cached) as T
    }
    metrics.cacheRequests.inc({ cache, result: 'miss' })
    // Someone else's lease means another process is loading: load too, but leave storing to the lease holder.
    // With Redis unreachable there is nothing to store into either.
    const lease = reachable && cached === null ? await takeLease(cache, fullKey) : undefined
    let value: T | null
    try {
      value = await loader()
    } catch (error) {
      if (lease !== undefined) await release(cache, fullKey, lease)
      throw error
    }
    if (lease === undefined) return value
    // An invalidation while we were loading means our value may predate the write: serve it, do not store it
    // (in this process the flag says so; from another process the deleted lease does).
    if (value === null || flight.stale) {
      await release(cache, fullKey, lease)
      return value
    }
    const ttl = Math.round(ttlSeconds * (1 + Math.random() * options.jitter))
    try {
      await traceRedis('EVALSHA', `cache set ${cache}`, () => redis.cacheFill(fullKey, lease, JSON.stringify(value), ttl))
    } catch (error) {
      failed(error, 'cache_set')
    }
    return value
  }

  async function release (cache: string, fullKey: string, lease: string) {
    try {
      await traceRedis('EVALSHA', `cache release ${cache}`, () => redis.cacheRelease(fullKey, lease))
    } catch (error) {
      // The lease expires by itself within leaseMs.
      failed(error, 'cache_release')
    }
  }

  // A load that started before the write must not put the old value back after we delete it, and later readers
  // must not join it.
  const markStale = (fullKey: string) => {
    near?.forget(fullKey)
    const flight = inFlight.get(fullKey)
    if (flight !== undefined) {
      flight.stale = true
      inFlight.delete(fullKey)
    }
  }

  return {
    get<T> (cache: string, key: string, ttlSeconds: number, loader: () => Promise<T | null>) {
      const fullKey = redisKey(cache, key)
      // Held in this process: no Redis round trip, and nothing to share with concurrent readers.
      const held = near?.peek(fullKey)
      if (held !== undefined) {
        metrics.cacheRequests.inc({ cache, result: 'hit' })
        metrics.cacheNearHits.inc({ cache })
        return Promise.resolve(JSON.parse(held) as T)
      }
      const pending = inFlight.get(fullKey)
      if (pending !== undefined) return pending.promise as Promise<T | null>
      const flight = { promise: Promise.resolve() as Promise<unknown>, stale: false }
      const promise = load(cache, fullKey, ttlSeconds, loader, flight).finally(() => {
        if (inFlight.get(fullKey) === flight) inFlight.delete(fullKey)
      })
      flight.promise = promise
      inFlight.set(fullKey, flight)
      return promise
    },
    async invalidate (cache: string, key: string) {
      const fullKey = redisKey(cache, key)
      markStale(fullKey)
      try {
        await traceRedis('DEL', `cache invalidate ${cache}`, () => redis.del(fullKey))
      } catch (error) {
        // The write already committed; a stale entry now lives at most one TTL. Count it so it is seen.
        failed(error, 'cache_invalidate')
      }
    },
    async invalidateMany (cache: string, keys: readonly string[]) {
      if (keys.length === 0) return
      const fullKeys = keys.map((key) => redisKey(cache, key))
      for (const fullKey of fullKeys) markStale(fullKey)
      try {
        await traceRedis('UNLINK', `cache invalidate ${cache} (${fullKeys.length} keys)`, () => Promise.all(fullKeys.map((fullKey) => redis.unlink(fullKey))))
      } catch (error) {
        failed(error, 'cache_invalidate')
      }
    }
  }
}

export interface CacheAsidePluginOptions {
  jitter: number
  /** The near cache: its size per process (0: off) and how long it holds a value at most; without it, none. */
  near?: { maxEntries: number, maxAgeMs: number }
}

async function cachePlugin (app: FastifyInstance, options: CacheAsidePluginOptions) {
  const near = options.near === undefined
    ? undefined
    : createNearCache(app.redis, {
      ...options.near,
      onError: (error) => { app.log.warn({ err: error }, 'near cache off until its connections are back: reads go to redis') }
    })
  app.addHook('onClose', async () => { near?.close() })
  app.decorate('cache', createCacheAside(app.redis, app.metrics, { jitter: options.jitter, near }, (error, operation) => {
    app.log.warn({ err: error, operation }, 'cache unavailable, served from the database')
  }))
}

/**
 * The plugin's options from the configuration. A process that serves no reads (the standalone worker only
 * invalidates) holds no near cache: it would only cost two more Redis connections.
 */
export const autoConfig = (app: FastifyInstance, servesReads: boolean): CacheAsidePluginOptions => ({
  jitter: app.config.CACHE_JITTER,
  ...(servesReads ? { near: { maxEntries: app.config.CACHE_NEAR_MAX_ENTRIES, maxAgeMs: app.config.CACHE_NEAR_MAX_AGE_MS } } : {})
})

export default fp(cachePlugin, { name: 'cache', dependencies: ['redis', 'metrics'] })
