// post_transactions() (sql/functions/post_transactions.sql) has two paths: a plain batch (every request in it will
// be created) is applied with a few set statements, anything else request by request through post_transaction().
// These tests prove which path a batch took, that a plain batch leaves exactly what the per-request path leaves for
// the same requests, and that batches which are not plain fall back and get exactly post_transaction()'s answers.
//
// Which path ran is read from the function statistics of the batch's own transaction: the per-request path calls
// post_transaction() for each request (a call that raises is not counted), the set-based path never does. Turning
// those statistics on for one transaction takes a superuser, so the batches run on the admin connection; the
// function is SECURITY DEFINER and runs as its owner whoever calls it.
import { randomUUID } from 'node:crypto'
import postgres from 'postgres'
import t, { type Test } from 'tap'
import { assertLedgerBalanced, balance } from '../routes/ledger/support.ts'
import { buildTestApp, createClient, createUser, fund, ownerSql, superuserSql, testSql, type TestClient, type TestUser } from '../helper.ts'

const adminUrl = process.env.DATABASE_ADMIN_URL
const needsAdmin = adminUrl === undefined ? 'needs DATABASE_ADMIN_URL (the test runner sets it for its local stack)' : false
const MONEY_MAX = 9_007_199_254_740_991

type Request = Record<string, unknown>

interface BatchRow {
  ordinal: number
  outcome: string
  id: string | null
  kind: string | null
  amount: string | null
  currency: string | null
  from_user_id: string | null
  to_user_id: string | null
  description: string | null
  reference: string | null
  created_at: Date | null
  queued: number | null
  error_sqlstate: string | null
  error_constraint: string | null
}

/** Runs one batch in a transaction of its own; `perRequest` is how many post_transaction() calls it made that returned. */
async function runBatch (sql: postgres.Sql, requests: unknown[]): Promise<{ rows: BatchRow[], perRequest: number }> {
  return await sql.begin(async (tx) => {
    await tx`set local track_functions = 'pl'`
    // Counts not yet reported by an earlier transaction of this session are still in the figure: the difference.
    const calls = () => tx<Array<{ n: number }>>`select coalesce(pg_stat_get_xact_function_calls('public.post_transaction'::regproc), 0)::int as n`
    const [before] = await calls()
    const rows = await tx<BatchRow[]>`select * from post_transactions(${tx.json(requests as postgres.JSONValue)}, 86400)`
    const [after] = await calls()
    return { rows: [...rows], perRequest: (after?.n ?? 0) - (before?.n ?? 0) }
  }) as { rows: BatchRow[], perRequest: number }
}

const transfer = (from: TestUser, to: { id: string }, amount: number, extra: Request = {}): Request =>
  ({ client_id: null, user_id: from.id, key: randomUUID(), fingerprint: randomUUID(), kind: 'transfer', amount, currency: 'USD', to_user_id: to.id, description: null, reference: null, ...extra })
const funding = (client: TestClient, kind: 'deposit' | 'withdrawal', user: TestUser, amount: number, extra: Request = {}): Request =>
  ({ client_id: client.id, user_id: user.id, key: randomUUID(), fingerprint: randomUUID(), kind, amount, currency: 'USD', to_user_id: null, description: null, reference: `ref-${randomUUID()}`, ...extra })
const answers = (rows: BatchRow[]) => rows.map((row) => [row.outcome, row.error_sqlstate])

/** Everything a batch wrote for its transactions, with ids, users and endpoints named by their place, so two batches over two sets of users compare. */
async function written (sql: postgres.Sql, ids: string[], names: Map<string, string>) {
  const name = (id: string | null) => id === null ? null : (names.get(id) ?? `unknown ${id}`)
  const index = (id: string) => ids.indexOf(id)
  const transactions = await sql<Array<{ id: string, kind: string, amount: string, currency: string, from_user_id: string | null, to_user_id: string | null, description: string | null, client_id: string | null, reference: string | null, created_at: Date }>>`
    select t.id::text, t.kind, t.amount::text, t.currency, t.from_user_id, t.to_user_id, t.description, t.client_id, t.reference, t.created_at
      from transactions t where t.id in ${sql(ids)} order by t.id`
  const entries = await sql<Array<{ user_id: string, transaction_id: string, delta: string }>>`
    select e.user_id, e.transaction_id::text, e.delta::text from entries e where e.transaction_id in ${sql(ids)} order by e.transaction_id, e.delta`
  const keys = await sql<Array<{ principal_id: string, key: string, fingerprint: string, transaction_id: string, created_at: Date }>>`
    select k.principal_id, k.key, k.fingerprint, k.transaction_id::text, k.created_at from idempotency_keys k where k.transaction_id in ${sql(ids)} order by k.transaction_id`
  const deliveries = await sql<Array<{ id: string, event_id: string, endpoint_id: string, type: string, transaction_id: string, job_endpoint: string | null, job_kind: string | null }>>`
    select d.id::text, d.event_id::text, d.endpoint_id::text, d.type, d.transaction_id::text, j.endpoint_id::text as job_endpoint, j.kind as job_kind
      from webhook_deliveries d
      left join jobs j on j.payload->>'deliveryId' = d.id::text
     where d.transaction_id in ${sql(ids)} order by d.id`
  const createdAt = transactions[0]?.created_at.getTime()
  return {
    transactions: transactions.map((row) => ({ ...row, id: index(row.id), from_user_id: name(row.from_user_id), to_user_id: name(row.to_user_id), client_id: name(row.client_id), reference: name(row.reference), created_at: row.created_at.getTime() === createdAt })),
    entries: entries.map((row) => ({ user: name(row.user_id), transaction: index(row.transaction_id), delta: row.delta })),
    keys: keys.map((row) => ({ principal: name(row.principal_id), key: name(row.key), fingerprint: name(row.fingerprint), transaction: index(row.transaction_id), created_at: row.created_at.getTime() === createdAt })),
    // Deliveries in the order they were written; one event per principal and transaction, whichever its id.
    deliveries: deliveries.map((row) => ({
      transaction: index(row.transaction_id),
      endpoint: name(row.endpoint_id),
      type: row.type,
      sameEventAs: deliveries.findIndex((other) => other.event_id === row.event_id),
      job: row.job_kind === null ? null : { kind: row.job_kind, endpoint: name(row.job_endpoint) }
    }))
  }
}

async function endpointFor (t: Test, kind: 'user' | 'client', principalId: string): Promise<string> {
  const [row] = await ownerSql()<Array<{ id: string }>>`
    insert into webhook_endpoints (principal_kind, principal_id, url, events, secret)
    values (${kind}, ${principalId}, 'https://hooks.example.test/ledger', '{transaction.created}', ${`whsec_${'A'.repeat(32)}`})
    returning id::text`
  const id = row?.id ?? ''
  t.teardown(async () => {
    await ownerSql()`delete from jobs where kind = 'webhook.deliver' and payload->>'deliveryId' in (select id::text from webhook_deliveries where endpoint_id = ${id})`
    await ownerSql()`delete from webhook_endpoints where id = ${id}`
  })
  return id
}

t.test('a plain batch is applied set-based and leaves exactly what the per-request path leaves for the same requests', { skip: needsAdmin }, async (t) => {
  const app = await buildTestApp(t)
  const admin = superuserSql(t)!
  const sql = testSql(t)

  /** One set of principals, funded alike, with the same endpoints; `names` maps each id (and key, fingerprint) to a role. */
  const world = async () => {
    const names = new Map<string, string>()
    const client = await createClient(app, ['funds:write', 'events:read'])
    const [payer, saver, newcomer, subscriber] = [await createUser(app), await createUser(app), await createUser(app), await createUser(app)]
    await fund(app, payer, 1_000)
    await fund(app, saver, 50)
    await fund(app, subscriber, 20)
    names.set(client.id, 'client').set(payer.id, 'payer').set(saver.id, 'saver').set(newcomer.id, 'newcomer').set(subscriber.id, 'subscriber')
    names.set(await endpointFor(t, 'client', client.id), 'client endpoint')
    names.set(await endpointFor(t, 'user', subscriber.id), 'subscriber endpoint')
    names.set(await endpointFor(t, 'user', subscriber.id), 'subscriber second endpoint')
    const requests = [
      transfer(payer, saver, 300, { description: 'rent' }),
      // The saver spends exactly what they hold only after the transfer before it: 50 + 300.
      transfer(saver, newcomer, 350),
      funding(client, 'deposit', subscriber, 500),
      // Down to exactly 0.
      funding(client, 'withdrawal', payer, 700, { description: 'payout' }),
      transfer(newcomer, payer, 10),
      transfer(subscriber, saver, 5)
    ]
    requests.forEach((request, i) => {
      names.set(request.key as string, `key ${i}`).set(request.fingerprint as string, `fingerprint ${i}`)
      if (typeof request.reference === 'string') names.set(request.reference, `reference ${i}`)
    })
    const users = [payer, saver, newcomer, subscriber]
    return { names, requests, users, ids: users.map((user) => user.id) }
  }
  const [a, b] = [await world(), await world()]

  const fast = await runBatch(admin, a.requests)
  // A trailing element that is no object makes the same requests not plain: they go request by request.
  const slow = await runBatch(admin, [...b.requests, 42])
  t.equal(fast.perRequest, 0, 'the plain batch never called post_transaction()')
  t.equal(slow.perRequest, b.requests.length, 'the other batch called it for each of its requests')
  t.same(answers(slow.rows).at(-1), ['refused', '22023'], 'the trailing element was refused on its own')

  const shape = (rows: BatchRow[], names: Map<string, string>) => rows.map((row) => ({
    ...row,
    id: null,
    from_user_id: row.from_user_id === null ? null : names.get(row.from_user_id),
    to_user_id: row.to_user_id === null ? null : names.get(row.to_user_id),
    reference: row.reference === null ? null : names.get(row.reference),
    created_at: row.created_at?.getTime() === rows[0]?.created_at?.getTime()
  }))
  t.same(shape(fast.rows, a.names), shape(slow.rows.slice(0, -1), b.names), 'the same rows, outcomes and queued counts')
  t.same(fast.rows.map((row) => row.outcome), a.requests.map(() => 'created'))
  t.same(fast.rows.map((row) => row.queued), [0, 0, 3, 1, 0, 2], 'the client\'s event for its deposit and withdrawal; the subscriber\'s on both endpoints')
  for (const { rows } of [fast, slow]) {
    const ids = rows.flatMap((row) => row.id === null ? [] : [BigInt(row.id)])
    t.ok(ids.every((id, i) => i === 0 || id > (ids[i - 1] ?? 0n)), 'ids increase in input order')
  }

  const fastIds = fast.rows.map((row) => row.id ?? '')
  const slowIds = slow.rows.slice(0, -1).map((row) => row.id ?? '')
  const [fastRows, slowRows] = [await written(sql, fastIds, a.names), await written(sql, slowIds, b.names)]
  t.same(fastRows, slowRows, 'the same transactions, entries, keys and outbox rows')
  t.same([fastRows.transactions.length, fastRows.entries.length, fastRows.keys.length], [6, 10, 6])
  t.equal(fastRows.deliveries.filter((delivery) => delivery.job?.kind === 'webhook.deliver').length, 6, 'six deliveries, each with its job')
  const balances = async (users: TestUser[]) => Promise.all(users.map((user) => balance(sql, user.id)))
  t.same(await balances(a.users), await balances(b.users), 'the same balances')
  t.same(await balances(a.users), [10, 5, 340, 515], 'payer 1000 - 300 - 700 + 10, saver 50 + 300 - 350 + 5, newcomer 350 - 10, subscriber 20 + 500 - 5')
  await assertLedgerBalanced(t, sql, a.ids)
  await assertLedgerBalanced(t, sql, b.ids)
})

t.test('batches that are not plain fall back to the per-request path and get exactly its answers', { skip: needsAdmin }, async (t) => {
  const app = await buildTestApp(t)
  const admin = superuserSql(t)!
  const sql = testSql(t)
  const client = await createClient(app)

  t.test('a refused request in the middle', async (t) => {
    const [alice, bob, carol, dave] = [await createUser(app), await createUser(app), await createUser(app), await createUser(app)]
    await fund(app, alice, 1_000)
    const { rows, perRequest } = await runBatch(admin, [transfer(alice, bob, 100), transfer(carol, bob, 50), transfer(alice, dave, 200)])
    t.same(answers(rows), [['created', null], ['refused', 'LDG01'], ['created', null]])
    t.equal(perRequest, 2)
    t.same([await balance(sql, alice.id), await balance(sql, bob.id), await balance(sql, carol.id), await balance(sql, dave.id)], [700, 100, null, 200],
      'no balance row is left for the refused sender')
    await assertLedgerBalanced(t, sql, [alice.id, bob.id, carol.id, dave.id])
  })

  t.test('the same key twice: created, then replayed or a mismatch', async (t) => {
    const [alice, bob] = [await createUser(app), await createUser(app)]
    await fund(app, alice, 1_000)
    const first = transfer(alice, bob, 10)
    const second = transfer(alice, bob, 20)
    const { rows, perRequest } = await runBatch(admin, [first, { ...first }, second, { ...second, amount: 21, fingerprint: randomUUID() }])
    t.same(answers(rows), [['created', null], ['replayed', null], ['created', null], ['mismatch', null]])
    t.equal(rows[1]?.id, rows[0]?.id, 'the replay names the first transaction')
    t.equal(perRequest, 4)
    t.same([await balance(sql, alice.id), await balance(sql, bob.id)], [970, 30])
  })

  t.test('a key stored before the batch replays', async (t) => {
    const [alice, bob] = [await createUser(app), await createUser(app)]
    await fund(app, alice, 1_000)
    const stored = transfer(alice, bob, 10)
    const before = await runBatch(admin, [stored])
    t.same(answers(before.rows), [['created', null]])
    t.equal(before.perRequest, 0, 'a batch of one plain request is set-based too')
    const { rows, perRequest } = await runBatch(admin, [transfer(alice, bob, 1), stored])
    t.same(answers(rows), [['created', null], ['replayed', null]])
    t.equal(rows[1]?.id, before.rows[0]?.id)
    t.equal(perRequest, 2)
    t.same([await balance(sql, alice.id), await balance(sql, bob.id)], [989, 11])
  })

  t.test('insufficient funds reached only cumulatively within the batch', async (t) => {
    const [alice, bob, carol] = [await createUser(app), await createUser(app), await createUser(app)]
    await fund(app, alice, 100)
    await fund(app, carol, 100)
    // Each alone is covered; the second is not after the first.
    const spent = await runBatch(admin, [transfer(alice, bob, 60), transfer(alice, carol, 60), transfer(bob, alice, 50)])
    t.same(answers(spent.rows), [['created', null], ['refused', 'LDG01'], ['created', null]])
    t.ok(spent.perRequest > 0, 'fell back')
    t.same([await balance(sql, alice.id), await balance(sql, bob.id), await balance(sql, carol.id)], [90, 10, 100])
    // Covered in sum by a later request, but not when it runs: alice holds 90, sends 150, then receives 100.
    const early = await runBatch(admin, [transfer(alice, bob, 150), transfer(carol, alice, 100)])
    t.same(answers(early.rows), [['refused', 'LDG01'], ['created', null]])
    t.ok(early.perRequest > 0, 'fell back')
    t.same([await balance(sql, alice.id), await balance(sql, bob.id), await balance(sql, carol.id)], [190, 10, 0])
    await assertLedgerBalanced(t, sql, [alice.id, bob.id, carol.id])
  })

  t.test('a balance limit reached only cumulatively within the batch', async (t) => {
    const rich = await createUser(app)
    await fund(app, rich, MONEY_MAX - 10, 'USD', { client })
    const { rows, perRequest } = await runBatch(admin, [
      funding(client, 'deposit', rich, 5), funding(client, 'deposit', rich, 6), funding(client, 'deposit', rich, 5)
    ])
    t.same(answers(rows), [['created', null], ['refused', 'LDG03'], ['created', null]])
    t.ok(perRequest > 0, 'fell back')
    t.equal(await balance(sql, rich.id), MONEY_MAX, 'exactly at the bound')
  })

  t.test('an unknown user, a revoked client and a reused reference', async (t) => {
    const [alice, bob] = [await createUser(app), await createUser(app)]
    await fund(app, alice, 1_000)
    const revoked = await createClient(app, ['funds:write'], 'revoked settlement')
    await ownerSql()`update service_clients set revoked_at = now() where id = ${revoked.id}`
    const reference = `ref-${randomUUID()}`
    const { rows, perRequest } = await runBatch(admin, [
      transfer(alice, bob, 5),
      transfer(alice, { id: randomUUID() }, 5),
      funding(revoked, 'deposit', bob, 5),
      funding(client, 'deposit', bob, 7, { reference }),
      funding(client, 'deposit', bob, 9, { reference }),
      transfer(alice, bob, 6)
    ])
    t.same(answers(rows), [['created', null], ['refused', 'LDG02'], ['refused', 'LDG06'], ['created', null], ['refused', '23505'], ['created', null]])
    t.equal(rows[4]?.error_constraint, 'transactions_client_reference_key')
    t.ok(perRequest > 0, 'fell back')
    t.same([await balance(sql, alice.id), await balance(sql, bob.id)], [989, 18])
  })
})
