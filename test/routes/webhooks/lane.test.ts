// The webhook lane's claim (sql/functions/claim_webhook_jobs.sql) on its own, statement by statement, as the worker
// role runs it: round-robin across endpoints, first attempts ahead of retries, the per-endpoint limit across
// processes (two apps, two pools, racing), and a dead worker's slots coming back with its lease. Each claim is kept
// to this test's own jobs (`matching`), since other files share the queue.
import { randomUUID } from 'node:crypto'
import t, { type Test } from 'tap'
import type { App } from '../../../app.ts'
import type { ClaimedRow } from '../../../plugins/jobs/index.ts'
import { WEBHOOK_DELIVER } from '../../../routes/webhooks/delivery-jobs.ts'
import { claimWebhookJobs } from '../../../routes/webhooks/repository.ts'
import { buildTestApp, createUser, fund, ownerSql, registerWebhookEndpoint, testSql, type TestUser } from '../../helper.ts'

type TestSql = ReturnType<typeof testSql>

/** An endpoint of `user` (at a closed port: nothing here sends) with `count` deliveries queued, oldest first. */
async function endpointWithDeliveries (t: Test, app: App, sql: TestSql, user: TestUser, sink: TestUser, count: number) {
  await fund(app, user, count)
  const endpoint = await registerWebhookEndpoint(t, app, user, `http://127.0.0.1:9/${randomUUID()}`)
  t.teardown(async () => { await ownerSql()`delete from jobs where endpoint_id = ${endpoint.id}` })
  const prefix = randomUUID()
  await sql`
    select (post_transaction(null, ${user.id}::uuid, ${prefix} || '-' || g, 'fp', 'transfer', 1, 'USD', ${sink.id}::uuid, null, null, 86400)).outcome
      from generate_series(1, ${count}::int) g`
  // Due only for this file's claims (dueBy below): other files' unscoped runDue must not take them meanwhile.
  await ownerSql()`update jobs set run_at = run_at + interval '30 minutes' where endpoint_id = ${endpoint.id}`
  const rows = await sql<{ id: string }[]>`select id::text from webhook_deliveries where endpoint_id = ${endpoint.id} order by id`
  return { id: endpoint.id, deliveries: rows.map((row) => row.id) }
}

const claim = (app: App, limit: number, matching: object[], endpointLimit = 4) =>
  claimWebhookJobs(endpointLimit)(app.db, { kinds: [WEBHOOK_DELIVER], limit, leaseMs: 60_000, matching, dueBy: new Date(Date.now() + 3_600_000) })

/** Which endpoint each claimed job is for, and whether it was a retry. */
async function describe (sql: TestSql, rows: ClaimedRow[]) {
  if (rows.length === 0) return []
  return await sql<{ endpoint_id: string, retry: boolean }[]>`
    select endpoint_id, attempts > 1 as retry from jobs where id in ${sql(rows.map((row) => row.id))} order by id`
}

const count = (rows: Array<{ endpoint_id: string }>, endpointId: string) => rows.filter((row) => row.endpoint_id === endpointId).length

t.test('round-robin across endpoints, first attempts ahead of retries, at most the limit in flight per endpoint', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const [busy, quiet, sink] = [await createUser(app), await createUser(app), await createUser(app)]
  // The busy endpoint's 8 deliveries are all older than the quiet one's 2: by due time alone they would go first.
  const a = await endpointWithDeliveries(t, app, sql, busy, sink, 8)
  const b = await endpointWithDeliveries(t, app, sql, quiet, sink, 2)
  const matching = [...a.deliveries, ...b.deliveries].map((deliveryId) => ({ deliveryId }))
  // The busy endpoint's oldest delivery has failed once and is due for its retry.
  await ownerSql()`update jobs set attempts = 1 where payload->>'deliveryId' = ${a.deliveries[0]!}`

  const first = await describe(sql, await claim(app, 4, matching))
  t.equal(first.length, 4)
  t.equal(count(first, b.id), 2, 'both of the quiet endpoint\'s jobs go in the first claim, beside the busy one\'s')
  t.equal(count(first, a.id), 2)
  t.notOk(first.some((row) => row.retry), 'no retry while first attempts wait')

  const second = await describe(sql, await claim(app, 10, matching))
  t.equal(count(second, a.id), 2, 'the busy endpoint gets only what its limit of 4 in flight leaves')
  t.notOk(second.some((row) => row.retry))
  t.same(await claim(app, 10, matching), [], 'at its limit, nothing more for it')

  const [served] = await sql<{ at: Date | null }[]>`select last_claimed_at as at from webhook_endpoints where id = ${b.id}`
  t.ok(served?.at instanceof Date, 'the round-robin position moves with each claim')

  // A worker that died leaves its leases to run out: the endpoint's slots come back, and its jobs with them.
  await ownerSql()`update jobs set run_at = now() - interval '1 second' where endpoint_id = ${a.id} and claimed_at is not null`
  const afterLease = await describe(sql, await claim(app, 10, matching))
  t.equal(afterLease.length, 4, 'four again once the leases ran out')
  t.equal(count(afterLease, a.id), 4)
})

t.test('the per-endpoint limit holds across processes: two pools racing claim at most 4 for one endpoint', async (t) => {
  const [one, two] = [await buildTestApp(t), await buildTestApp(t)]
  const sql = testSql(t)
  const [user, sink] = [await createUser(one), await createUser(one)]
  const endpoint = await endpointWithDeliveries(t, one, sql, user, sink, 30)
  const matching = endpoint.deliveries.map((deliveryId) => ({ deliveryId }))
  const claims = await Promise.all(Array.from({ length: 12 }, (_, i) => claim(i % 2 === 0 ? one : two, 4, matching)))
  t.equal(claims.flat().length, 4, `4 claimed in all (${claims.map((rows) => rows.length).join(' ')})`)
  const [inFlight] = await sql<{ n: number }[]>`
    select count(*)::int as n from jobs where endpoint_id = ${endpoint.id} and claimed_at is not null and run_at > now()`
  t.equal(inFlight?.n, 4)
})

t.test('jobs of a deleted endpoint are still claimed (and finish at once): nothing waits forever', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const [user, sink] = [await createUser(app), await createUser(app)]
  const endpoint = await endpointWithDeliveries(t, app, sql, user, sink, 2)
  const matching = endpoint.deliveries.map((deliveryId) => ({ deliveryId }))
  // As an operator (or a race with DELETE) might leave them: the endpoint gone, its jobs still queued.
  await ownerSql()`delete from webhook_endpoints where id = ${endpoint.id}`
  await ownerSql()`update jobs set run_at = now() where endpoint_id = ${endpoint.id}`
  // Another file's unscoped runDue may take them first: what counts is that somebody claims and finishes them.
  await app.jobs.runDue({ kinds: [WEBHOOK_DELIVER], matching })
  const [left] = await sql<{ n: number }[]>`select count(*)::int as n from jobs where endpoint_id = ${endpoint.id}`
  t.equal(left?.n, 0, 'claimed and finished: their deliveries went with the endpoint')
})
