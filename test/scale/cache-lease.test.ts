// Two cache-aside instances on one Redis stand for two API processes: each has its own in-process state, so only
// what travels through Redis (the lease) can keep one process's slow load from undoing the other's invalidation.
import { randomUUID } from 'node:crypto'
import t from 'tap'
import { createCacheAside } from '../../plugins/cache/index.ts'
import { createMetrics } from '../../plugins/metrics/index.ts'
import { buildTestApp } from '../helper.ts'

const app = await buildTestApp(t)
await app.ready()
const noError = (error: unknown) => { throw error }
const processA = createCacheAside(app.redis, createMetrics(), { jitter: 0, keyPrefix: 'lease-test:' }, noError)
const processB = createCacheAside(app.redis, createMetrics(), { jitter: 0, keyPrefix: 'lease-test:' }, noError)

function deferred<T> () {
  let resolve!: (value: T) => void
  const promise = new Promise<T>((_resolve) => { resolve = _resolve })
  return { promise, resolve }
}

t.test('a load that began before another process invalidated does not store its old value', async (t) => {
  const key = randomUUID()
  let row = 'old'
  const loadStarted = deferred<void>()
  const finishLoad = deferred<void>()
  // Process A misses and starts reading the row; the read is slow.
  const slowRead = processA.get('profile', key, 60, async () => {
    const value = row
    loadStarted.resolve()
    await finishLoad.promise
    return value
  })
  await loadStarted.promise
  // Meanwhile process B commits a new value and invalidates.
  row = 'new'
  await processB.invalidate('profile', key)
  finishLoad.resolve()
  t.equal(await slowRead, 'old', 'A still answers its own request with what it read')
  t.equal(await app.redis.get(`lease-test:profile:${key}`), null, 'but does not cache it')
  t.equal(await processB.get('profile', key, 60, async () => row), 'new', 'the next reader anywhere loads the new value')
  t.equal(await processA.get('profile', key, 60, async () => 'never loaded'), 'new', 'and it is what gets cached')
})

t.test('without an invalidation the lease holder stores the value; others load without storing', async (t) => {
  const key = randomUUID()
  const finishLoad = deferred<void>()
  const loadStarted = deferred<void>()
  const first = processA.get('profile', key, 60, async () => {
    loadStarted.resolve()
    await finishLoad.promise
    return 'v1'
  })
  await loadStarted.promise
  // B misses while A holds the lease: it loads for its own caller but leaves storing to A.
  t.equal(await processB.get('profile', key, 60, async () => 'v1 as read by B'), 'v1 as read by B')
  finishLoad.resolve()
  t.equal(await first, 'v1')
  t.equal(await app.redis.get(`lease-test:profile:${key}`), JSON.stringify('v1'), 'A stored its value')
  const ttl = await app.redis.ttl(`lease-test:profile:${key}`)
  t.ok(ttl > 50 && ttl <= 60, `with the cache TTL (${ttl} s), not the lease's`)
})

t.test('a miss that loads nothing, or fails, gives its lease back at once', async (t) => {
  const key = randomUUID()
  t.equal(await processA.get('profile', key, 60, async () => null), null)
  t.equal(await app.redis.get(`lease-test:profile:${key}`), null, 'no lease left behind for "not found"')
  await t.rejects(processA.get('profile', key, 60, async () => { throw new Error('database down') }), /database down/)
  t.equal(await app.redis.get(`lease-test:profile:${key}`), null, 'nor for a failed load')
  t.equal(await processB.get('profile', key, 60, async () => 'later'), 'later')
  t.equal(await app.redis.get(`lease-test:profile:${key}`), JSON.stringify('later'), 'so the next reader caches normally')
})
