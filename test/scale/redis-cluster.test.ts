// The rate limiter and the cache against a real Redis Cluster: `npm run stack -- cluster up` starts redis-server processes
// in cluster mode on 127.0.0.1 and joins them with `redis-cli --cluster create`; the app runs with
// REDIS_CLUSTER_NODES, so ioredis runs in cluster mode (slot routing, EVALSHA by key, MOVED handling).
// LEDGER_TEST_REDIS_CLUSTER_NODES points the test at a cluster someone else runs instead.
import { Cluster } from 'ioredis'
import t from 'tap'
import { buildApp, type App } from '../../app.ts'
import type { RedisClient } from '../../plugins/redis/index.ts'
import { FEED_JOB } from '../../routes/social/feed-jobs.ts'
import { createUser, drainJobs, hasLocalStack, testConfig } from '../helper.ts'
import { parseEnvLines, runStack } from '../../scripts/local-stack.ts'

let nodes = process.env.LEDGER_TEST_REDIS_CLUSTER_NODES ?? ''
let skip: string | false = false
let started = false
if (nodes === '') {
  if (!hasLocalStack) {
    skip = 'needs the local stack (scripts/test.ts) to start a Redis Cluster, or LEDGER_TEST_REDIS_CLUSTER_NODES'
  } else {
    try {
      // A cluster someone started by hand is used and left running; one started here is removed at the end.
      started = !/\brunning\b/.test(runStack(['cluster', 'status'], { quiet: true }))
      runStack(['cluster', 'up'], { quiet: true })
      nodes = parseEnvLines(runStack(['cluster', 'env'], { quiet: true })).REDIS_CLUSTER_NODES ?? ''
    } catch (error) {
      skip = `could not start a Redis Cluster: ${error instanceof Error ? error.message : String(error)}`
    }
  }
}

const apps: App[] = []
t.teardown(async () => {
  await Promise.all(apps.map((app) => app.close()))
  if (started) runStack(['cluster', 'down'], { quiet: true })
})

async function clusterApp () {
  const app = await buildApp(testConfig({
    REDIS_CLUSTER_NODES: nodes,
    // What these tests count must not depend on the machine's load: a command slower than the suite's timeout
    // (500 ms) fails open by design (admitted, counted as a dependency error; test/plugins/rate-limit.test.ts).
    REDIS_COMMAND_TIMEOUT_MS: '5000',
    RATE_LIMIT_STANDARD_CAPACITY: '20',
    RATE_LIMIT_STANDARD_REFILL_PER_S: '0.001'
  }))
  apps.push(app)
  await app.ready()
  return app
}

const get = (app: App, authorization: string, url: string) => app.inject({ method: 'GET', url, headers: { authorization } })

t.test('the client runs in cluster mode and readiness pings through it', { skip }, async (t) => {
  const app = await clusterApp()
  t.ok(app.redis instanceof Cluster, 'an ioredis Cluster')
  const masters = (app.redis as RedisClient as Cluster).nodes('master').length
  t.ok(masters >= 3, `${masters} masters`)
  const ready = await app.inject({ method: 'GET', url: '/health/ready' })
  t.equal(ready.statusCode, 200)
  t.same(ready.json().checks, { postgres: 'ok', redis: 'ok' })
})

t.test('the token bucket admits exactly its capacity under 100 concurrent requests, across two app instances', { skip }, async (t) => {
  const [one, two] = [await clusterApp(), await clusterApp()]
  const user = await createUser(one)
  const responses = await Promise.all(Array.from({ length: 100 }, (_, i) => get(i % 2 === 0 ? one : two, user.authorization, '/balances')))
  const redisErrors = async (app: App) => (await app.metrics.dependencyErrors.get()).values
    .filter((v) => v.labels.dependency === 'redis' && v.labels.operation === 'rate_limit').reduce((sum, v) => sum + v.value, 0)
  t.equal(await redisErrors(one) + await redisErrors(two), 0, 'every decision came from the cluster (none failed open)')
  t.equal(responses.filter((r) => r.statusCode === 200).length, 20, 'exactly the capacity')
  t.equal(responses.filter((r) => r.statusCode === 429).length, 80)
  const refused = responses.find((r) => r.statusCode === 429)!
  t.equal(refused.headers['ratelimit-limit'], '20')
  t.ok(Number(refused.headers['retry-after']) >= 1)
  t.equal(await one.redis.exists(`rl:user:${user.id}`), 1, 'the bucket is one key in the cluster')
})

t.test('buckets of different users spread over the masters (one key per script call)', { skip }, async (t) => {
  const app = await clusterApp()
  const users = await Promise.all(Array.from({ length: 12 }, () => createUser(app)))
  for (const user of users) t.equal((await get(app, user.authorization, '/balances')).statusCode, 200)
  const cluster = app.redis as RedisClient as Cluster
  const owners = await Promise.all(users.map(async (user) => {
    const key = `rl:user:${user.id}`
    t.equal(await cluster.exists(key), 1)
    // The slot map ioredis routes by: its first node is the slot's master.
    return cluster.slots[await cluster.cluster('KEYSLOT', key)]?.[0]
  }))
  const perMaster = new Map<string, number>()
  for (const owner of owners) perMaster.set(String(owner), (perMaster.get(String(owner)) ?? 0) + 1)
  t.ok(perMaster.size >= 2, `buckets per master: ${JSON.stringify(Object.fromEntries(perMaster))}`)
})

t.test('cache-aside on the cluster: miss, hit, invalidate, and a feed post invalidates its pages', { skip }, async (t) => {
  const app = await clusterApp()
  const alice = await createUser(app, { name: 'Alice' })
  const bob = await createUser(app)
  const counts = async () => Object.fromEntries((await app.metrics.cacheRequests.get()).values
    .filter((v) => v.labels.cache === 'user').map((v) => [v.labels.result, v.value]))

  t.equal((await get(app, bob.authorization, `/users/${alice.id}`)).json().name, 'Alice')
  t.same(await counts(), { miss: 1 }, 'a miss')
  t.match(JSON.parse(await app.redis.get(`cache:user:${alice.id}`) ?? 'null'), { id: alice.id, name: 'Alice' }, 'stored in the cluster')
  t.equal((await get(app, bob.authorization, `/users/${alice.id}`)).json().name, 'Alice')
  t.same(await counts(), { miss: 1, hit: 1 }, 'then a hit')

  const patch = await app.inject({ method: 'PATCH', url: `/users/${alice.id}`, headers: { authorization: alice.authorization }, payload: { name: 'Alicia' } })
  t.equal(patch.statusCode, 200)
  t.equal(await app.redis.exists(`cache:user:${alice.id}`), 0, 'the write deleted the entry')
  t.equal((await get(app, bob.authorization, `/users/${alice.id}`)).json().name, 'Alicia', 'the next read loads the new name')
  t.same(await counts(), { miss: 2, hit: 1 })

  // Followers' pages are invalidated by the fan-out job, many keys in one call: keys on several masters.
  const followers = await Promise.all(Array.from({ length: 8 }, () => createUser(app)))
  for (const follower of followers) {
    t.equal((await app.inject({ method: 'PUT', url: `/users/me/following/${alice.id}`, headers: { authorization: follower.authorization } })).statusCode, 204)
  }
  await drainJobs(app, { kinds: Object.values(FEED_JOB), matching: [{ authorId: alice.id }, { followeeId: alice.id }] })
  for (const reader of [alice, ...followers]) {
    t.same((await get(app, reader.authorization, '/feed')).json().data, [], 'an empty feed, cached')
    t.ok(await app.redis.exists(`cache:feed:${reader.id}`))
  }
  const post = await app.inject({ method: 'POST', url: '/posts', headers: { authorization: alice.authorization }, payload: { body: 'hi all' } })
  t.equal(post.statusCode, 201)
  t.same((await get(app, alice.authorization, '/feed')).json().data.map((p: { body: string }) => p.body), ['hi all'], "on the author's page at once")
  const { failures } = await drainJobs(app, { kinds: Object.values(FEED_JOB), matching: [{ authorId: alice.id }, { followeeId: alice.id }] })
  t.equal(failures, 0, 'the fan-out invalidated keys across slots without a CROSSSLOT error')
  for (const follower of followers) {
    t.same((await get(app, follower.authorization, '/feed')).json().data.map((p: { body: string }) => p.body), ['hi all'], "on each follower's page after the fan-out")
  }
})
