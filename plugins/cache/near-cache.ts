import { Redis } from 'ioredis'
import { coalesceWrites, type RedisClient } from '../redis/index.ts'

export interface NearCacheOptions {
  /** Values held in this process at most; 0 turns the near cache off. */
  maxEntries: number
  /**
   * How long a value is served from this process at most. Redis tells every process when a value it read changes, so
   * this only bounds the damage of an invalidation lost without the connection visibly closing.
   */
  maxAgeMs: number
  onError: (error: unknown) => void
}

export interface NearCache {
  /** The value held in this process for `key`, if Redis has not said it changed since it was read. */
  peek: (key: string) => string | undefined
  /**
   * GETs `key` on the tracked connection, so that Redis will say when it changes, and holds the value when `keep`
   * accepts it and nothing was invalidated while the GET was out.
   */
  get: (key: string, keep: (value: string) => boolean) => Promise<string | null>
  /** This process changed `key` (or is about to): drop it here now, without waiting for Redis's message. */
  forget: (key: string) => void
  /** Whether values are being held (both connections up and tracking confirmed). */
  readonly active: boolean
  close: () => void
}

const INVALIDATE_CHANNEL = '__redis__:invalidate'

/**
 * Server-assisted client-side caching (Redis CLIENT TRACKING) for cache-aside reads, so a hot entry costs no Redis
 * round trip while the cache stays shared and its invalidation immediate. Reads go through a connection of their own
 * with tracking on: Redis remembers which keys it read and, when one is written, deleted or expires, sends the key on
 * a second connection subscribed to `__redis__:invalidate` (RESP2 redirect mode: ioredis delivers no RESP3
 * invalidation pushes). Redis queues that message for this process while it runs the write, before it answers the
 * writer, so a request that follows the writer's answer finds the message read here first.
 *
 * Every way it can go wrong drops everything held: either connection closing, a flush (a message without keys). A
 * GET racing an invalidation of any key is served but not held. Redis Cluster is not supported (the near cache is
 * off there: each node would need its own tracking connection).
 */
export function createNearCache (main: RedisClient, options: NearCacheOptions): NearCache | undefined {
  if (options.maxEntries <= 0 || !(main instanceof Redis)) return undefined
  const reader = coalesceWrites(main.duplicate())
  const tracker = main.duplicate({ protocol: 2, autoResubscribe: false })
  const entries = new Map<string, { value: string, untilMs: number }>()
  // Bumped by anything that may make a value read before it stale: a GET that started in an older epoch is not held.
  let epoch = 0
  let active = false
  let closed = false
  let trackerId: number | undefined

  const reset = () => {
    active = false
    epoch++
    entries.clear()
  }

  async function activate () {
    if (closed || reader.status !== 'ready' || tracker.status !== 'ready') return
    const started = epoch
    try {
      if (trackerId === undefined) {
        const id = await tracker.client('ID')
        await tracker.subscribe(INVALIDATE_CHANNEL)
        trackerId = id
      }
      await reader.call('CLIENT', 'TRACKING', 'ON', 'REDIRECT', String(trackerId))
      // A connection that closed meanwhile reset the epoch; its 'ready' runs this again.
      if (!closed && epoch === started) active = true
    } catch (error) {
      reset()
      options.onError(error)
    }
  }

  // The keys that changed, or none at all when the whole database was flushed.
  tracker.on('messageBuffer', (channel: Buffer, keys: unknown) => {
    if (channel.toString() !== INVALIDATE_CHANNEL) return
    epoch++
    if (!Array.isArray(keys)) entries.clear()
    else for (const key of keys as Buffer[]) entries.delete(key.toString())
  })
  tracker.on('close', () => {
    trackerId = undefined
    reset()
  })
  reader.on('close', reset)
  // One activation at a time (both connections coming back would otherwise ask the subscribed tracker its id).
  let activation: Promise<void> | undefined
  let again = false
  const requestActivation = () => {
    if (activation !== undefined) {
      again = true
      return
    }
    activation = activate().finally(() => {
      activation = undefined
      if (again) {
        again = false
        requestActivation()
      }
    })
  }
  tracker.on('ready', requestActivation)
  reader.on('ready', requestActivation)
  // Errors are the main client's to report (plugins/redis/index.ts); these connections reconnect by themselves.
  tracker.on('error', () => {})
  reader.on('error', () => {})

  return {
    get active () { return active },
    peek (key) {
      if (!active) return undefined
      const entry = entries.get(key)
      if (entry === undefined) return undefined
      if (entry.untilMs > Date.now()) return entry.value
      entries.delete(key)
      return undefined
    },
    async get (key, keep) {
      // Not tracked yet (starting, reconnecting): a plain GET, held nowhere.
      if (!active) return main.get(key)
      const started = epoch
      const value = await reader.get(key)
      if (value !== null && active && epoch === started && keep(value)) {
        if (entries.size >= options.maxEntries) entries.delete(entries.keys().next().value!)
        entries.set(key, { value, untilMs: Date.now() + options.maxAgeMs })
      }
      return value
    },
    forget (key) {
      epoch++
      entries.delete(key)
    },
    close () {
      closed = true
      reset()
      reader.disconnect()
      tracker.disconnect()
    }
  }
}
