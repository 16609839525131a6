import { randomUUID } from 'node:crypto'
import t, { type Test } from 'tap'
import { buildTestApp, createUser, dbSpans, injectTraced, testSql, type TestUser } from '../helper.ts'
import type { App } from '../../app.ts'

type Sql = ReturnType<typeof testSql>

function post (app: App, user: TestUser, payload: Record<string, unknown>, key: string = randomUUID()) {
  return app.inject({ method: 'POST', url: '/transactions', headers: { authorization: user.authorization, 'idempotency-key': key }, payload })
}

async function balance (sql: Sql, userId: string, currency = 'USD'): Promise<number | null> {
  const [row] = await sql`select balance from balances where user_id = ${userId} and currency = ${currency}`
  return row === undefined ? null : Number(row.balance)
}

async function transactionCount (sql: Sql, userId: string): Promise<number> {
  const [row] = await sql`select count(*)::int as n from transactions where from_user_id = ${userId} or to_user_id = ${userId}`
  return row?.n as number
}

/** The ledger invariant for a set of users who only trade among themselves. */
async function assertLedgerBalanced (t: Test, sql: Sql, userIds: string[]) {
  const [row] = await sql`
    select
      (select coalesce(sum(balance), 0) from balances where user_id = any(${userIds}::uuid[]) and currency = 'USD')::bigint as balances,
      (select coalesce(sum(case kind when 'deposit' then amount when 'withdrawal' then -amount else 0 end), 0)
         from transactions where currency = 'USD' and (to_user_id = any(${userIds}::uuid[]) or from_user_id = any(${userIds}::uuid[])))::bigint as net,
      (select coalesce(sum(delta), 0) from entries e join transactions x on x.id = e.transaction_id
         where e.user_id = any(${userIds}::uuid[]) and x.currency = 'USD')::bigint as entries`
  t.equal(Number(row?.balances), Number(row?.net), 'sum of balances equals deposits minus withdrawals')
  t.equal(Number(row?.entries), Number(row?.net), 'entries add up to the same')
}

t.test('deposit, withdrawal and transfer move exactly the amount', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const alice = await createUser(app)
  const bob = await createUser(app)

  const deposit = await post(app, alice, { kind: 'deposit', amount: 10_000, currency: 'USD', description: 'salary' })
  t.equal(deposit.statusCode, 201)
  const created = deposit.json()
  t.match(created, { kind: 'deposit', amount: 10_000, currency: 'USD', fromUserId: null, toUserId: alice.id, description: 'salary' })
  t.match(created.id, /^\d+$/)
  t.equal(deposit.headers.location, `/transactions/${created.id}`)
  t.equal(deposit.headers['idempotent-replayed'], undefined)

  t.equal((await post(app, alice, { kind: 'withdrawal', amount: 2_500, currency: 'USD' })).statusCode, 201)
  const transfer = await post(app, alice, { kind: 'transfer', amount: 1_000, currency: 'USD', toUserId: bob.id })
  t.equal(transfer.statusCode, 201)
  t.match(transfer.json(), { fromUserId: alice.id, toUserId: bob.id, amount: 1_000 })

  t.equal(await balance(sql, alice.id), 6_500)
  t.equal(await balance(sql, bob.id), 1_000)
  const balances = await app.inject({ method: 'GET', url: '/balances', headers: { authorization: alice.authorization } })
  t.same(balances.json(), { data: [{ currency: 'USD', balance: 6_500 }] })
  const [entries] = await sql`select count(*)::int as n from entries where transaction_id = ${transfer.json().id}`
  t.equal(entries?.n, 2, 'a transfer has two entries')
  await assertLedgerBalanced(t, sql, [alice.id, bob.id])
})

t.test('a money write is one database round trip', async (t) => {
  const app = await buildTestApp(t)
  const alice = await createUser(app)
  const { response, spans } = await injectTraced(app, {
    method: 'POST', url: '/transactions', headers: { authorization: alice.authorization, 'idempotency-key': randomUUID() }, payload: { kind: 'deposit', amount: 5, currency: 'EUR' }
  })
  t.equal(response.statusCode, 201)
  t.equal(dbSpans(spans).length, 1)
})

t.test('an overdraft is 422 and writes nothing', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const alice = await createUser(app)
  const bob = await createUser(app)
  await post(app, alice, { kind: 'deposit', amount: 100, currency: 'USD' })
  const key = randomUUID()
  for (const payload of [{ kind: 'withdrawal', amount: 101, currency: 'USD' }, { kind: 'transfer', amount: 101, currency: 'USD', toUserId: bob.id }, { kind: 'withdrawal', amount: 1, currency: 'EUR' }]) {
    const response = await post(app, alice, payload, key)
    t.equal(response.statusCode, 422, JSON.stringify(payload))
    t.equal(response.json().type, 'https://ledger-api.dev/problems/insufficient_funds')
  }
  t.equal(await balance(sql, alice.id), 100)
  t.equal(await balance(sql, bob.id), null)
  t.equal(await transactionCount(sql, alice.id), 1)
  const [keys] = await sql`select count(*)::int as n from idempotency_keys where user_id = ${alice.id}`
  t.equal(keys?.n, 1, 'the refused key was not kept, so a retry after a deposit can succeed')
  t.equal((await post(app, alice, { kind: 'deposit', amount: 1_000, currency: 'USD' })).statusCode, 201)
  t.equal((await post(app, alice, { kind: 'withdrawal', amount: 101, currency: 'USD' }, key)).statusCode, 201)
})

t.test('bad transfers and bad money are refused before the database', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const alice = await createUser(app)
  await post(app, alice, { kind: 'deposit', amount: 1_000, currency: 'USD' })

  const self = await post(app, alice, { kind: 'transfer', amount: 1, currency: 'USD', toUserId: alice.id })
  t.equal(self.statusCode, 400)
  t.same(self.json().errors.map((e: { path: string }) => e.path), ['toUserId'])
  const unknown = await post(app, alice, { kind: 'transfer', amount: 1, currency: 'USD', toUserId: randomUUID() })
  t.equal(unknown.statusCode, 404)

  const invalid: Array<[string, Record<string, unknown>, string]> = [
    ['float amount', { kind: 'deposit', amount: 10.5, currency: 'USD' }, 'amount'],
    ['negative amount', { kind: 'deposit', amount: -1, currency: 'USD' }, 'amount'],
    ['zero', { kind: 'deposit', amount: 0, currency: 'USD' }, 'amount'],
    ['2^63', { kind: 'deposit', amount: 2 ** 63, currency: 'USD' }, 'amount'],
    ['2^53', { kind: 'deposit', amount: 2 ** 53, currency: 'USD' }, 'amount'],
    ['amount as string', { kind: 'deposit', amount: '100', currency: 'USD' }, 'amount'],
    ['unknown currency', { kind: 'deposit', amount: 1, currency: 'XYZ' }, 'currency'],
    ['lower-case currency', { kind: 'deposit', amount: 1, currency: 'usd' }, 'currency'],
    ['unknown kind', { kind: 'refund', amount: 1, currency: 'USD' }, 'kind'],
    ['transfer without recipient', { kind: 'transfer', amount: 1, currency: 'USD' }, 'toUserId'],
    ['deposit with recipient', { kind: 'deposit', amount: 1, currency: 'USD', toUserId: randomUUID() }, 'toUserId'],
    ['mass assignment fromUserId', { kind: 'deposit', amount: 1, currency: 'USD', fromUserId: randomUUID() }, ''],
    ['mass assignment balance', { kind: 'deposit', amount: 1, currency: 'USD', balance: 1e9 }, ''],
    ['NUL in description', { kind: 'deposit', amount: 1, currency: 'USD', description: 'a\u0000b' }, 'description']
  ]
  for (const [name, payload, path] of invalid) {
    const response = await post(app, alice, payload)
    t.equal(response.statusCode, 400, name)
    if (path !== '') t.ok(response.json().errors.some((e: { path: string }) => e.path === path), `${name} names ${path}`)
  }
  const noKey = await app.inject({ method: 'POST', url: '/transactions', headers: { authorization: alice.authorization }, payload: { kind: 'deposit', amount: 1, currency: 'USD' } })
  t.equal(noKey.statusCode, 400)
  t.same(noKey.json().errors.map((e: { path: string }) => e.path), ['idempotency-key'])
  const longKey = await post(app, alice, { kind: 'deposit', amount: 1, currency: 'USD' }, 'k'.repeat(256))
  t.equal(longKey.statusCode, 400)
  t.equal(await transactionCount(sql, alice.id), 1, 'nothing was written')
  t.equal(await balance(sql, alice.id), 1_000)
})

t.test('idempotency: replay, mismatch, and per-user scope', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const alice = await createUser(app)
  const bob = await createUser(app)
  const key = randomUUID()
  const first = await post(app, alice, { kind: 'deposit', amount: 700, currency: 'USD' }, key)
  const again = await post(app, alice, { kind: 'deposit', amount: 700, currency: 'USD' }, key)
  t.equal(again.statusCode, 201)
  t.equal(again.headers['idempotent-replayed'], 'true')
  t.same(again.json(), first.json(), 'the original response, same id')
  const different = await post(app, alice, { kind: 'deposit', amount: 701, currency: 'USD' }, key)
  t.equal(different.statusCode, 422)
  t.equal(different.json().type, 'https://ledger-api.dev/problems/idempotency_key_reused')
  const bobSameKey = await post(app, bob, { kind: 'deposit', amount: 5, currency: 'USD' }, key)
  t.equal(bobSameKey.statusCode, 201, 'keys are scoped per user')
  t.not(bobSameKey.json().id, first.json().id)
  t.equal(await balance(sql, alice.id), 700)
  t.equal(await transactionCount(sql, alice.id), 1)
})

t.test('50 concurrent requests with one key create exactly one transaction', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const alice = await createUser(app)
  const key = randomUUID()
  const responses = await Promise.all(Array.from({ length: 50 }, () => post(app, alice, { kind: 'deposit', amount: 300, currency: 'USD' }, key)))
  const statuses = responses.map((r) => r.statusCode)
  t.ok(statuses.every((s) => s === 201 || s === 409), `only 201 or 409: ${[...new Set(statuses)].join(',')}`)
  t.equal(new Set(responses.filter((r) => r.statusCode === 201).map((r) => r.json().id)).size, 1, 'every success names the same transaction')
  t.equal(responses.filter((r) => r.headers['idempotent-replayed'] === undefined && r.statusCode === 201).length, 1, 'one original, the rest replays')
  t.equal(await transactionCount(sql, alice.id), 1)
  t.equal(await balance(sql, alice.id), 300)
})

t.test('200 concurrent transfers back and forth: no deadlock, no negative balance, invariant holds', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const alice = await createUser(app)
  const bob = await createUser(app)
  await post(app, alice, { kind: 'deposit', amount: 1_000, currency: 'USD' })
  await post(app, bob, { kind: 'deposit', amount: 1_000, currency: 'USD' })
  const responses = await Promise.all(Array.from({ length: 200 }, (_, i) => i % 2 === 0
    ? post(app, alice, { kind: 'transfer', amount: 37, currency: 'USD', toUserId: bob.id })
    : post(app, bob, { kind: 'transfer', amount: 41, currency: 'USD', toUserId: alice.id })))
  const statuses = responses.map((r) => r.statusCode)
  t.ok(statuses.every((s) => s === 201 || s === 422), `only successes or clean refusals: ${[...new Set(statuses)].join(',')}`)
  t.ok(statuses.filter((s) => s === 201).length > 100, 'most transfers went through')
  const a = await balance(sql, alice.id)
  const b = await balance(sql, bob.id)
  t.ok(a !== null && a >= 0 && b !== null && b >= 0, 'no negative balance')
  t.equal((a ?? 0) + (b ?? 0), 2_000, 'money is neither created nor lost')
  await assertLedgerBalanced(t, sql, [alice.id, bob.id])
})

t.test('pagination walks every row once, newest first, while rows are inserted', async (t) => {
  const app = await buildTestApp(t)
  const alice = await createUser(app)
  const bob = await createUser(app)
  const ids: string[] = []
  for (let i = 0; i < 23; i++) ids.push((await post(app, i % 3 === 0 ? bob : alice, i % 3 === 0 ? { kind: 'deposit', amount: 1, currency: 'USD' } : { kind: 'deposit', amount: i + 1, currency: 'USD' })).json().id)
  const aliceIds = ids.filter((_, i) => i % 3 !== 0).reverse()

  const seen: string[] = []
  let cursor: string | null = null
  let pages = 0
  do {
    const url: string = `/transactions?limit=5${cursor === null ? '' : `&cursor=${cursor}`}`
    const response = await app.inject({ method: 'GET', url, headers: { authorization: alice.authorization } })
    t.equal(response.statusCode, 200)
    const body = response.json() as { data: Array<{ id: string }>, nextCursor: string | null }
    seen.push(...body.data.map((tx) => tx.id))
    cursor = body.nextCursor
    // Newer rows arriving mid-walk must not shift or repeat what is left to read.
    if (pages++ === 1) await post(app, alice, { kind: 'deposit', amount: 99, currency: 'USD' })
  } while (cursor !== null)
  t.same(seen, aliceIds, 'each of the walk-start rows exactly once, newest first')
  t.equal(pages, Math.ceil(aliceIds.length / 5))

  const tampered = await app.inject({ method: 'GET', url: '/transactions?cursor=eyJiZWZvcmUiOiI5OTk5In0.AAAAAAAAAAAAAAAAAAAAAA', headers: { authorization: alice.authorization } })
  t.equal(tampered.statusCode, 400)
  const firstPage = (await app.inject({ method: 'GET', url: '/transactions?limit=2', headers: { authorization: alice.authorization } })).json()
  const foreign = await app.inject({ method: 'GET', url: `/transactions?limit=2&cursor=${firstPage.nextCursor}`, headers: { authorization: bob.authorization } })
  t.equal(foreign.statusCode, 400, "another user's cursor is refused")
  const [body, signature] = String(firstPage.nextCursor).split('.')
  const edited = Buffer.from(JSON.stringify({ before: '999999999' })).toString('base64url')
  t.not(edited, body)
  const forged = await app.inject({ method: 'GET', url: `/transactions?cursor=${edited}.${signature}`, headers: { authorization: alice.authorization } })
  t.equal(forged.statusCode, 400, 'an edited position with the old signature is refused')
  for (const limit of ['0', '101', 'abc', '-1', '1.5']) {
    const response = await app.inject({ method: 'GET', url: `/transactions?limit=${limit}`, headers: { authorization: alice.authorization } })
    t.equal(response.statusCode, 400, `limit=${limit}`)
  }
  const defaults = (await app.inject({ method: 'GET', url: '/transactions', headers: { authorization: alice.authorization } })).json()
  t.equal(defaults.data.length, aliceIds.length + 1, 'default limit 50 returns everything here')
  t.equal(defaults.nextCursor, null)
})

t.test("another user's transaction is 404", async (t) => {
  const app = await buildTestApp(t)
  const alice = await createUser(app)
  const bob = await createUser(app)
  const carol = await createUser(app)
  await post(app, alice, { kind: 'deposit', amount: 50, currency: 'USD' })
  const transfer = (await post(app, alice, { kind: 'transfer', amount: 20, currency: 'USD', toUserId: bob.id })).json()
  for (const user of [alice, bob]) {
    const response = await app.inject({ method: 'GET', url: `/transactions/${transfer.id}`, headers: { authorization: user.authorization } })
    t.equal(response.statusCode, 200)
    t.same(response.json(), transfer)
  }
  const other = await app.inject({ method: 'GET', url: `/transactions/${transfer.id}`, headers: { authorization: carol.authorization } })
  t.equal(other.statusCode, 404)
  t.notMatch(other.body, new RegExp(alice.id))
  const list = (await app.inject({ method: 'GET', url: '/transactions', headers: { authorization: carol.authorization } })).json()
  t.same(list, { data: [], nextCursor: null })
  for (const id of ['abc', '0', '99999999999999999999', "1' OR '1'='1"]) {
    const response = await app.inject({ method: 'GET', url: `/transactions/${encodeURIComponent(id)}`, headers: { authorization: carol.authorization } })
    t.equal(response.statusCode, 400, id)
  }
})
