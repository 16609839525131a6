// Read scaling with read-your-writes, against a real streaming replica (`npm run stack -- replica up`: pg_basebackup -R of
// the test stack's primary). Replay is paused on the replica while a test writes, so a read that went to the
// replica visibly misses the write; the db span's server.port says which server answered.
// LEDGER_TEST_DATABASE_REPLICA_URL points the test at a replica someone else runs instead.
import t from 'tap'
import postgres from 'postgres'
import { buildApp, type App } from '../../app.ts'
import type { Sql } from '../../plugins/database/index.ts'
import { createReadRouter } from '../../plugins/database/reads.ts'
import type { RedisClient } from '../../plugins/redis/index.ts'
import { FEED_JOB } from '../../routes/social/feed-jobs.ts'
import { createClient, createUser, dbSpans, drainJobs, fund, hasLocalStack, injectTraced, ownerSql, testConfig, type TestClient, type TestUser } from '../helper.ts'
import { parseEnvLines, runStack, withDatabase, withUserOf } from '../../scripts/local-stack.ts'
import { freePort } from '../free-port.ts'

const primaryUrl = process.env.DATABASE_URL ?? ''
const testDatabase = new URL(primaryUrl || 'postgres://x/ledger_test').pathname.slice(1)
let replicaUrl = process.env.LEDGER_TEST_DATABASE_REPLICA_URL ?? ''
let skip: string | false = false
let started = false
if (replicaUrl === '') {
  if (!hasLocalStack) {
    skip = 'needs the local stack (scripts/test.ts) to start a replica, or LEDGER_TEST_DATABASE_REPLICA_URL'
  } else {
    try {
      // A replica someone started by hand is used and left running; one started here is removed at the end.
      started = !/\brunning\b/.test(runStack(['replica', 'status'], { quiet: true }))
      runStack(['replica', 'up'], { quiet: true })
      replicaUrl = withDatabase(parseEnvLines(runStack(['replica', 'env'], { quiet: true })).DATABASE_REPLICA_URL ?? '', testDatabase)
    } catch (error) {
      skip = `could not start a replica: ${error instanceof Error ? error.message : String(error)}`
    }
  }
}

const primaryPort = Number(new URL(primaryUrl || 'postgres://x:1/x').port)
const replicaPort = replicaUrl === '' ? 0 : Number(new URL(replicaUrl).port)
// Admin connections: the primary directly as the owner (for its WAL position), and the replica as the superuser the
// test runner names (pausing and resuming replay is a superuser's), else as the owner.
const primaryAdmin = postgres(process.env.DATABASE_DIRECT_URL ?? primaryUrl, { max: 1, onnotice: () => {} })
const replicaAdmin = replicaUrl === '' ? null : postgres(withUserOf(replicaUrl, process.env.DATABASE_ADMIN_URL ?? process.env.DATABASE_DIRECT_URL ?? primaryUrl), { max: 1, onnotice: () => {} })
const apps: App[] = []
t.teardown(async () => {
  if (replicaAdmin !== null) await replicaAdmin`select pg_wal_replay_resume()`.catch(() => {})
  await Promise.all(apps.map((app) => app.close()))
  await Promise.all([primaryAdmin.end({ timeout: 5 }), replicaAdmin?.end({ timeout: 5 })])
  if (started) runStack(['replica', 'down'], { quiet: true })
})

async function replicaApp (overrides: Record<string, string> = {}) {
  const app = await buildApp(testConfig({ DATABASE_REPLICA_URL: replicaUrl, READ_YOUR_WRITES_S: '2', ...overrides }))
  apps.push(app)
  await app.ready()
  return app
}

/** Waits (bounded) until the replica has replayed everything the primary has written so far. */
async function caughtUp () {
  const [{ lsn }] = await primaryAdmin`select pg_current_wal_lsn()::text as lsn` as unknown as [{ lsn: string }]
  const deadline = Date.now() + 60_000
  while (Date.now() < deadline) {
    const [row] = await replicaAdmin!`select pg_last_wal_replay_lsn() >= ${lsn}::pg_lsn as done`
    if (row?.done === true) return
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  throw new Error('the replica did not catch up within 60 s')
}

const pauseReplay = async () => { await caughtUp(); await replicaAdmin!`select pg_wal_replay_pause()` }
const resumeReplay = async () => { await replicaAdmin!`select pg_wal_replay_resume()` }

/** One traced GET (by a user or a service client): the response and the ports of the servers its SQL went to. */
async function read (app: App, caller: TestUser | TestClient, url: string) {
  const { response, spans } = await injectTraced(app, { method: 'GET', url, headers: { authorization: caller.authorization } })
  return { response, ports: [...new Set(dbSpans(spans).map((span) => span.attributes['server.port']))] }
}

const transfer = (app: App, from: TestUser, to: TestUser, amount: number) => app.inject({
  method: 'POST',
  url: '/transactions',
  headers: { authorization: from.authorization, 'idempotency-key': `replica-${Date.now()}-${Math.random()}` },
  payload: { kind: 'transfer', amount, currency: 'USD', toUserId: to.id }
})

t.test('your own reads see your writes; other reads come from the replica', { skip }, async (t) => {
  const app = await replicaApp()
  const otherProcess = await replicaApp()
  const alice = await createUser(app)
  const bob = await createUser(app)
  const carol = await createUser(app)
  const bank = await createClient(app)
  const deposit = await fund(app, alice, 100, 'USD', { client: bank, key: `d-${alice.id}` })
  t.equal(deposit.statusCode, 201)
  await new Promise((resolve) => setTimeout(resolve, 2100)) // past the read-your-writes window of the deposit

  await pauseReplay()
  t.teardown(resumeReplay)
  const sent = await transfer(app, alice, bob, 30)
  t.equal(sent.statusCode, 201)
  const id = sent.json().id

  const own = await read(app, alice, '/transactions')
  t.equal(own.response.json().data[0].id, id, 'right after her write, alice sees it')
  t.same(own.ports, [primaryPort], 'because her read went to the primary')

  const elsewhere = await read(otherProcess, alice, '/transactions')
  t.equal(elsewhere.response.json().data[0].id, id, 'also through another API process (the mark is in Redis)')
  t.same(elsewhere.ports, [primaryPort])

  const paid = await read(app, bob, '/transactions')
  t.same(paid.ports, [primaryPort], 'bob was paid by that write: his read goes to the primary too')
  t.equal(paid.response.json().data[0]?.id, id, 'and he sees the transfer')

  const other = await read(app, carol, '/transactions')
  t.same(other.ports, [replicaPort], 'carol had no part in it: her read goes to the replica')

  await new Promise((resolve) => setTimeout(resolve, 2100))
  const later = await read(app, alice, '/transactions')
  t.same(later.ports, [replicaPort], 'once the window has passed, alice reads the replica too')
  t.same(later.response.json().data.map((tx: { id: string }) => tx.id), [deposit.json().id], 'and sees its (stale) state')
  const bobLater = await read(app, bob, '/transactions')
  t.same([bobLater.ports, bobLater.response.json().data], [[replicaPort], []], 'so does bob: the replica has not replayed the transfer (replay is paused)')

  await resumeReplay()
  await caughtUp()
  const replayed = await read(app, bob, '/transactions')
  t.same(replayed.ports, [replicaPort])
  t.equal(replayed.response.json().data[0]?.id, id, 'after replay the replica has it')
})

t.test('a service client\'s own reads see its writes too; its other reads come from the replica', { skip }, async (t) => {
  const app = await replicaApp()
  const otherProcess = await replicaApp()
  const frank = await createUser(app)
  const bank = await createClient(app)
  const idle = await createClient(app)
  const before = await read(app, bank, '/transactions')
  t.same(before.ports, [replicaPort], 'a client that has not written reads the replica')

  await pauseReplay()
  t.teardown(resumeReplay)
  const deposit = await fund(app, frank, 25, 'USD', { client: bank })
  const id = deposit.json().id

  const own = await read(app, bank, '/transactions')
  t.equal(own.response.json().data[0]?.id, id, 'right after its deposit, the client lists it')
  t.same(own.ports, [primaryPort], 'because its read went to the primary')
  const elsewhere = await read(otherProcess, bank, '/transactions')
  t.equal(elsewhere.response.json().data[0]?.id, id, 'also through another API process')
  t.same(elsewhere.ports, [primaryPort])

  const credited = await read(app, frank, '/transactions')
  t.same(credited.ports, [primaryPort], 'the user it funded reads the primary too')
  t.equal(credited.response.json().data[0]?.id, id, 'and sees the deposit at once')

  const other = await read(app, idle, '/transactions')
  t.same(other.ports, [replicaPort], 'a client that did not write reads the replica')
  t.same(other.response.json().data, [], 'and finds nothing of the bank\'s')
})

t.test('the feed: the cached first page always loads from the primary, other pages follow the same rule', { skip }, async (t) => {
  const app = await replicaApp()
  const carol = await createUser(app, { name: 'Carol' })
  const dave = await createUser(app, { name: 'Dave' })
  // Carol follows Dave (as the owner: a follow through the API is carol's write, which would keep her on the primary).
  await ownerSql()`insert into follows (follower_id, followee_id) values (${carol.id}, ${dave.id})`
  t.same((await read(app, carol, '/feed')).response.json().data, [], 'carol\'s empty first page is cached')
  await pauseReplay()
  t.teardown(resumeReplay)
  const post = await app.inject({ method: 'POST', url: '/posts', headers: { authorization: dave.authorization }, payload: { body: 'for Carol' } })
  t.equal(post.statusCode, 201)
  // The fan-out (on the primary) puts it on carol's feed and invalidates her cached page.
  await drainJobs(app, { kinds: Object.values(FEED_JOB), matching: [{ authorId: dave.id }] })

  const first = await read(app, carol, '/feed')
  t.same(first.response.json().data.map((p: { body: string }) => p.body), ['for Carol'], 'the invalidated first page is reloaded with the post')
  t.same(first.ports, [primaryPort], 'from the primary, although carol did not write: a stale replica page must not be cached')

  const small = await read(app, carol, '/feed?limit=5')
  t.same(small.ports, [replicaPort], 'an uncached page for a reader who did not write comes from the replica')
  t.same(small.response.json().data, [], 'still without the post while replay is paused')

  const own = await read(app, dave, '/feed?limit=5')
  t.same(own.ports, [primaryPort], 'dave wrote a post a moment ago: his own feed reads stay on the primary')
})

t.test('an unreachable replica: reads fall back to the primary and the failure is counted', async (t) => {
  const closedPort = await freePort()
  const app = await buildApp(testConfig({ DATABASE_REPLICA_URL: `postgres://ledger@127.0.0.1:${closedPort}/${testDatabase}`, DATABASE_CONNECT_TIMEOUT_S: '1' }))
  apps.push(app)
  const erin = await createUser(app)
  const { response, ports } = await read(app, erin, '/transactions')
  t.equal(response.statusCode, 200)
  t.ok(ports.includes(primaryPort), 'answered by the primary')
  const failures = (await app.metrics.dependencyErrors.get()).values.find((v) => v.labels.dependency === 'postgres_replica')
  t.equal(failures?.value, 1, 'one replica failure counted')
})

// The router on its own, with stand-ins that record which pool a query was given.
const primary = 'primary' as unknown as Sql
const replica = 'replica' as unknown as Sql
const which = (sql: Sql) => Promise.resolve(sql as unknown as string)

t.test('read routing fails safe without touching a database', async (t) => {
  const untouchable = new Proxy({}, { get: () => { throw new Error('Redis must not be used') } }) as RedisClient
  const none = createReadRouter({ primary, replica: null, redis: untouchable, windowMs: 1000, onError: () => {} })
  t.equal(await none.read('u1', which), 'primary', 'no replica: the primary, and no Redis round trip')
  await none.wrote('u1')

  const errors: string[] = []
  const down = { exists: () => Promise.reject(new Error('redis down')), set: () => Promise.reject(new Error('redis down')) } as unknown as RedisClient
  const router = createReadRouter({ primary, replica, redis: down, windowMs: 1000, onError: (_error, dependency, operation) => { errors.push(`${dependency} ${operation}`) } })
  t.equal(await router.read('u2', which), 'primary', 'redis down: cannot tell, so the primary')
  await router.wrote('u3')
  t.equal(await router.read('u3', which), 'primary', 'this process remembers its own writers without Redis')
  t.same(errors, ['redis read_your_writes_check', 'redis read_your_writes_mark'])

  const up = { exists: () => Promise.resolve(0), set: () => Promise.resolve('OK') } as unknown as RedisClient
  const healthy = createReadRouter({ primary, replica, redis: up, windowMs: 1000, onError: () => {} })
  t.equal(await healthy.read('u4', which), 'replica', 'no recent write anywhere: the replica')
  const refused = Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' })
  t.equal(await healthy.read('u4', async (sql) => {
    if (sql === replica) throw refused
    return 'primary after fallback'
  }), 'primary after fallback')
  const wrong = Object.assign(new Error('syntax error'), { code: '42601' })
  await t.rejects(healthy.read('u4', () => Promise.reject(wrong)), wrong, 'a query error is not retried elsewhere')
})
