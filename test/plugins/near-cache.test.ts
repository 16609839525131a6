// Hot cache entries are also held in each API process (plugins/cache/near-cache.ts), and a write on any process
// still reaches every reader at once: two apps here stand for two API processes sharing Redis and PostgreSQL.
import { Cluster } from 'ioredis'
import t from 'tap'
import type { App } from '../../app.ts'
import { createNearCache } from '../../plugins/cache/near-cache.ts'
import { buildTestApp, createUser, testConfig, within } from '../helper.ts'
import { createRedis } from '../../plugins/redis/index.ts'

const metric = async (app: App, name: string) => {
  const sample = (await app.metrics.registry.getSingleMetric(name)?.get())?.values.find((v) => v.labels.cache === 'user' || v.labels.cache === undefined)
  return sample?.value ?? 0
}
const nearHits = (app: App) => metric(app, 'ledger_cache_near_hits_total')

async function until (check: () => boolean, what: string) {
  if (await within(5000, async () => check()) === Infinity) throw new Error(`timed out waiting for ${what}`)
}

t.test('a profile read again is served by the process itself, and a rename on another process is seen by the very next read', async (t) => {
  const reader = await buildTestApp(t)
  const writer = await buildTestApp(t)
  const alice = await createUser(writer)
  const bob = await createUser(reader)
  const read = async () => {
    const response = await reader.inject({ method: 'GET', url: `/users/${alice.id}`, headers: { authorization: bob.authorization } })
    t.equal(response.statusCode, 200)
    return response.json().name as string
  }
  await read() // a miss: loaded and stored in Redis
  await read() // a Redis hit, now held here
  const before = await nearHits(reader)
  for (let i = 0; i < 5; i++) await read()
  t.equal(await nearHits(reader) - before, 5, 'five reads, no Redis round trip for any of them')

  for (let round = 0; round < 20; round++) {
    const name = `Alice ${round}`
    const patch = await writer.inject({ method: 'PATCH', url: `/users/${alice.id}`, headers: { authorization: alice.authorization }, payload: { name } })
    t.equal(patch.statusCode, 200)
    t.equal(await read(), name, `round ${round}: the reader's next read after the writer's answer has the new name`)
    t.equal(await read(), name, `round ${round}: and keeps it`)
  }
})

t.test('a rename on the same process drops its own copy before answering', async (t) => {
  const app = await buildTestApp(t)
  const alice = await createUser(app)
  const bob = await createUser(app)
  const get = () => app.inject({ method: 'GET', url: `/users/${alice.id}`, headers: { authorization: bob.authorization } })
  await get()
  await get()
  const patch = await app.inject({ method: 'PATCH', url: `/users/${alice.id}`, headers: { authorization: alice.authorization }, payload: { name: 'Alice Here' } })
  t.equal(patch.statusCode, 200)
  t.equal((await get()).json().name, 'Alice Here')
})

t.test('when the invalidation connection drops, nothing held is served; it comes back by itself', async (t) => {
  const config = testConfig()
  const redis = createRedis({ url: config.REDIS_URL, commandTimeoutMs: config.REDIS_COMMAND_TIMEOUT_MS })
  const other = createRedis({ url: config.REDIS_URL, commandTimeoutMs: config.REDIS_COMMAND_TIMEOUT_MS })
  const errors: unknown[] = []
  // The near cache's connections are duplicates of this one and carry its name, so the kill below can pick this
  // cache's tracker alone: the suite's other apps share this Redis, and their trackers must not be cut.
  const name = `near-test-${crypto.randomUUID()}`
  if (redis instanceof Cluster) throw new Error('the near cache needs a single Redis')
  redis.options.connectionName = name
  const near = createNearCache(redis, { maxEntries: 100, maxAgeMs: 60_000, onError: (error) => { errors.push(error) } })
  t.teardown(() => { near?.close(); redis.disconnect(); other.disconnect() })
  if (near === undefined) throw new Error('no near cache on a single Redis')
  await until(() => near.active, 'tracking on')
  const key = `near-test:${crypto.randomUUID()}`
  await other.set(key, 'v1', 'EX', 60)
  t.equal(await near.get(key, () => true), 'v1')
  t.equal(near.peek(key), 'v1', 'held')

  await other.set(key, 'v2', 'EX', 60)
  await until(() => near.peek(key) === undefined, 'the invalidation message')
  t.equal(await near.get(key, () => true), 'v2', 'read again from Redis')
  t.equal(near.peek(key), 'v2')

  // Kill the connection that receives invalidations: what is held must go with it.
  const trackers = String(await other.call('CLIENT', 'LIST', 'TYPE', 'pubsub')).split('\n').filter((line) => line.includes('sub=1') && line.includes(` name=${name} `))
  t.equal(trackers.length, 1, 'this cache\'s tracker')
  for (const line of trackers) await other.call('CLIENT', 'KILL', 'ID', /id=(\d+)/.exec(line)![1]!)
  await until(() => !near.active, 'the near cache noticing')
  t.equal(near.peek(key), undefined, 'nothing held while invalidations cannot arrive')
  await other.set(key, 'v3', 'EX', 60)
  t.equal(await near.get(key, () => true), 'v3', 'reads go to Redis meanwhile')
  await until(() => near.active, 'tracking on again')
  t.equal(await near.get(key, () => true), 'v3')
  await other.set(key, 'v4', 'EX', 60)
  await until(() => near.peek(key) === undefined, 'invalidations after the reconnect')
  t.equal(await near.get(key, () => true), 'v4')

  t.equal(await near.get(`${key}:lease`, () => false), null, 'a missing key')
  await other.set(`${key}:lease`, 'not-a-value', 'EX', 60)
  t.equal(await near.get(`${key}:lease`, () => false), 'not-a-value')
  t.equal(near.peek(`${key}:lease`), undefined, 'what `keep` refuses is not held')
  await other.del(key, `${key}:lease`)
  t.same(errors, [])
})

t.test('a value is held no longer than its maximum age', async (t) => {
  const config = testConfig()
  const redis = createRedis({ url: config.REDIS_URL, commandTimeoutMs: config.REDIS_COMMAND_TIMEOUT_MS })
  const near = createNearCache(redis, { maxEntries: 2, maxAgeMs: 200, onError: () => {} })
  t.teardown(() => { near?.close(); redis.disconnect() })
  if (near === undefined) throw new Error('no near cache')
  await until(() => near.active, 'tracking on')
  const keys = [1, 2, 3].map((i) => `near-test:${crypto.randomUUID()}:${i}`)
  for (const key of keys) await redis.set(key, key, 'EX', 60)
  for (const key of keys) await near.get(key, () => true)
  t.equal(near.peek(keys[0]!), undefined, 'the oldest left when a third came (maxEntries 2)')
  t.equal(near.peek(keys[2]!), keys[2])
  await new Promise((resolve) => setTimeout(resolve, 250))
  t.equal(near.peek(keys[2]!), undefined, 'gone after its maximum age')
  await redis.del(...keys)
})
