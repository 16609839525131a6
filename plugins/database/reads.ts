import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { Sql } from './index.ts'
import { isUnavailableError } from '../errors/index.ts'
import type { Metrics } from '../metrics/index.ts'
import type { RedisClient } from '../redis/index.ts'
import { traceRedis } from '../tracing/index.ts'

declare module 'fastify' {
  interface FastifyInstance {
    /** Routes list and feed reads to the replica, except a caller's own reads just after they wrote. */
    reads: ReadRouter
  }
}

export interface ReadRouter {
  /**
   * Runs a read for `userId`'s request on the replica, or on the primary when there is no replica, when the user
   * wrote within the read-your-writes window (or that cannot be checked), or when the replica is unreachable.
   */
  read: <T>(userId: string, query: (sql: Sql) => Promise<T>) => Promise<T>
  /** Records that `userId` just committed a write; call it before answering the write. No-op without a replica. */
  wrote: (userId: string) => Promise<void>
}

export interface ReadRouterOptions {
  primary: Sql
  replica: Sql | null
  redis: RedisClient
  /** How long after a write the writer's reads stay on the primary (should exceed the replica's usual lag). */
  windowMs: number
  keyPrefix?: string
  onError: (error: unknown, dependency: 'redis' | 'replica', operation: string) => void
}

// A replica that cannot serve right now is what makes any dependency unavailable (errors.ts: connection failures,
// a server shutting down or out of slots, and 40001, which on a hot standby means "canceled due to conflict with
// recovery"), except our own guard rails firing: a read that hits the statement or lock timeout, or a deadlock,
// would do the same on the primary, so it is not retried there.
const sameOnPrimary = new Set(['57014', '55P03', '40P01'])
const isReplicaUnavailable = (error: unknown) =>
  isUnavailableError(error) && !sameOnPrimary.has(String((error as { code?: unknown }).code))

/**
 * Read-your-writes across processes: a write leaves `ryw:<userId>` in Redis for the window (one key, so fine on
 * Redis Cluster), and a read checks it before choosing the replica. The writing process also remembers it in
 * memory, so its own next read needs no Redis round trip. Everything fails towards the primary: Redis down means
 * "maybe wrote recently", a replica down means "read the primary". Without a replica nothing here touches Redis.
 */
export function createReadRouter (options: ReadRouterOptions): ReadRouter {
  const { primary, replica, redis, windowMs } = options
  const prefix = options.keyPrefix ?? 'ryw:'
  const recent = new Map<string, number>()

  const remember = (userId: string, until: number) => {
    recent.set(userId, until)
    // Bounded by writers per window; swept when it grows, so an idle process does not hold old entries forever.
    if (recent.size > 10_000) {
      const now = Date.now()
      for (const [id, expiry] of recent) if (expiry <= now) recent.delete(id)
    }
  }

  async function wroteRecently (userId: string): Promise<boolean> {
    const until = recent.get(userId)
    if (until !== undefined) {
      if (until > Date.now()) return true
      recent.delete(userId)
    }
    try {
      return await traceRedis('EXISTS', 'read-your-writes check', () => redis.exists(`${prefix}${userId}`)) === 1
    } catch (error) {
      options.onError(error, 'redis', 'read_your_writes_check')
      return true
    }
  }

  return {
    async read (userId, query) {
      if (replica === null || await wroteRecently(userId)) return query(primary)
      try {
        return await query(replica)
      } catch (error) {
        if (!isReplicaUnavailable(error)) throw error
        options.onError(error, 'replica', 'read')
        return query(primary)
      }
    },
    async wrote (userId) {
      if (replica === null) return
      remember(userId, Date.now() + windowMs)
      try {
        await traceRedis('SET', 'read-your-writes mark', () => redis.set(`${prefix}${userId}`, '1', 'PX', windowMs))
      } catch (error) {
        // This process still remembers; other processes fall back to the primary only if Redis is down for them too.
        options.onError(error, 'redis', 'read_your_writes_mark')
      }
    }
  }
}

async function readsPlugin (app: FastifyInstance, options: { windowS: number }) {
  const metrics: Metrics = app.metrics
  let lastLogged = 0
  app.decorate('reads', createReadRouter({
    primary: app.db,
    replica: app.dbReplica,
    redis: app.redis,
    windowMs: options.windowS * 1000,
    onError: (error, dependency, operation) => {
      metrics.dependencyErrors.inc({ dependency: dependency === 'replica' ? 'postgres_replica' : 'redis', operation })
      const now = Date.now()
      if (now - lastLogged > 10_000) {
        lastLogged = now
        app.log.warn({ err: error, operation }, dependency === 'replica' ? 'read replica unavailable, read the primary' : 'read-your-writes check failed, read the primary')
      }
    }
  }))
}

/** The plugin's options from the configuration. */
export const autoConfig = (app: FastifyInstance) => ({ windowS: app.config.READ_YOUR_WRITES_S })

export default fp(readsPlugin, { name: 'reads', dependencies: ['database', 'redis', 'metrics'] })
