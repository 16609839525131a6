// SIGKILL of a real server process while batched money writes (post_transactions()) are in flight, then every
// request retried with its Idempotency-Key against a fresh process. A batch either committed whole or not at all,
// and its members' answers were lost with the process: the retries must find each committed write (a replay) and
// post each uncommitted one once. Runs after the main suite, alone (scripts/test.ts).
import t from 'tap'
import { buildTestApp, createClient, createUser, hasLocalStack, testSql, type TestUser } from '../helper.ts'
import {
  assertLedger, assertReconciled, checkLedger, fetchSender, LedgerClient, reconcile, startServer, untilReady, waitFor,
  type Send, type ServerProcess
} from './support.ts'

const skip = hasLocalStack ? false : 'needs the local stack started by scripts/test.ts'

// The load goes on until the kill, so it cannot end before a batch has been seen in flight; a batch statement is
// active for a few milliseconds, and the poll below has caught the first one after 200 to 1,000 more writes. The
// poll's 20 s bounds the load in time, this in count.
const MAX_WRITES = 20_000
const CONCURRENCY = 40
const KILL_AFTER = 200
// One call slot and the largest batch: with 40 clients, nearly every write leaves in a batch.
const BATCHING = { LEDGER_BATCHES_IN_FLIGHT: '1', LEDGER_BATCH_MAX: '32' }

t.test('SIGKILL with batches in flight: after retries every key has exactly one transaction and the ledger holds', { skip }, async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  await untilReady(app)
  const users = [await createUser(app), await createUser(app), await createUser(app), await createUser(app)]
  const funder = await createClient(app)
  const servers: ServerProcess[] = []
  t.teardown(async () => { for (const server of servers) await server.kill() })
  const first = await startServer(BATCHING)
  servers.push(first)

  let target = fetchSender(first.baseUrl, 10_000)
  const send: Send = (request) => target(request)
  const client = new LedgerClient(send, users, funder)
  let next = 0
  const state = { killed: false }
  const worker = async () => {
    while (next < MAX_WRITES && !state.killed) {
      const i = next++
      const user = users[i % users.length] as TestUser
      const other = users[(i + 1) % users.length] as TestUser
      if (i % 3 === 0) await client.post(user, 'deposit', 500 + i)
      else await client.post(user, 'transfer', 1 + (i % 97), other.id)
    }
  }
  const load = Promise.all(Array.from({ length: CONCURRENCY }, worker))

  // Some writes answered first, so the kill lands mid-run; then a batch statement running for the process.
  t.ok(await waitFor(async () => client.samples.length >= KILL_AFTER, 60_000, 10) >= 0, `${KILL_AFTER} writes answered before the kill`)
  const seenMs = await waitFor(async () => {
    const [row] = await sql<Array<{ n: number }>>`
      select count(*)::int as n from pg_stat_activity where state = 'active' and query like '%post_transactions(%' and pid <> pg_backend_pid()`
    return (row?.n ?? 0) > 0
  }, 20_000, 5)
  t.ok(seenMs >= 0, 'a batch was in flight when the process was killed')
  state.killed = true
  first.child.kill('SIGKILL')
  await first.exited
  client.phase = 'after-sigkill'
  await load

  const second = await startServer(BATCHING)
  servers.push(second)
  target = fetchSender(second.baseUrl, 10_000)
  const unanswered = await client.retryUnanswered()
  // Every key again, answered or not: a key whose write committed replays the same transaction, never a second.
  for (const record of client.posts.values()) await client.attempt(record)

  const userIds = users.map((user) => user.id)
  const reconciliation = await reconcile(sql, client.posts.values(), userIds)
  const figures = client.figures()
  t.comment(JSON.stringify({
    fault: 'SIGKILL with batches in flight',
    writes: figures.writes,
    unansweredBeforeRetry: unanswered,
    committedDespiteError: figures.writesCommittedDespiteError,
    acknowledged: reconciliation.acknowledged,
    rowsLost: reconciliation.rowsLost,
    duplicated: reconciliation.duplicated
  }))
  t.ok(unanswered > 0, 'the kill cut some requests off')
  const records = [...client.posts.values()]
  t.same(records.filter((record) => !record.statuses.some((status) => status === 201 || status === 422)).map((record) => record.statuses), [],
    'every key has a final answer after the retries')
  t.same(records.filter((record) => record.statuses.at(-1) === 201 && record.id === undefined), [], 'every 201 carried its transaction')
  t.equal(reconciliation.duplicated, 0, 'no key produced two transactions')
  t.equal(reconciliation.rowsLost, 0, 'every acknowledged write is in the ledger with its id and amount')
  t.equal(reconciliation.committedUnacknowledged, 0, 'every committed write was acknowledged by a retry')
  t.same(reconciliation.balanceMismatches, [], 'balances are exactly the acknowledged writes')
  const [perKey] = await sql<Array<{ keys: number, transactions: number }>>`
    select count(*)::int as keys, count(distinct k.transaction_id)::int as transactions
      from idempotency_keys k join transactions t on t.id = k.transaction_id
     where coalesce(t.from_user_id, t.to_user_id) = any(${userIds}::uuid[])`
  t.equal(perKey?.transactions, perKey?.keys, 'one transaction per key')
  t.equal(perKey?.keys, records.filter((record) => record.id !== undefined).length, 'and one key per acknowledged write')
  assertLedger(t, await checkLedger(sql, userIds))
  await assertReconciled(t, sql)
})
