// The ledger's rules as the database enforces them (sql/007, sql/functions/): the API's role cannot touch money rows
// directly, history is append-only, balance rows are created-or-locked in order (a real interleaving that used to
// deadlock), idempotency keys expire and are purged.
import { randomUUID } from 'node:crypto'
import postgres from 'postgres'
import t, { type Test } from 'tap'
import { purgeIdempotencyKeys } from '../../routes/ledger/repository.ts'
import { buildTestApp, createClient, createUser, fund, testSql, type TestUser } from '../helper.ts'

const apiUrl = process.env.DATABASE_URL ?? ''

function apiRoleSql (t: Test) {
  const sql = postgres(apiUrl, { max: 1, prepare: false, onnotice: () => {} })
  t.teardown(() => sql.end({ timeout: 5 }))
  return sql
}

t.test('the API role is the restricted one and cannot write money rows', async (t) => {
  const app = await buildTestApp(t)
  const api = apiRoleSql(t)
  const alice = await createUser(app)
  await fund(app, alice, 100)
  const [who] = await api<Array<{ user: string }>>`select current_user as user`
  t.equal(who?.user, 'ledger_api', 'DATABASE_URL connects as ledger_api')
  const attempts: Array<[string, () => Promise<unknown>]> = [
    ['update balances', () => api`update balances set balance = balance + 1000 where user_id = ${alice.id}`],
    ['insert balances', () => api`insert into balances (user_id, currency, balance) values (${alice.id}, 'EUR', 1000)`],
    ['delete entries', () => api`delete from entries where user_id = ${alice.id}`],
    ['insert entries', () => api`insert into entries (user_id, transaction_id, delta) select ${alice.id}, id, 1 from transactions limit 1`],
    ['update transactions', () => api`update transactions set amount = 1 where to_user_id = ${alice.id}`],
    ['insert transactions', () => api`insert into transactions (kind, amount, currency, from_user_id, to_user_id) values ('transfer', 1, 'USD', ${alice.id}, ${alice.id})`],
    ['delete idempotency keys', () => api`delete from idempotency_keys`],
    ['insert service clients', () => api`insert into service_clients (name, secret_hash, scopes) values ('x', ${Buffer.alloc(32)}, '{funds:write}')`]
  ]
  for (const [name, attempt] of attempts) {
    await t.rejects(attempt(), { code: '42501' }, `${name}: permission denied`)
  }
  const [row] = await api<Array<{ balance: string }>>`select balance::text from balances where user_id = ${alice.id}`
  t.equal(row?.balance, '100', 'the balance is untouched, and readable')
})

t.test('transactions and entries are append-only, for the owner too', async (t) => {
  const app = await buildTestApp(t)
  const owner = testSql(t)
  const alice = await createUser(app)
  const id = (await fund(app, alice, 100)).json().id as string
  await t.rejects(owner`update transactions set amount = 1 where id = ${id}`, { code: 'LDG90' })
  await t.rejects(owner`delete from entries where transaction_id = ${id}`, { code: 'LDG90' })
  await t.rejects(owner`truncate entries`, { code: 'LDG90' })
  const [row] = await owner<Array<{ amount: string }>>`select amount::text from transactions where id = ${id}`
  t.equal(row?.amount, '100')
})

/**
 * The interleaving that deadlocked when only existing balance rows were locked in order: T1 (A -> B) while B has no
 * row in the currency; a deposit creates B's row; T2 (B -> A) locks B and waits for A; T1's credit of B then waited
 * for T2. A third connection holds A's row so each step happens in this order, for real, in PostgreSQL.
 */
t.test('opposite transfers while the recipient\'s first balance row appears do not deadlock', async (t) => {
  const app = await buildTestApp(t)
  const owner = testSql(t)
  const client = await createClient(app)
  const [first, second] = [await createUser(app), await createUser(app)]
  const [b, a] = [first, second].sort((x, y) => x.id < y.id ? -1 : 1) as [TestUser, TestUser]
  await fund(app, a, 1_000, 'SEK', { client })
  const post = (caller: { authorization: string }, payload: Record<string, unknown>) => app.inject({
    method: 'POST', url: '/transactions', headers: { authorization: caller.authorization, 'idempotency-key': randomUUID() }, payload
  })
  const waiting = async (count: number) => {
    for (let i = 0; i < 200; i++) {
      const [row] = await owner<Array<{ n: number }>>`
        select count(*)::int as n from pg_stat_activity where wait_event_type = 'Lock' and query like '%post_transaction%'`
      if ((row?.n ?? 0) >= count) return true
      await new Promise((resolve) => setTimeout(resolve, 25))
    }
    return false
  }

  let release = () => {}
  const released = new Promise<void>((resolve) => { release = resolve })
  let held = () => {}
  const isHeld = new Promise<void>((resolve) => { held = resolve })
  const holder = owner.begin(async (tx) => {
    await tx`select 1 from balances where user_id = ${a.id} and currency = 'SEK' for update`
    held()
    await released
  })
  await isHeld
  const t1 = post(a, { kind: 'transfer', amount: 300, currency: 'SEK', toUserId: b.id })
  t.ok(await waiting(1), 'T1 (A -> B) waits for A\'s row')
  const deposit = post(client, { kind: 'deposit', userId: b.id, amount: 500, currency: 'SEK', reference: `first-row-${b.id}` })
  await new Promise((resolve) => setTimeout(resolve, 300))
  const t2 = post(b, { kind: 'transfer', amount: 200, currency: 'SEK', toUserId: a.id })
  await new Promise((resolve) => setTimeout(resolve, 300))
  release()
  await holder
  const responses = await Promise.all([t1, deposit, t2])
  t.same(responses.map((r) => r.statusCode), [201, 201, 201], `no deadlock (40P01 would be a 503): ${responses.map((r) => r.body).join(' | ')}`)
  const balances = await owner<Array<{ user_id: string, balance: string }>>`
    select user_id, balance::text from balances where currency = 'SEK' and user_id in (${a.id}, ${b.id})`
  const of = (user: TestUser) => balances.find((row) => row.user_id === user.id)?.balance
  t.equal(of(a), String(1_000 - 300 + 200))
  t.equal(of(b), String(500 + 300 - 200))
})

t.test('an idempotency key replays for its window, then is purged and may be used afresh', async (t) => {
  const app = await buildTestApp(t)
  const owner = testSql(t)
  const client = await createClient(app)
  const alice = await createUser(app)
  const key = randomUUID()
  const first = await fund(app, alice, 10, 'USD', { client, key, reference: `window-${key}` })
  const replay = await fund(app, alice, 10, 'USD', { client, key, reference: `window-${key}` })
  t.equal(replay.headers['idempotent-replayed'], 'true', 'inside the window: a replay')

  // Past the window (24 h by default), the key no longer replays: the same key with a new body is a new request.
  await owner`update idempotency_keys set created_at = now() - interval '25 hours' where principal_id = ${client.id} and key = ${key}`
  const fresh = await fund(app, alice, 20, 'USD', { client, key, reference: `window-2-${key}` })
  t.not(fresh.json().id, first.json().id, 'an expired key is taken over by the new request')
  t.equal(fresh.headers['idempotent-replayed'], undefined)

  await owner`update idempotency_keys set created_at = now() - interval '25 hours' where principal_id = ${client.id} and key = ${key}`
  const otherKey = randomUUID()
  await fund(app, alice, 1, 'USD', { client, key: otherKey })
  // The purge runs as the API role (SECURITY DEFINER function): it removes exactly the expired key.
  let purged = 0
  for (let round = 0; round < 20 && purged === 0; round++) purged += await purgeIdempotencyKeys(app.db, 24 * 3600, 100_000)
  const keys = await owner<Array<{ key: string }>>`select key from idempotency_keys where principal_id = ${client.id} and key in (${key}, ${otherKey})`
  t.same(keys.map((row) => row.key), [otherKey], 'the expired key is gone, the fresh one stays')
  t.equal(await purgeIdempotencyKeys(app.db, 60, 100_000) >= 0, true, 'a window under a day is raised to a day by the database')
  const [kept] = await owner<Array<{ n: number }>>`select count(*)::int as n from idempotency_keys where principal_id = ${client.id} and key = ${otherKey}`
  t.equal(kept?.n, 1, 'so a fresh key survives a purge asked to keep only a minute')
})
