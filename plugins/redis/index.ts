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
  if (options.clusterNodes !== undefined && options.clusterNodes.length > 0) {
    const cluster = createCluster(options.clusterNodes, options)
    cluster.on('+node', (node: Redis) => { coalesceWrites(node) })
    return cluster
  }
  return coalesceWrites(new Redis(options.url, {
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
  }))
}

const coalesced = Symbol('ledger-api coalesced writes')

/**
 * Every command issued during one turn of the event loop leaves in one write to the socket. Without auto-pipelining
 * (off, see above) ioredis writes each command on its own, and each write is a system call that also runs the
 * loopback or network stack: under load the rate-limit script and the cache read of each request were a third of
 * the API's CPU in a profile. The socket is corked at the first command of a turn and uncorked once the turn's
 * I/O callbacks have run (setImmediate), so the requests whose bytes arrived together send their commands together.
 * Unlike auto-pipelining nothing waits for earlier replies: each command is on the wire by the end of the turn and
 * keeps its own timeout, so a hung Redis still costs a command one REDIS_COMMAND_TIMEOUT_MS.
 */
export function coalesceWrites (client: Redis): Redis {
  const marked = client as Redis & { [coalesced]?: true }
  if (marked[coalesced] === true) return client
  marked[coalesced] = true
  const send = client.sendCommand
  let corked: Redis['stream'] | undefined
  const uncork = () => {
    const socket = corked
    corked = undefined
    socket?.uncork()
  }
  client.sendCommand = function (this: Redis, ...args: Parameters<Redis['sendCommand']>) {
    // `stream` is where a command goes when it is not the client's own socket (ioredis's ready check); left alone.
    const socket = args[1] === undefined ? client.stream : undefined
    if (corked === undefined && socket !== undefined && socket.writable) {
      socket.cork()
      corked = socket
      setImmediate(uncork)
    }
    return send.apply(this, args)
  }
  return client
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

/** The plugin's options from the configuration. */
export const autoConfig = (app: FastifyInstance): RedisOptions =>
  ({ url: app.config.REDIS_URL, commandTimeoutMs: app.config.REDIS_COMMAND_TIMEOUT_MS, clusterNodes: app.config.REDIS_CLUSTER_NODES })

export default fp(redisPlugin, { name: 'redis' })
