// record_webhook_attempt() (sql/functions/record_webhook_attempt.sql) as the worker's role calls it: which outcomes
// of a failed attempt wait for their WAL flush. Every failure of an endpoint updates that endpoint's row, so a down
// endpoint's failures hold its row lock one after another: a retry's record must not hold it through a flush.
import { randomUUID } from 'node:crypto'
import t from 'tap'
import { buildTestApp, createUser, fund, ownerSql, registerWebhookEndpoint, testSql } from '../helper.ts'

const DISABLE_AFTER_S = 3 * 24 * 3600

t.test('a retry\'s record commits without waiting for its WAL flush; a final failure waits for it', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const [user, sink] = [await createUser(app), await createUser(app)]
  await fund(app, user, 2)
  const endpoint = await registerWebhookEndpoint(t, app, user, `http://127.0.0.1:9/${randomUUID()}`)
  t.teardown(async () => { await ownerSql()`delete from jobs where endpoint_id = ${endpoint.id}` })
  const prefix = randomUUID()
  await sql`
    select (post_transaction(null, ${user.id}::uuid, ${prefix} || '-' || g, 'fp', 'transfer', 1, 'USD', ${sink.id}::uuid, null, null, 86400)).outcome
      from generate_series(1, 2) g`
  // Out of reach of other files' runDue while this test records its own attempts.
  await ownerSql()`update jobs set run_at = run_at + interval '30 minutes' where endpoint_id = ${endpoint.id}`
  const deliveries = await sql<{ id: string, job_id: string }[]>`
    select d.id::text, j.id::text as job_id from webhook_deliveries d join jobs j on (j.payload->>'deliveryId')::bigint = d.id
     where d.endpoint_id = ${endpoint.id} order by d.id`
  const [retried, last] = deliveries
  if (retried === undefined || last === undefined) throw new Error(`two deliveries expected, found ${deliveries.length}`)

  // In the attempt's own transaction, as the worker's role (app.db) sends it: the setting it commits with.
  const record = (delivery: { id: string, job_id: string }, nextAttemptAt: Date | null) => app.db.begin(async (tx) => {
    const [row] = await tx<{ status: string | null }[]>`
      select status from record_webhook_attempt(${delivery.id}::bigint, 1, 503, false, ${nextAttemptAt}::timestamptz, ${DISABLE_AFTER_S}::int, ${delivery.job_id}::bigint)`
    const [setting] = await tx<{ value: string }[]>`select current_setting('synchronous_commit') as value`
    return { status: row?.status, synchronousCommit: setting?.value }
  })
  t.same(await record(retried, new Date(Date.now() + 60_000)), { status: 'pending', synchronousCommit: 'off' }, 'a retry does not wait for its flush')
  t.same(await record(last, null), { status: 'failed', synchronousCommit: 'on' }, 'the last attempt (no retry left) waits for it')

  // Both records are committed all the same: the deliveries, and the endpoint's run of two failures.
  t.same(await sql`select status, attempts, last_status_code from webhook_deliveries where endpoint_id = ${endpoint.id} order by id`, [
    { status: 'pending', attempts: 1, last_status_code: 503 },
    { status: 'failed', attempts: 1, last_status_code: 503 }
  ])
  const [health] = await sql<{ consecutive_failures: number, failing: boolean }[]>`
    select consecutive_failures, failing_since is not null as failing from webhook_endpoints where id = ${endpoint.id}`
  t.same(health, { consecutive_failures: 2, failing: true })
})
