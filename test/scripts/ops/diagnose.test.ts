// scripts/ops/diagnose/ run as its own process against the test stack (DATABASE_URL, DATABASE_DIRECT_URL and
// REDIS_URL of the test run) and a test server on a real port.
import { execFile } from 'node:child_process'
import { createServer, type AddressInfo } from 'node:net'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import type { App } from '../../../app.ts'
import { feedNPlusOneRoutes } from '../../feed-n-plus-one.ts'
import type { Diagnosis } from '../../../scripts/ops/diagnose/index.ts'
import { FEED_JOB } from '../../../routes/social/feed-jobs.ts'
import { buildTestApp, createClient, createUser, drainJobs } from '../../helper.ts'
import { injectSender, LedgerClient, waitFor } from '../../faults/support.ts'

const script = fileURLToPath(new URL('../../../scripts/ops/diagnose/index.ts', import.meta.url))
const database = new URL(process.env.DATABASE_URL ?? 'postgres://x/unknown').pathname.slice(1)

function diagnose (args: string[]): Promise<{ code: number, stdout: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [script, ...args], { timeout: 60_000, env: process.env }, (error, stdout) => {
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : -1, stdout })
    })
  })
}

/** A loopback port that refuses connections: one the system just handed out and that is closed again. */
async function closedPort (): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  await new Promise((resolve) => server.close(resolve))
  return port
}

async function listen (app: App) {
  await app.listen({ port: 0, host: '127.0.0.1' })
  return `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`
}

t.test('--json has every section with live content, and names an N+1', async (t) => {
  const app = await buildTestApp(t)
  await app.register(feedNPlusOneRoutes)
  const api = await listen(app)
  const owner = await createUser(app)
  const authors = [owner, await createUser(app), await createUser(app)]
  // The owner follows the other two, so the feed holds posts of three authors once the fan-out ran.
  for (const author of authors.slice(1)) {
    t.equal((await app.inject({ method: 'PUT', url: `/users/me/following/${author.id}`, headers: { authorization: owner.authorization } })).statusCode, 204)
  }
  for (let i = 0; i < 10; i++) {
    const author = authors[i % authors.length]!
    const post = await app.inject({ method: 'POST', url: '/posts', headers: { authorization: author.authorization }, payload: { body: `post ${i}` } })
    t.equal(post.statusCode, 201)
  }
  await drainJobs(app, { kinds: Object.values(FEED_JOB), matching: authors.flatMap((a) => [{ authorId: a.id }, { followerId: a.id }]) })
  // The N+1 loader: per page one list query returning 10 posts, then one author lookup per post.
  for (let i = 0; i < 5; i++) {
    const page = await app.inject({ method: 'GET', url: '/bench/feed-n-plus-one', headers: { authorization: owner.authorization } })
    t.equal(page.statusCode, 200)
  }
  // A miss and a hit in each cache.
  for (let i = 0; i < 2; i++) {
    await app.inject({ method: 'GET', url: '/feed', headers: { authorization: owner.authorization } })
    await app.inject({ method: 'GET', url: `/users/${authors[1]!.id}`, headers: { authorization: owner.authorization } })
  }

  const run = await diagnose(['--json', '--api', api, '--top', '50'])
  t.equal(run.code, 0)
  const d = JSON.parse(run.stdout) as Diagnosis

  t.ok(d.connections.ok, JSON.stringify(d.connections))
  if (d.connections.ok) {
    t.ok(d.connections.maxConnections > 0)
    t.ok(d.connections.groups.some((g) => g.database === database && g.connections > 0), 'the app\'s server connections are listed')
  }

  t.ok(d.statements.ok, JSON.stringify(d.statements))
  if (d.statements.ok) {
    t.equal(d.statements.database, database)
    t.ok(d.statements.byCalls.length > 0 && d.statements.byTotalTime.length > 0)
    const lookup = d.statements.byCalls.find((s) => /select name, avatar_url from users where id = \$1/.test(s.query))
    t.ok(lookup !== undefined && lookup.calls >= 50, 'the per-author lookup ran once per post')
    t.ok(lookup?.nPlusOne !== undefined, 'and is flagged as the +1 of an N+1')
    t.ok(d.statements.hints.some((hint) => hint.startsWith('N+1? select name, avatar_url from users')), d.statements.hints.join('\n'))
    t.equal(d.statements.hints.length, 1, `only the N+1 is hinted: ${d.statements.hints.join('\n')}`)
    t.same(d.statements.byCalls.filter((s) => s.nPlusOne !== undefined).map((s) => s.query.replace(/\s+/g, ' ').trim()),
      ['select name, avatar_url from users where id = $1'], 'and only its statement is marked')
    t.match(d.statements.evidence, /ledger_db_n_plus_one_total/)
    t.ok(d.statements.byCalls.every((s) => s.meanMs >= 0 && s.rowsPerCall >= 0))
  }

  t.ok(d.pgbouncer.ok, JSON.stringify(d.pgbouncer))
  if (d.pgbouncer.ok) {
    t.match(d.pgbouncer.version, /^PgBouncer /)
    const pool = d.pgbouncer.pools.find((p) => p.database === database)
    t.ok(pool !== undefined, 'the test database has a pool')
    t.equal(pool?.poolMode, 'transaction')
    t.ok(d.pgbouncer.stats.some((s) => s.database === database && s.xacts > 0))
  }

  t.ok(d.redis.ok, JSON.stringify(d.redis))
  if (d.redis.ok) {
    t.type(d.redis.hitRatio, 'number')
    t.ok(d.redis.hitRatio! >= 0 && d.redis.hitRatio! <= 1)
    t.ok(d.redis.usedMemoryHuman.length > 0)
    t.type(d.redis.maxmemory, 'number')
  }

  t.ok(d.api.ok, JSON.stringify(d.api))
  if (d.api.ok) {
    t.same(d.api.nPlusOne, [{
      route: '/bench/feed-n-plus-one',
      statement: 'select name, avatar_url from users where id = $1',
      rowsOf: d.api.nPlusOne[0]?.rowsOf,
      requests: 5
    }], 'the API saw each of the 5 pages run the lookup once per post')
    t.match(d.api.nPlusOne[0]?.rowsOf, /^select p\.id, p\.author_id, p\.body/, 'once per row of the posts query')
    t.ok(d.api.requests >= 20)
    t.equal(d.api.status5xx, 0)
    t.same(d.api.caches.feed, { hits: 1, misses: 1, hitRatio: 0.5 })
    t.same(d.api.caches.user, { hits: 1, misses: 1, hitRatio: 0.5 })
    t.ok(d.api.routes.some((r) => r.route === 'POST /posts' && r.requests === 10))
  }
})

t.test('a busy mixed load with no N+1: nothing is hinted, though many statements run equally often', async (t) => {
  const app = await buildTestApp(t)
  const api = await listen(app)
  const users = [await createUser(app), await createUser(app), await createUser(app), await createUser(app), await createUser(app)]
  for (const [i, user] of users.entries()) {
    const post = await app.inject({ method: 'POST', url: '/posts', headers: { authorization: user.authorization }, payload: { body: `hello ${i}` } })
    t.equal(post.statusCode, 201)
  }
  const client = new LedgerClient(injectSender(app), users, await createClient(app))
  for (const user of users) t.equal((await client.post(user, 'deposit', 1_000_000)).status, 201)
  // Deposits, withdrawals, transfers (post_transaction), balances, transaction lists, profiles and feeds.
  const load = client.startLoad({ workers: 8, maxRequests: 600, maxMs: 60_000, gapMs: 0 })
  await waitFor(async () => client.samples.length >= 600 + users.length, 60_000, 50)
  await load.stop()
  const statuses = new Set(client.samples.map((s) => s.status))
  t.ok(client.samples.length >= 600 && [...statuses].every((s) => s === 200 || s === 201 || s === 422), `served: ${[...statuses].join(', ')}`)

  const run = await diagnose(['--json', '--api', api, '--top', '50'])
  t.equal(run.code, 0)
  const d = JSON.parse(run.stdout) as Diagnosis
  t.ok(d.api.ok && d.statements.ok)
  if (d.api.ok) t.same(d.api.nPlusOne, [], 'the API saw no request run a statement once per row of another')
  if (d.statements.ok) {
    t.same(d.statements.hints, [], 'no hint')
    t.same(d.statements.byCalls.filter((s) => s.nPlusOne !== undefined).map((s) => s.query), [], 'no statement marked')
  }
  const text = await diagnose(['--api', api])
  t.match(text.stdout, /no request ran a statement once per row of another/)
})

t.test('a section whose server is down says so, and the others still answer', async (t) => {
  const port = await closedPort()
  const down = ['--direct-url', `postgres://ledger@127.0.0.1:${port}/ledger`, '--redis-url', `redis://127.0.0.1:${port}`, '--api', `http://127.0.0.1:${port}`]

  const json = await diagnose(['--json', ...down])
  t.equal(json.code, 0)
  const d = JSON.parse(json.stdout) as Diagnosis
  for (const name of ['connections', 'statements', 'redis', 'api'] as const) {
    const section = d[name]
    t.ok(!section.ok && /ECONNREFUSED/.test(section.error), `${name}: ${JSON.stringify(section)}`)
  }
  t.ok(d.pgbouncer.ok, 'PgBouncer comes from DATABASE_URL, which is up')

  const text = await diagnose(down)
  t.equal(text.code, 0)
  t.match(text.stdout, /^== 1\. PostgreSQL connections .*\n {2}unavailable: .*ECONNREFUSED/m)
  t.match(text.stdout, /^== 4\. Redis \(INFO\)\n {2}unavailable: .*ECONNREFUSED/m)
  t.match(text.stdout, /^== 5\. API metrics \(GET \/metrics\)\n {2}unavailable: .*ECONNREFUSED/m)
  t.match(text.stdout, /^== 3\. PgBouncer \(SHOW POOLS, SHOW STATS\) {2}\(postgres:.*\n {2}PgBouncer 1\.\d+/m)
})
