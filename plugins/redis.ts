import fastifyRedis from '@fastify/redis'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { Redis } from 'ioredis'

export interface RedisOptions {
  url: string
  commandTimeoutMs: number
}

/**
 * ioredis's defaults queue commands and retry for a long time while Redis is down, which turns an outage into
 * hung requests. These settings make every command fail fast so callers can fall back (cache) or fail open
 * (rate limit), while the client keeps reconnecting in the background.
 */
export function createRedis (options: RedisOptions): Redis {
  return new Redis(options.url, {
    connectTimeout: 2000,
    commandTimeout: options.commandTimeoutMs,
    maxRetriesPerRequest: 1,
    enableOfflineQueue: false,
    enableAutoPipelining: true,
    retryStrategy: (attempt) => Math.min(attempt * 100, 2000),
    // Without a connection at boot the app still starts; @fastify/redis waits only for the first 'ready'.
    lazyConnect: false
  })
}

async function redisPlugin (app: FastifyInstance, options: RedisOptions) {
  const client = createRedis(options)
  let lastLogged = 0
  client.on('error', (error: Error) => {
    // An outage emits an error per reconnect attempt; one line every 10 s is enough to see it.
    const now = Date.now()
    if (now - lastLogged > 10_000) {
      lastLogged = now
      app.log.warn({ err: error }, 'redis connection error')
    }
  })
  await app.register(fastifyRedis, { client, closeClient: false })
  app.addHook('onClose', async () => {
    // quit() waits for Redis to answer; during an outage that would never happen, so fall back to disconnect.
    await Promise.race([client.quit().catch(() => {}), new Promise((resolve) => setTimeout(resolve, 1000).unref())])
    client.disconnect()
  })
}

export default fp(redisPlugin, { name: 'redis' })
