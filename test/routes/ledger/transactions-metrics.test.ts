// POST /transactions counts what the ledger did with each write (ledger_money_writes_total by kind and outcome,
// ledger_money_refusals_total by reason): the counts follow the answers and the database, one per request.
import { randomUUID } from 'node:crypto'
import t from 'tap'
import { buildTestApp, createClient, createUser, fund, testSql } from '../../helper.ts'

type App = Awaited<ReturnType<typeof buildTestApp>>

async function counts (app: App) {
  const writes = (await app.metrics.moneyWrites.get()).values
  const refusals = (await app.metrics.moneyRefusals.get()).values
  return {
    write: (kind: string, outcome: string) => writes.find((v) => v.labels.kind === kind && v.labels.outcome === outcome)?.value,
    refusal: (kind: string, reason: string) => refusals.find((v) => v.labels.kind === kind && v.labels.reason === reason)?.value
  }
}

t.test('created, replayed and refused writes are counted by kind, outcome and reason', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const before = await counts(app)
  t.equal(before.write('transfer', 'created'), 0, 'every series exists at 0 before the first write')
  t.equal(before.refusal('withdrawal', 'insufficient_funds'), 0)

  const client = await createClient(app)
  const alice = await createUser(app)
  const bob = await createUser(app)
  await fund(app, alice, 1_000, 'USD', { client })
  const post = (authorization: string, key: string, payload: Record<string, unknown>) =>
    app.inject({ method: 'POST', url: '/transactions', headers: { authorization, 'idempotency-key': key }, payload })

  const key = randomUUID()
  const transfer = { kind: 'transfer', amount: 100, currency: 'USD', toUserId: bob.id }
  t.equal((await post(alice.authorization, key, transfer)).statusCode, 201)
  const replay = await post(alice.authorization, key, transfer)
  t.equal(replay.headers['idempotent-replayed'], 'true')
  t.equal((await post(alice.authorization, key, { ...transfer, amount: 101 })).statusCode, 422, 'same key, another body')
  t.equal((await post(alice.authorization, randomUUID(), { ...transfer, amount: 1_000_000 })).statusCode, 422, 'insufficient funds')
  t.equal((await post(alice.authorization, randomUUID(), { ...transfer, toUserId: alice.id })).statusCode, 400, 'to oneself')
  const reference = `ref-${randomUUID()}`
  t.equal((await post(client.authorization, randomUUID(), { kind: 'deposit', userId: bob.id, amount: 5, currency: 'USD', reference })).statusCode, 201)
  t.equal((await post(client.authorization, randomUUID(), { kind: 'deposit', userId: bob.id, amount: 5, currency: 'USD', reference })).statusCode, 409, 'reference used')
  t.equal((await post(client.authorization, randomUUID(), { kind: 'withdrawal', userId: bob.id, amount: 1_000_000, currency: 'USD', reference: `ref-${randomUUID()}` })).statusCode, 422, 'withdrawal over the balance')

  const after = await counts(app)
  t.equal(after.write('transfer', 'created'), 1, 'one transfer created')
  t.equal(after.write('transfer', 'replayed'), 1, 'one replay')
  t.equal(after.write('transfer', 'refused'), 3, 'three transfers refused')
  t.equal(after.refusal('transfer', 'idempotency_key_reused'), 1)
  t.equal(after.refusal('transfer', 'insufficient_funds'), 1)
  t.equal(after.refusal('transfer', 'transfer_to_self'), 1)
  t.equal(after.write('deposit', 'created'), 2, 'the funding deposit and the referenced one')
  t.equal(after.write('deposit', 'refused'), 1)
  t.equal(after.refusal('deposit', 'reference_used'), 1)
  t.equal(after.write('withdrawal', 'refused'), 1)
  t.equal(after.refusal('withdrawal', 'insufficient_funds'), 1)
  t.equal(after.write('transfer', 'error'), 0, 'no error')
  // The counters agree with the ledger: the created writes are the transactions that exist.
  const [rows] = await sql<Array<{ n: number }>>`
    select count(*)::int as n from transactions where (from_user_id = ${alice.id} or to_user_id in (${alice.id}, ${bob.id}))`
  t.equal(rows?.n, (after.write('transfer', 'created') ?? 0) + (after.write('deposit', 'created') ?? 0), 'created = transactions written')
})

t.test('a write the ledger cannot answer (database unreachable) is counted as an error', async (t) => {
  const app = await buildTestApp(t, { DATABASE_CIRCUIT_FAILURES: '1' })
  const alice = await createUser(app)
  const bob = await createUser(app)
  // The pool's own end: every statement after it fails without reaching the ledger.
  await app.db.end({ timeout: 1 })
  const response = await app.inject({
    method: 'POST',
    url: '/transactions',
    headers: { authorization: alice.authorization, 'idempotency-key': randomUUID() },
    payload: { kind: 'transfer', amount: 1, currency: 'USD', toUserId: bob.id }
  })
  t.ok(response.statusCode >= 500, `answered ${response.statusCode}`)
  t.equal((await counts(app)).write('transfer', 'error'), 1, 'counted as error, not as refused or created')
})
