import fastifyRedis from '@fastify/redis'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { Cluster, Redis, type ClusterNode } from 'ioredis'

/**
 * One Redis, or a Redis Cluster (REDIS_CLUSTER_NODES). Both share ioredis's command interface, so the cache,
 * the rate limiter and the health check are written once. Keys are cluster-ready: every command and every Lua
 * call touches exactly one key (rate-limit buckets, cache entries, read-your-writes marks); a future script that
 * needs two keys must hash-tag them into one slot (`rl:{user:<id>}` and `ryw:{user:<id>}`).
 */
export type RedisClient = Redis | Cluster

export interface RedisOptions {
  url: string
  commandTimeoutMs: number
  /** Seed nodes (host:port); when set the client runs in cluster mode. */
  clusterNodes?: string[] | undefined
}

const CONNECT_TIMEOUT_MS = 2000
const reconnectDelay = (attempt: number) => Math.min(attempt * 100, 2000)

/**
 * ioredis's defaults queue commands and retry for a long time while Redis is down, which turns an outage into
 * hung requests. These settings make every command fail fast so callers can fall back (cache) or fail open
 * (rate limit), while the client keeps reconnecting in the background.
 */
export function createRedis (options: RedisOptions): RedisClient {
  if (options.clusterNodes !== undefined && options.clusterNodes.length > 0) return createCluster(options.clusterNodes, options)
  return new Redis(options.url, {
    connectTimeout: CONNECT_TIMEOUT_MS,
    commandTimeout: options.commandTimeoutMs,
    maxRetriesPerRequest: 1,
    enableOfflineQueue: false,
    // No auto-pipelining: ioredis runs one auto-pipeline at a time, so while Redis hangs (SIGSTOP, CLIENT PAUSE) each
    // batch waits out the previous batch's timeout before its own starts, and a request's command takes k times
    // REDIS_COMMAND_TIMEOUT_MS instead of once. Commands are still written without waiting for earlier replies.
    enableAutoPipelining: false,
    retryStrategy: reconnectDelay,
    // Without a connection at boot the app still starts; the plugin waits only for the first 'ready'.
    lazyConnect: false
  })
}

function toClusterNode (hostPort: string): ClusterNode {
  const separator = hostPort.lastIndexOf(':')
  return { host: hostPort.slice(0, separator), port: Number(hostPort.slice(separator + 1)) }
}

/**
 * The same fail-fast behaviour in cluster mode. Two differences from a single Redis: `enableOfflineQueue` is a
 * cluster option (the cluster refuses commands until it has the slot map), and per-node settings such as
 * `commandTimeout` go under `redisOptions` (node connections queue while reconnecting, but the timeout still
 * bounds every command). Credentials and TLS come from REDIS_URL; a cluster has no database index.
 */
function createCluster (nodes: string[], options: RedisOptions): Cluster {
  const url = new URL(options.url)
  return new Cluster(nodes.map(toClusterNode), {
    enableOfflineQueue: false,
    // As for a single Redis: a hung node must cost a command one timeout, not a queue of them.
    enableAutoPipelining: false,
    clusterRetryStrategy: reconnectDelay,
    slotsRefreshTimeout: CONNECT_TIMEOUT_MS,
    redisOptions: {
      connectTimeout: CONNECT_TIMEOUT_MS,
      commandTimeout: options.commandTimeoutMs,
      maxRetriesPerRequest: 1,
      ...(url.username !== '' ? { username: decodeURIComponent(url.username) } : {}),
      ...(url.password !== '' ? { password: decodeURIComponent(url.password) } : {}),
      ...(url.protocol === 'rediss:' ? { tls: {} } : {})
    },
    lazyConnect: false
  })
}

/**
 * Resolves once the client is ready (@fastify/redis waits like this only for the clients it creates itself).
 * Refused connections are waited out while the client reconnects (Fastify's plugin timeout bounds the wait); an
 * error Redis itself returns (wrong password), an unknown host or the client giving up fails the boot.
 */
function whenReady (client: RedisClient): Promise<void> {
  if (client.status === 'ready') return Promise.resolve()
  return new Promise((resolve, reject) => {
    const cleanup = () => {
      client.off('ready', onReady)
      client.off('error', onError)
      client.off('end', onEnd)
    }
    const onReady = () => { cleanup(); resolve() }
    const onEnd = () => { cleanup(); reject(new Error('redis connection ended before it was ready')) }
    const onError = (error: Error) => {
      if (error.name === 'ReplyError' || (error as NodeJS.ErrnoException).code === 'ENOTFOUND') { cleanup(); reject(error) }
    }
    client.on('ready', onReady)
    client.on('error', onError)
    client.on('end', onEnd)
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
  // @fastify/redis decorates `app.redis` with the client made here. Its decorator is typed as a single Redis;
  // in cluster mode it holds a Cluster, which shares the command interface every caller uses (callers take
  // `RedisClient`, so nothing here relies on single-node-only methods). closeClient: false, because its close is
  // a bare quit(), which never resolves while Redis is down.
  await app.register(fastifyRedis, { client, closeClient: false })
  app.addHook('onClose', async () => {
    // quit() waits for Redis to answer; during an outage that would never happen, so fall back to disconnect.
    await Promise.race([client.quit().catch(() => {}), new Promise((resolve) => setTimeout(resolve, 1000).unref())])
    client.disconnect()
  })
  await whenReady(client)
}

export default fp(redisPlugin, { name: 'redis' })
