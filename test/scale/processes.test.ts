// Correctness across API processes. Two separate server processes on two ports make it certain which process
// answers which request; the in-process app is only used to sign users up and to look at Redis and PostgreSQL.
import { randomUUID } from 'node:crypto'
import t from 'tap'
import { buildTestApp, createClient, createUser, fund, testSql } from '../helper.ts'
import { spawnApiServer, type ApiProcess } from './support.ts'

// A short standard tier that does not refill during the test, so "exactly the capacity" is exact.
const limits = { RATE_LIMIT_STANDARD_CAPACITY: '20', RATE_LIMIT_STANDARD_REFILL_PER_S: '0.001' }

const app = await buildTestApp(t)
const sql = testSql(t)
const [a, b] = await Promise.all([spawnApiServer(t, limits), spawnApiServer(t, limits)])

interface Named { name: string }
interface WithId { id: string }
interface Page { data: WithId[] }
const json = async <T>(response: Response | Promise<Response>) => await (await response).json() as T

/** `caller` is a user or a service client: both are bearer tokens every process verifies the same way. */
function call (server: ApiProcess, caller: { authorization: string }, method: string, path: string, body?: unknown, headers: Record<string, string> = {}) {
  return fetch(`${server.url}${path}`, {
    method,
    headers: { authorization: caller.authorization, ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(10_000)
  })
}

t.test('the token bucket admits exactly its capacity for one user across two processes', async (t) => {
  const user = await createUser(app)
  const responses = await Promise.all(Array.from({ length: 100 }, (_, i) => call(i % 2 === 0 ? a : b, user, 'GET', '/balances')))
  const admitted = responses.filter((r) => r.status === 200)
  const limited = responses.filter((r) => r.status === 429)
  t.equal(admitted.length, 20, 'exactly the bucket, 100 concurrent requests over two processes')
  t.equal(limited.length, 80)
  t.ok(limited.every((r) => r.headers.get('ratelimit-limit') === '20' && r.headers.get('retry-after') !== null), '429s carry the headers')
  const byProcess = [0, 1].map((side) => responses.filter((r, i) => i % 2 === side && r.status === 200).length)
  t.ok(byProcess[0]! + byProcess[1]! === 20, `admitted by process: ${byProcess.join(' + ')}`)
  await Promise.all(responses.map((r) => r.arrayBuffer()))
})

t.test('a profile cached by one process is invalidated by a write on the other, at once', async (t) => {
  const alice = await createUser(app, { name: 'Alice' })
  const bob = await createUser(app)
  t.equal((await json<Named>(call(b, bob, 'GET', `/users/${alice.id}`))).name, 'Alice')
  t.ok(await app.redis.get(`cache:user:${alice.id}`), 'process B cached it in Redis')
  t.equal((await json<Named>(call(b, bob, 'GET', `/users/${alice.id}`))).name, 'Alice', 'and serves it from there')

  const patch = await call(a, alice, 'PATCH', `/users/${alice.id}`, { name: 'Alicia' })
  t.equal(patch.status, 200, 'process A writes')
  await patch.arrayBuffer()
  t.equal((await json<Named>(call(b, bob, 'GET', `/users/${alice.id}`))).name, 'Alicia', 'process B sees the write on its very next read')
})

t.test('a feed cached by one process shows a post made through the other, at once', async (t) => {
  const owner = await createUser(app, { name: 'Author' })
  const before = await json<Page>(call(b, owner, 'GET', '/feed'))
  t.same(before.data, [], 'empty, and now cached by process B')
  t.ok(await app.redis.get(`cache:feed:${owner.id}`))

  const post = await call(a, owner, 'POST', '/posts', { body: 'hello from A' })
  t.equal(post.status, 201)
  const created = await json<WithId>(post)
  const after = await json<Page>(call(b, owner, 'GET', '/feed'))
  t.same(after.data.map((p) => p.id), [created.id], 'process B serves the new post')
})

t.test('the same Idempotency-Key sent to two processes at once creates one transaction', async (t) => {
  // Deposits come from a service client (the service tier's bucket is far above these 20 requests).
  const client = await createClient(app)
  const user = await createUser(app)
  // Several rounds, each key sent twice to each process at the same moment, so the requests really overlap.
  for (let round = 0; round < 5; round++) {
    const key = randomUUID()
    const body = { kind: 'deposit', userId: user.id, amount: 1_000 + round, currency: 'USD', reference: `processes-${key}` }
    const responses = await Promise.all([a, b, a, b].map((server) => call(server, client, 'POST', '/transactions', body, { 'idempotency-key': key })))
    const payloads = await Promise.all(responses.map((r) => json<WithId>(r)))
    t.same(responses.map((r) => r.status), [201, 201, 201, 201], `round ${round}: every copy gets 201`)
    t.equal(new Set(payloads.map((p) => p.id)).size, 1, 'one transaction id for all of them')
    t.equal(responses.filter((r) => r.headers.get('idempotent-replayed') === 'true').length, 3, 'three are replays')
  }
  const [row] = await sql`select count(*)::int as n, sum(amount)::int as total from transactions where to_user_id = ${user.id}`
  t.same({ n: row?.n, total: row?.total }, { n: 5, total: 5_010 }, 'five transactions in the ledger, not twenty')
  const [balance] = await sql`select balance::int from balances where user_id = ${user.id} and currency = 'USD'`
  t.equal(balance?.balance, 5_010)
})

t.test('the same Idempotency-Key on a user\'s transfer, sent to two processes at once, moves the money once', async (t) => {
  // A pro user, so 20 requests stay inside the bucket these processes give the standard tier.
  const payer = await createUser(app, { tier: 'pro' })
  const payee = await createUser(app)
  await fund(app, payer, 1_000)
  for (let round = 0; round < 5; round++) {
    const key = randomUUID()
    const body = { kind: 'transfer', amount: 10 + round, currency: 'USD', toUserId: payee.id }
    const responses = await Promise.all([a, b, a, b].map((server) => call(server, payer, 'POST', '/transactions', body, { 'idempotency-key': key })))
    const payloads = await Promise.all(responses.map((r) => json<WithId>(r)))
    t.same(responses.map((r) => r.status), [201, 201, 201, 201], `round ${round}: every copy gets 201`)
    t.equal(new Set(payloads.map((p) => p.id)).size, 1, 'one transaction id for all of them')
    t.equal(responses.filter((r) => r.headers.get('idempotent-replayed') === 'true').length, 3, 'three are replays')
  }
  const [row] = await sql`select count(*)::int as n, sum(amount)::int as total from transactions where from_user_id = ${payer.id}`
  t.same({ n: row?.n, total: row?.total }, { n: 5, total: 60 }, 'five transfers in the ledger, not twenty')
  const balances = await sql`select user_id, balance::int from balances where user_id in (${payer.id}, ${payee.id}) and currency = 'USD'`
  t.same(Object.fromEntries(balances.map((r) => [r.user_id, r.balance])), { [payer.id]: 940, [payee.id]: 60 })
})
