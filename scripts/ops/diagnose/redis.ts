// 4. Redis INFO: keyspace hit ratio, memory and eviction.
import { Redis } from 'ioredis'
import { columns, int, pct, ratio, redact, table } from '../format.ts'

export const title = '4. Redis (INFO)'

export type Data = Awaited<ReturnType<typeof read>>

export async function read (url: string) {
  // Fails fast instead of ioredis's default of retrying for ever while Redis is down.
  const client = new Redis(url, { lazyConnect: true, connectTimeout: 3000, commandTimeout: 3000, maxRetriesPerRequest: 0, enableOfflineQueue: false, retryStrategy: () => null })
  // Without retries ioredis rejects with "Connection is closed."; the reason is in the last 'error' event.
  let lastError: unknown
  client.on('error', (error) => { lastError = error })
  try {
    await client.connect().catch((error: unknown) => { throw lastError ?? error })
    const info = new Map<string, string>()
    for (const line of (await client.info()).split(/\r?\n/)) {
      const colon = line.indexOf(':')
      if (colon > 0 && !line.startsWith('#')) info.set(line.slice(0, colon), line.slice(colon + 1))
    }
    const field = (name: string) => info.get(name) ?? ''
    const hits = Number(field('keyspace_hits'))
    const misses = Number(field('keyspace_misses'))
    const keys: Record<string, number> = {}
    for (const [name, value] of info) {
      if (/^db\d+$/.test(name)) keys[name] = Number(/keys=(\d+)/.exec(value)?.[1] ?? 0)
    }
    return {
      source: redact(url),
      version: field('redis_version'),
      keyspaceHits: hits,
      keyspaceMisses: misses,
      hitRatio: ratio(hits, hits + misses),
      usedMemoryHuman: field('used_memory_human'),
      usedMemoryPeakHuman: field('used_memory_peak_human'),
      maxmemory: Number(field('maxmemory')),
      maxmemoryHuman: field('maxmemory_human'),
      maxmemoryPolicy: field('maxmemory_policy'),
      evictedKeys: Number(field('evicted_keys')),
      expiredKeys: Number(field('expired_keys')),
      connectedClients: Number(field('connected_clients')),
      opsPerS: Number(field('instantaneous_ops_per_sec')),
      keys
    }
  } finally {
    client.disconnect()
  }
}

export function render (r: Data): string[] {
  return [table(columns('field', 'value'), [
    ['version', r.version],
    ['keyspace hit ratio', `${pct(r.hitRatio)} (${int(r.keyspaceHits)} hits, ${int(r.keyspaceMisses)} misses)`],
    ['used_memory_human', `${r.usedMemoryHuman} (peak ${r.usedMemoryPeakHuman})`],
    ['maxmemory', r.maxmemory === 0 ? '0 (no limit)' : `${r.maxmemoryHuman} (${r.maxmemoryPolicy})`],
    ['evicted / expired keys', `${int(r.evictedKeys)} / ${int(r.expiredKeys)}`],
    ['clients, ops/s', `${int(r.connectedClients)}, ${int(r.opsPerS)}`],
    ['keys', Object.entries(r.keys).map(([db, n]) => `${db}=${int(n)}`).join(' ') || 'none']
  ])]
}
