import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { Redis } from 'ioredis'
import type { Metrics } from './metrics.ts'
import { traceRedis } from './tracing.ts'

declare module 'fastify' {
  interface FastifyInstance {
    cache: CacheAside
  }
}

export interface CacheAsideOptions {
  /** Fraction of the TTL added at random (0.1 = up to +10 %), so keys written together expire apart. */
  jitter: number
  keyPrefix?: string
}

export interface CacheAside {
  /**
   * Returns the cached value for `key`, or loads it, stores it for `ttlSeconds` (plus jitter) and returns it.
   * `null` from the loader is returned but not cached. Redis failures fall back to the loader.
   */
  get: <T>(cache: string, key: string, ttlSeconds: number, loader: () => Promise<T | null>) => Promise<T | null>
  invalidate: (cache: string, key: string) => Promise<void>
}

export function createCacheAside (redis: Redis, metrics: Metrics, options: CacheAsideOptions, onError: (error: unknown, operation: string) => void): CacheAside {
  const prefix = options.keyPrefix ?? 'cache:'
  // Concurrent misses for one key inside this process share one load: a burst on a cold key costs one query.
  const inFlight = new Map<string, { promise: Promise<unknown>, stale: boolean }>()

  const redisKey = (cache: string, key: string) => `${prefix}${cache}:${key}`

  const failed = (error: unknown, operation: string) => {
    metrics.dependencyErrors.inc({ dependency: 'redis', operation })
    onError(error, operation)
  }

  async function load<T> (cache: string, key: string, ttlSeconds: number, loader: () => Promise<T | null>, flight: { stale: boolean }): Promise<T | null> {
    const fullKey = redisKey(cache, key)
    let cached: string | null = null
    try {
      cached = await traceRedis('GET', `cache get ${cache}`, () => redis.get(fullKey))
    } catch (error) {
      failed(error, 'cache_get')
    }
    if (cached !== null) {
      metrics.cacheRequests.inc({ cache, result: 'hit' })
      return JSON.parse(cached) as T
    }
    metrics.cacheRequests.inc({ cache, result: 'miss' })
    const value = await loader()
    // An invalidation while we were loading means our value may predate the write: serve it, do not store it.
    if (value !== null && !flight.stale) {
      const ttl = Math.round(ttlSeconds * (1 + Math.random() * options.jitter))
      try {
        await traceRedis('SET', `cache set ${cache}`, () => redis.set(fullKey, JSON.stringify(value), 'EX', ttl))
      } catch (error) {
        failed(error, 'cache_set')
      }
    }
    return value
  }

  return {
    get<T> (cache: string, key: string, ttlSeconds: number, loader: () => Promise<T | null>) {
      const fullKey = redisKey(cache, key)
      const pending = inFlight.get(fullKey)
      if (pending !== undefined) return pending.promise as Promise<T | null>
      const flight = { promise: Promise.resolve() as Promise<unknown>, stale: false }
      const promise = load(cache, key, ttlSeconds, loader, flight).finally(() => {
        if (inFlight.get(fullKey) === flight) inFlight.delete(fullKey)
      })
      flight.promise = promise
      inFlight.set(fullKey, flight)
      return promise
    },
    async invalidate (cache: string, key: string) {
      const fullKey = redisKey(cache, key)
      // A load that started before the write must not put the old value back after we delete it, and
      // later readers must not join it.
      const flight = inFlight.get(fullKey)
      if (flight !== undefined) {
        flight.stale = true
        inFlight.delete(fullKey)
      }
      try {
        await traceRedis('DEL', `cache invalidate ${cache}`, () => redis.del(fullKey))
      } catch (error) {
        // The write already committed; a stale entry now lives at most one TTL. Count it so it is seen.
        failed(error, 'cache_invalidate')
      }
    }
  }
}

async function cacheAsidePlugin (app: FastifyInstance, options: CacheAsideOptions) {
  app.decorate('cache', createCacheAside(app.redis, app.metrics, options, (error, operation) => {
    app.log.warn({ err: error, operation }, 'cache unavailable, served from the database')
  }))
}

export default fp(cacheAsidePlugin, { name: 'cache-aside', dependencies: ['redis', 'metrics'] })
