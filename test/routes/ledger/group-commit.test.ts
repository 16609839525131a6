// Group commit: concurrent POST /transactions leave together as one post_transactions() call while every call slot
// is busy. Each request still gets exactly the answer its own post_transaction() call would give, and one request's
// refusal never touches another's writes.
import { randomUUID } from 'node:crypto'
import postgres from 'postgres'
import t, { type Test } from 'tap'
import type { ReadableSpan } from '@opentelemetry/sdk-trace-base'
import type { App } from '../../../app.ts'
import { GroupCommit } from '../../../routes/ledger/group-commit.ts'
import type { PostRequest } from '../../../routes/ledger/repository.ts'
import { assertLedgerBalanced, balance, transactionCount } from './support.ts'
import { buildTestApp, createClient, createUser, fund, ownerSql, spanExporter, testSql, within, type TestClient, type TestUser } from '../../helper.ts'

function post (app: App, caller: TestUser | TestClient, payload: Record<string, unknown>, key: string = randomUUID(), headers: Record<string, string> = {}) {
  return app.inject({ method: 'POST', url: '/transactions', headers: { authorization: caller.authorization, 'idempotency-key': key, ...headers }, payload })
}

const transfer = (to: TestUser, amount: number) => ({ kind: 'transfer', amount, currency: 'USD', toUserId: to.id })

/** The sizes of the database calls the app's money writes made so far: how many, and how many writes they carried. */
async function batchSizes (app: App) {
  const values = (await app.metrics.ledgerWriteBatchSize.get()).values
  const count = values.find((v) => v.metricName === 'ledger_write_batch_size_count')?.value ?? 0
  const sum = values.find((v) => v.metricName === 'ledger_write_batch_size_sum')?.value ?? 0
  return { count, sum }
}

/** One call slot, so that requests sent while it is busy queue and leave together. */
const oneSlot = { LEDGER_BATCHES_IN_FLIGHT: '1', LEDGER_BATCH_MAX: '32' }

/** Holds a user's balance row locked (FOR UPDATE) in a transaction of its own until the returned function is called. */
async function holdBalanceRow (userId: string): Promise<() => void> {
  let release = () => {}
  const released = new Promise<void>((resolve) => { release = resolve })
  await new Promise<void>((resolve, reject) => {
    ownerSql().begin(async (tx) => {
      await tx`select 1 from balances where user_id = ${userId} for update`
      resolve()
      await released
    }).catch(reject)
  })
  return release
}

/**
 * Sends `requests` so that they reach the database as exactly one post_transactions() call: a deposit for a user
 * whose balance row the test holds locked occupies the only call slot, the requests queue behind it, and the lock
 * is released once all of them wait. Returns their responses, in order.
 */
async function inOneBatch (t: Test, app: App, requests: Array<() => ReturnType<typeof post>>, whileRunning: () => Promise<void> = async () => {}) {
  const sql = testSql(t)
  const holder = await createUser(app)
  const processor = await createClient(app)
  await fund(app, holder, 1)
  const before = await batchSizes(app)
  const release = await holdBalanceRow(holder.id)
  const blocker = post(app, processor, { kind: 'deposit', userId: holder.id, amount: 1, currency: 'USD', reference: `hold-${randomUUID()}` })
  await within(10_000, async () => {
    const [row] = await sql`select count(*)::int as n from pg_stat_activity where wait_event_type = 'Lock' and query like '%post_transaction%'`
    return (row?.n ?? 0) > 0
  })
  const pending = requests.map((send) => send())
  await within(10_000, async () => (await app.metrics.ledgerWriteQueue.get()).values[0]?.value === requests.length)
  release()
  await whileRunning()
  t.equal((await blocker).statusCode, 201, 'the blocking deposit went through')
  const responses = await Promise.all(pending)
  const after = await batchSizes(app)
  t.same({ calls: after.count - before.count, writes: after.sum - before.sum }, { calls: 2, writes: requests.length + 1 },
    `the blocker alone, then the ${requests.length} requests in one call`)
  return responses
}

t.test('a refused request in the middle of a batch writes nothing; the others commit', async (t) => {
  const app = await buildTestApp(t, oneSlot)
  const sql = testSql(t)
  const [alice, bob, carol, dave] = [await createUser(app), await createUser(app), await createUser(app), await createUser(app)]
  await fund(app, alice, 1_000)
  const [first, broke, last] = await inOneBatch(t, app, [
    () => post(app, alice, transfer(bob, 100)),
    () => post(app, carol, transfer(bob, 50)),
    () => post(app, alice, transfer(dave, 200))
  ])
  t.equal(first?.statusCode, 201)
  t.equal(broke?.statusCode, 422)
  t.equal(broke?.json().type, 'https://ledger-api.dev/problems/insufficient_funds')
  t.equal(last?.statusCode, 201)
  t.match(last?.json(), { fromUserId: alice.id, toUserId: dave.id, amount: 200 })
  t.equal(await balance(sql, alice.id), 700)
  t.equal(await balance(sql, bob.id), 100)
  t.equal(await balance(sql, dave.id), 200, 'a balance row the batch made is kept when a request used it')
  t.equal(await balance(sql, carol.id), null, 'no 0 balance row is left for the refused sender')
  t.equal(await transactionCount(sql, carol.id), 0)
  await assertLedgerBalanced(t, sql, [alice.id, bob.id, carol.id, dave.id])
})

t.test('one key twice in a batch: the first creates, the second replays it, or is a mismatch with another body', async (t) => {
  const app = await buildTestApp(t, oneSlot)
  const sql = testSql(t)
  const [alice, bob] = [await createUser(app), await createUser(app)]
  await fund(app, alice, 1_000)
  const same = randomUUID()
  const other = randomUUID()
  const responses = await inOneBatch(t, app, [
    () => post(app, alice, transfer(bob, 10), same),
    () => post(app, alice, transfer(bob, 10), same),
    () => post(app, alice, transfer(bob, 20), other),
    () => post(app, alice, transfer(bob, 21), other)
  ])
  const [created, replayed, original, mismatch] = responses
  t.equal(created?.statusCode, 201)
  t.equal(created?.headers['idempotent-replayed'], undefined)
  t.equal(replayed?.statusCode, 201)
  t.equal(replayed?.headers['idempotent-replayed'], 'true')
  t.equal(replayed?.json().id, created?.json().id, 'the replay names the same transaction')
  t.equal(replayed?.headers.location, `/transactions/${created?.json().id}`)
  t.equal(original?.statusCode, 201)
  t.equal(mismatch?.statusCode, 422)
  t.equal(mismatch?.json().type, 'https://ledger-api.dev/problems/idempotency_key_reused')
  t.equal(await transactionCount(sql, alice.id), 3, 'the deposit and one transaction per key')
  t.equal(await balance(sql, alice.id), 970)
  t.equal(await balance(sql, bob.id), 30)
})

t.test('a key whose first request was refused is tried afresh by the next request in the same batch', async (t) => {
  const app = await buildTestApp(t, oneSlot)
  const sql = testSql(t)
  const [alice, bob] = [await createUser(app), await createUser(app)]
  await fund(app, alice, 100)
  const key = randomUUID()
  const [refused, retried] = await inOneBatch(t, app, [
    () => post(app, alice, transfer(bob, 500), key),
    () => post(app, alice, transfer(bob, 50), key)
  ])
  t.equal(refused?.statusCode, 422)
  t.equal(retried?.statusCode, 201)
  t.equal(retried?.headers['idempotent-replayed'], undefined)
  t.equal(await balance(sql, bob.id), 50)
})

t.test('an unknown user, a revoked client and a used reference are refused in a batch without touching the rest', async (t) => {
  const app = await buildTestApp(t, oneSlot)
  const sql = testSql(t)
  const [alice, bob] = [await createUser(app), await createUser(app)]
  const processor = await createClient(app)
  const revoked = await createClient(app)
  // The client row only: the process's revocation list has not seen it, so only the ledger can refuse it.
  await ownerSql()`update service_clients set revoked_at = now() where id = ${revoked.id}`
  const used = `ref-${randomUUID()}`
  await fund(app, alice, 500, 'USD', { client: processor, reference: used })
  const deposit = (user: { id: string }, reference = `ref-${randomUUID()}`) => ({ kind: 'deposit', userId: user.id, amount: 7, currency: 'USD', reference })
  const ghost = { id: randomUUID() }
  const [unknown, byRevoked, reused, ok, gone] = await inOneBatch(t, app, [
    () => post(app, processor, deposit(ghost)),
    () => post(app, revoked, deposit(bob)),
    () => post(app, processor, deposit(bob, used)),
    () => post(app, processor, deposit(bob)),
    () => post(app, alice, transfer({ id: ghost.id } as TestUser, 5))
  ])
  t.equal(unknown?.statusCode, 404)
  t.equal(byRevoked?.statusCode, 401)
  t.equal(byRevoked?.json().detail, 'The client was revoked.')
  t.equal(reused?.statusCode, 409)
  t.equal(reused?.json().type, 'https://ledger-api.dev/problems/reference_used')
  t.equal(ok?.statusCode, 201)
  t.equal(gone?.statusCode, 404)
  t.equal(await balance(sql, bob.id), 7, 'only the good deposit reached bob')
  t.equal(await balance(sql, alice.id), 500)
  const [rows] = await sql`select count(*)::int as n from transactions where client_id = ${revoked.id} or to_user_id = ${ghost.id}`
  t.equal(rows?.n, 0)
  await assertLedgerBalanced(t, sql, [alice.id, bob.id])
})

t.test('a request the deadlock detector aborts inside a batch is retried alone and posted once', async (t) => {
  const app = await buildTestApp(t, oneSlot)
  const sql = testSql(t)
  const [alice, bob, carol, dave] = [await createUser(app), await createUser(app), await createUser(app), await createUser(app)]
  await fund(app, alice, 1_000)
  await fund(app, carol, 1_000)
  const key = randomUUID()
  // Another transaction holds alice's key (as a concurrent write with the same key would) and, once the batch
  // waits for that key while holding alice's balance, asks for alice's balance: a cycle. The batch waited first,
  // so its deadlock check runs first and aborts its own wait, which is only that request's subtransaction.
  let keyHeld = () => {}
  const held = new Promise<void>((resolve) => { keyHeld = resolve })
  let batchWaits = () => {}
  const waiting = new Promise<void>((resolve) => { batchWaits = resolve })
  let otherSide = 'not run'
  const other = sql.begin(async (tx) => {
    await tx`insert into idempotency_keys (principal_id, key, fingerprint, transaction_id) values (${alice.id}, ${key}, 'held', 0)`
    keyHeld()
    await waiting
    try {
      await tx`select 1 from balances where user_id = ${alice.id} and currency = 'USD' for update`
      otherSide = 'got the balance'
    } catch (error) {
      otherSide = (error as { code?: string }).code ?? 'failed'
    }
    throw new Error('roll back')
  }).catch(() => {})
  await held
  const [retried, untouched] = await inOneBatch(t, app, [
    () => post(app, alice, transfer(bob, 100), key),
    () => post(app, carol, transfer(dave, 50))
  ], async () => {
    await within(10_000, async () => {
      const [row] = await sql`select count(*)::int as n from pg_stat_activity where wait_event_type = 'Lock' and query like '%post_transactions(%'`
      return (row?.n ?? 0) > 0
    })
    batchWaits()
  })
  await other
  t.equal(otherSide, 'got the balance', 'the other transaction was not the deadlock victim: the batch\'s request was')
  t.equal(retried?.statusCode, 201)
  t.equal(retried?.headers['idempotent-replayed'], undefined)
  t.equal(untouched?.statusCode, 201)
  const [keys] = await sql`select count(*)::int as n from idempotency_keys where principal_id = ${alice.id} and key = ${key}`
  t.equal(keys?.n, 1)
  t.equal(await balance(sql, alice.id), 900, 'posted once')
  t.equal(await balance(sql, bob.id), 100)
  t.equal(await balance(sql, dave.id), 50)
  await assertLedgerBalanced(t, sql, [alice.id, bob.id, carol.id, dave.id])
})

const adminUrl = process.env.DATABASE_ADMIN_URL
const needsAdmin = adminUrl === undefined ? 'needs DATABASE_ADMIN_URL (the test runner sets it for its local stack)' : false

t.test('a batch whose connection is lost fails each of its requests, and their retries post each once', { skip: needsAdmin }, async (t) => {
  const app = await buildTestApp(t, oneSlot)
  const sql = testSql(t)
  const admin = postgres(adminUrl ?? '', { max: 1, onnotice: () => {} })
  t.teardown(() => admin.end({ timeout: 5 }))
  const [alice, bob, carol] = [await createUser(app), await createUser(app), await createUser(app)]
  await fund(app, alice, 1_000)
  await fund(app, carol, 1_000)
  await fund(app, bob, 1)
  // Bob's balance is held, so the batch waits in its lock phase, where it is cut off.
  let release = () => {}
  const released = new Promise<void>((resolve) => { release = resolve })
  const holding = new Promise<void>((resolve, reject) => {
    ownerSql().begin(async (tx) => {
      await tx`select 1 from balances where user_id = ${bob.id} for update`
      resolve()
      await released
    }).catch(reject)
  })
  await holding
  const keys = [randomUUID(), randomUUID(), randomUUID()]
  const send = () => [
    post(app, alice, transfer(bob, 10), keys[0]),
    post(app, carol, transfer(bob, 20), keys[1]),
    post(app, alice, transfer(carol, 30), keys[2])
  ]
  // The first leaves alone and waits for bob; the other two queue behind it. Cutting off the single call frees
  // the slot, and the queued two leave as one batch, which waits for bob in turn and is cut off too.
  const waitingOn = async (statement: string) => {
    let pid = 0
    await within(10_000, async () => {
      const [row] = await admin<Array<{ pid: number }>>`
        select pid from pg_stat_activity where wait_event_type = 'Lock' and query like ${`%${statement}(%`} and application_name <> 'psql'`
      pid = row?.pid ?? 0
      return pid !== 0
    })
    return pid
  }
  const first = send()
  const single = await waitingOn('post_transaction')
  t.ok(single > 0, 'the lone request waits for bob')
  await within(10_000, async () => (await app.metrics.ledgerWriteQueue.get()).values[0]?.value === 2)
  await admin`select pg_terminate_backend(${single})`
  const batch = await waitingOn('post_transactions')
  t.ok(batch > 0, 'the batch of the other two waits for bob')
  await admin`select pg_terminate_backend(${batch})`
  const cut = await Promise.all(first)
  release()
  t.same(cut.map((r) => r.statusCode), [503, 503, 503], 'each request fails as a lost connection fails a single call')
  t.equal(await balance(sql, alice.id), 1_000, 'nothing was written')
  const [written] = await sql`select count(*)::int as n from idempotency_keys where key in ${sql(keys)}`
  t.equal(written?.n, 0)
  const retried = await Promise.all(send())
  t.same(retried.map((r) => [r.statusCode, r.headers['idempotent-replayed']]), [[201, undefined], [201, undefined], [201, undefined]],
    'the client\'s retries with the same keys post each once')
  t.equal(await balance(sql, alice.id), 960)
  t.equal(await balance(sql, bob.id), 31)
  await assertLedgerBalanced(t, sql, [alice.id, bob.id, carol.id])
})

t.test('a batch runs under a span of its own, linked to every member request and linked back from each', async (t) => {
  const app = await buildTestApp(t, oneSlot)
  const [alice, bob] = [await createUser(app), await createUser(app)]
  await fund(app, alice, 100)
  const traceIds = [randomUUID(), randomUUID(), randomUUID()].map((id) => id.replaceAll('-', ''))
  spanExporter.reset()
  const responses = await inOneBatch(t, app, traceIds.map((traceId) => () =>
    post(app, alice, transfer(bob, 1), randomUUID(), { traceparent: `00-${traceId}-${traceId.slice(0, 16)}-01` })))
  t.same(responses.map((r) => r.statusCode), [201, 201, 201])
  await new Promise((resolve) => setImmediate(resolve))
  const spans = spanExporter.getFinishedSpans()
  const batch = spans.find((span: ReadableSpan) => span.name === 'ledger.post_transactions')
  if (batch === undefined) return t.fail('no batch span')
  t.equal(batch.parentSpanContext, undefined, 'the batch span belongs to no request')
  t.notOk(traceIds.includes(batch.spanContext().traceId), 'it starts a trace of its own')
  t.equal(batch.attributes['ledger.batch.size'], 3)
  t.same(batch.links.map((link) => link.context.traceId).sort(), [...traceIds].sort(), 'linked to each member request')
  for (const traceId of traceIds) {
    const server = spans.find((span) => span.spanContext().traceId === traceId && span.name === 'POST /transactions')
    t.ok(server?.links.some((link) => link.context.spanId === batch.spanContext().spanId), 'the request links to the batch')
    t.notOk(spans.some((span) => span.spanContext().traceId === traceId && span.name === 'SELECT post_transactions'), 'the batch statement is not in a request trace')
  }
  const statement = spans.find((span) => span.name === 'SELECT post_transactions')
  t.equal(statement?.parentSpanContext?.spanId, batch.spanContext().spanId, 'the statement is the batch span\'s child')
})

/**
 * For tests that drive a GroupCommit directly: alice (funded with 100) can pay bob, and a deposit to a third user
 * can be made to wait, holding its call, on that user's balance row locked by the test (hold(), then post
 * request(); the function hold() returns releases the row).
 */
async function heldCallScene (app: App) {
  const [holder, alice, bob] = [await createUser(app), await createUser(app), await createUser(app)]
  const processor = await createClient(app)
  await fund(app, holder, 1)
  await fund(app, alice, 100)
  const transferOf = (amount: number): PostRequest =>
    ({ poster: { kind: 'user', id: alice.id }, key: randomUUID(), body: { kind: 'transfer', amount, currency: 'USD', toUserId: bob.id } })
  const heldDeposit = {
    hold: () => holdBalanceRow(holder.id),
    request: (): PostRequest => ({ poster: { kind: 'client', id: processor.id }, key: randomUUID(), body: { kind: 'deposit', userId: holder.id, amount: 1, currency: 'USD', reference: `hold-${randomUUID()}` } })
  }
  return { bob, transferOf, heldDeposit }
}

t.test('the next batch leaves for the database before the returning call\'s requests are answered', async (t) => {
  const app = await buildTestApp(t)
  const { bob, transferOf, heldDeposit } = await heldCallScene(app)
  const events: string[] = []
  const writes = new GroupCommit({ sql: app.db, keyTtlS: 3600, maxBatch: 32, maxInFlight: 1, observeBatch: (size) => events.push(`call of ${size}`) })
  const release = await heldDeposit.hold()
  // The only slot waits on the held row; the two transfers queue behind it.
  const first = writes.post(heldDeposit.request())
    .then((outcome) => { events.push('first answered'); return outcome })
  const queued = [writes.post(transferOf(1)), writes.post(transferOf(2))]
  t.equal(writes.queued, 2)
  release()
  t.equal((await first).outcome, 'created')
  t.same((await Promise.all(queued)).map((outcome) => outcome.outcome), ['created', 'created'])
  // The answer's own continuation runs the reply; the database should not wait for it.
  t.same(events, ['call of 1', 'call of 2', 'first answered'], 'the queued pair was sent before the first request\'s answer ran')
  t.equal(await balance(testSql(t), bob.id), 3)
})

t.test('a further call leaves only with a full batch: fewer writes wait for the call in flight', async (t) => {
  const app = await buildTestApp(t)
  const { bob, transferOf, heldDeposit } = await heldCallScene(app)
  const calls: number[] = []
  const writes = new GroupCommit({ sql: app.db, keyTtlS: 3600, maxBatch: 2, maxInFlight: 2, observeBatch: (size) => calls.push(size) })
  const release = await heldDeposit.hold()
  t.teardown(release)
  // The first call waits on the held row.
  const first = writes.post(heldDeposit.request())
  const lone = writes.post(transferOf(1))
  t.same({ calls, queued: writes.queued }, { calls: [1], queued: 1 }, 'one write waits for the call in flight, though a second call is allowed')
  const pair = writes.post(transferOf(2))
  t.same({ calls, queued: writes.queued }, { calls: [1, 2], queued: 0 }, 'with a full batch waiting, it leaves at once on a second call')
  t.same((await Promise.all([lone, pair])).map((outcome) => outcome.outcome), ['created', 'created'], 'and commits while the first call still waits')
  t.equal(await balance(testSql(t), bob.id), 3)
  release()
  t.equal((await first).outcome, 'created')
})

t.test('many concurrent transfers among a few users form batches, never overdraw, and keep the ledger balanced', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const users = [await createUser(app), await createUser(app), await createUser(app), await createUser(app)]
  for (const user of users) await fund(app, user, 500)
  const before = await batchSizes(app)
  const responses = await Promise.all(Array.from({ length: 300 }, (_, i) => {
    const from = users[i % users.length] as TestUser
    const to = users[(i * 7 + 1) % users.length] as TestUser
    return from === to ? post(app, from, transfer(users[(i + 1) % users.length] as TestUser, 23 + (i % 5))) : post(app, from, transfer(to, 23 + (i % 5)))
  }))
  const statuses = responses.map((r) => r.statusCode)
  t.ok(statuses.every((s) => s === 201 || s === 422), `only successes or clean refusals: ${[...new Set(statuses)].join(',')}`)
  t.ok(statuses.filter((s) => s === 201).length > 100, 'most transfers went through')
  const after = await batchSizes(app)
  t.ok(after.sum - before.sum === 300, 'every write was counted in a call')
  t.ok(after.count - before.count < 300, `writes shared calls: ${after.sum - before.sum} writes in ${after.count - before.count} calls`)
  const balances = await Promise.all(users.map((user) => balance(sql, user.id)))
  t.ok(balances.every((b) => b !== null && b >= 0), `no negative balance: ${balances.join(', ')}`)
  t.equal(balances.reduce((a, b) => (a ?? 0) + (b ?? 0), 0), 2_000, 'money is neither created nor lost')
  const [created] = await sql`select count(*)::int as n from transactions where kind = 'transfer' and from_user_id in ${sql(users.map((u) => u.id))}`
  t.equal(created?.n, statuses.filter((s) => s === 201).length, 'one transaction per 201')
  await assertLedgerBalanced(t, sql, users.map((user) => user.id))
})

t.test('post_transactions() called directly answers each request in input order', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const [alice, bob, carol] = [await createUser(app), await createUser(app), await createUser(app)]
  await fund(app, alice, 100)
  const element = (user: TestUser, to: TestUser, amount: number, key = randomUUID(), fingerprint = 'fp') =>
    ({ client_id: null, user_id: user.id, key, fingerprint, kind: 'transfer', amount, currency: 'USD', to_user_id: to.id, description: null, reference: null })
  const key = randomUUID()
  const rows = await app.db<Array<{ ordinal: number, outcome: string, id: string | null, amount: string | null, error_sqlstate: string | null }>>`
    select ordinal, outcome, id::text, amount::text, error_sqlstate from post_transactions(${app.db.json([
      element(alice, bob, 30, key),
      element(carol, bob, 1),
      element(alice, bob, 30, key),
      element(alice, bob, 31, key, 'other'),
      element(alice, alice, 1),
      element(alice, carol, 200)
    ])}, 86400)`
  t.same(rows.map((row) => [row.ordinal, row.outcome, row.error_sqlstate]), [
    [1, 'created', null], [2, 'refused', 'LDG01'], [3, 'replayed', null], [4, 'mismatch', null], [5, 'refused', 'LDG05'], [6, 'refused', 'LDG01']
  ])
  t.equal(rows[2]?.id, rows[0]?.id)
  t.equal(await balance(sql, alice.id), 70)
  t.equal(await balance(sql, bob.id), 30)
  t.equal(await balance(sql, carol.id), null, 'the rows made for carol\'s refused requests are gone')
  t.same(await app.db`select * from post_transactions(${app.db.json([])}, 86400)`, [], 'an empty batch is no rows')
})
