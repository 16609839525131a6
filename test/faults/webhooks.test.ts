// Webhook delivery through real worker processes (`node worker.ts`) against real loopback receivers: a worker
// SIGKILLed mid-delivery, two workers on one queue, PostgreSQL restarted while events are due, and 10,000 transfers
// while the endpoint is down. Runs after the main suite, alone (scripts/test.ts), so the workers here see only
// this file's jobs.
import { randomUUID } from 'node:crypto'
import type postgres from 'postgres'
import t from 'tap'
import { controlService } from '../../scripts/local-stack.ts'
import { buildTestApp, createUser, fund, hasLocalStack, registerWebhookEndpoint, superuserSql, testSql, type TestUser } from '../helper.ts'
import { startReceiver, verifyStandardWebhook, type Receiver } from '../webhook-receiver.ts'
import { freePort } from '../free-port.ts'
import { sleep, startWorker, waitFor } from './support.ts'

const skip = hasLocalStack ? false : 'needs the local stack started by scripts/test.ts'

/** `count` transfers of 1 from `from` to `to`, through post_transaction() itself (the API's one statement), in batches. */
async function transfers (sql: ReturnType<typeof testSql>, from: TestUser, to: TestUser, count: number) {
  const prefix = randomUUID()
  for (let done = 0; done < count; done += 1000) {
    const n = Math.min(1000, count - done)
    await sql`
      select (post_transaction(null, ${from.id}::uuid, ${prefix} || '-' || g, 'fp', 'transfer', 1, 'USD', ${to.id}::uuid, null, null, 86400)).outcome
        from generate_series(${done + 1}::int, ${done + n}::int) g`
  }
}

async function deliveryStates (sql: ReturnType<typeof testSql>, endpointId: string) {
  const rows = await sql<{ status: string, n: number, tried: number }[]>`
    select status, count(*)::int as n, count(*) filter (where attempts > 0)::int as tried from webhook_deliveries where endpoint_id = ${endpointId} group by status`
  const states: Record<string, number> = { pending: 0, delivered: 0, failed: 0, tried: 0 }
  for (const row of rows) {
    states[row.status] = row.n
    states.tried = (states.tried ?? 0) + row.tried
  }
  return states
}

/** Starts pg_stat_statements afresh, so databaseDiagnostics() reports this test's statements only. */
async function resetStatementStats (admin: postgres.Sql | undefined) {
  if (admin !== undefined) await admin`select pg_stat_statements_reset()`
}

/**
 * Where the database's time went, for a queue that fell behind: the statements by total time since
 * resetStatementStats(), the queue tables' scans and dead rows, and what backends wait on.
 */
async function databaseDiagnostics (admin: postgres.Sql | undefined): Promise<unknown> {
  if (admin === undefined) return 'DATABASE_ADMIN_URL is not set'
  try {
    return {
      statements: await admin`
        select calls, round(mean_exec_time::numeric, 2)::float8 as mean_ms, round(total_exec_time::numeric)::float8 as total_ms,
               left(regexp_replace(query, '[[:space:]]+', ' ', 'g'), 160) as query
          from pg_stat_statements where dbid = (select oid from pg_database where datname = current_database())
         order by total_exec_time desc limit 8`,
      tables: await admin`
        select relname, seq_scan, seq_tup_read, idx_scan, n_live_tup, n_dead_tup, last_autovacuum, last_autoanalyze
          from pg_stat_user_tables where relname in ('jobs', 'webhook_deliveries', 'webhook_endpoints')`,
      waits: await admin`
        select state, wait_event_type, wait_event, count(*)::int as n from pg_stat_activity
         where datname = current_database() and pid <> pg_backend_pid() group by 1, 2, 3 order by n desc`
    }
  } catch (error) {
    return `diagnostics failed: ${String(error)}`
  }
}

async function queuedFor (sql: ReturnType<typeof testSql>, endpointId: string) {
  const [row] = await sql`
    select count(*)::int as n from jobs
     where kind = 'webhook.deliver' and (payload->>'deliveryId')::bigint in (select id from webhook_deliveries where endpoint_id = ${endpointId})`
  return row?.n as number
}

t.test('a worker SIGKILLed between claiming and recording: the attempt is made again after the lease, same webhook-id', { skip }, async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const receiver = await startReceiver((n) => n === 0 ? 'hang' : { status: 200 })
  t.teardown(receiver.close)
  const [alice, bob] = [await createUser(app), await createUser(app)]
  await fund(app, alice, 100)
  const hook = await registerWebhookEndpoint(t, app, alice, receiver.url)
  const first = await startWorker(t, { WORKER_LEASE_S: '5' })
  const posted = await app.inject({ method: 'POST', url: '/transactions', headers: { authorization: alice.authorization, 'idempotency-key': randomUUID() }, payload: { kind: 'transfer', toUserId: bob.id, amount: 7, currency: 'USD' } })
  t.equal(posted.statusCode, 201)
  t.ok(await waitFor(async () => receiver.received.length === 1, 10_000, 20) >= 0, 'the worker is mid-delivery')
  t.same(await first.kill('SIGKILL'), { code: null, signal: 'SIGKILL' })
  const [job] = await sql`select attempts, run_at > now() as leased from jobs where (payload->>'deliveryId')::bigint in (select id from webhook_deliveries where endpoint_id = ${hook.id})`
  t.match(job, { attempts: 1, leased: true }, 'the job is still there, leased')
  // What the owner sees: the deliveries list counts an attempt from when it starts (from its job row until an
  // outcome is recorded on the delivery).
  const listed = await app.inject({ method: 'GET', url: `/webhook-endpoints/${hook.id}/deliveries`, headers: { authorization: alice.authorization } })
  t.match(listed.json().data, [{ status: 'pending', attempts: 1 }], 'the attempt counted when it started; no outcome was recorded')
  t.match(listed.json().data, [{ lastStatusCode: null, nextAttemptAt: null }], 'no status code, no next attempt while it ran')

  await startWorker(t, { WORKER_LEASE_S: '5' })
  t.ok(await waitFor(async () => (await deliveryStates(sql, hook.id)).delivered === 1, 20_000, 100) >= 0, 'delivered after the lease')
  t.equal(receiver.received.length, 2)
  t.equal(receiver.received[1]?.id, receiver.received[0]?.id, 'the same webhook-id')
  t.ok(verifyStandardWebhook(hook.secret, receiver.received[1]!))
  t.equal(JSON.parse(receiver.received[1]!.body).data.id, posted.json().id)
  t.ok(await waitFor(async () => await queuedFor(sql, hook.id) === 0, 10_000, 100) >= 0, 'nothing left in the queue')
})

t.test('SIGTERM lets the attempt in flight finish and be recorded, then the worker exits 0', { skip }, async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const receiver = await startReceiver(() => ({ status: 200, delayMs: 1500 }))
  t.teardown(receiver.close)
  const [alice, bob] = [await createUser(app), await createUser(app)]
  await fund(app, alice, 100)
  const hook = await registerWebhookEndpoint(t, app, alice, receiver.url)
  const worker = await startWorker(t)
  t.equal((await app.inject({ method: 'POST', url: '/transactions', headers: { authorization: alice.authorization, 'idempotency-key': randomUUID() }, payload: { kind: 'transfer', toUserId: bob.id, amount: 3, currency: 'USD' } })).statusCode, 201)
  t.ok(await waitFor(async () => receiver.received.length === 1, 10_000, 20) >= 0, 'mid-delivery (the receiver answers after 1.5 s)')
  t.match(await worker.kill('SIGTERM'), { code: 0, signal: null }, 'exit 0')
  t.match(await deliveryStates(sql, hook.id), { delivered: 1, pending: 0 }, 'the attempt finished and was recorded before the exit')
  t.equal(await queuedFor(sql, hook.id), 0)
  t.equal(receiver.received.length, 1)
})

t.test('an idle worker is woken by the API\'s Redis message, not its poll', { skip }, async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const receiver = await startReceiver()
  t.teardown(receiver.close)
  const [alice, bob] = [await createUser(app), await createUser(app)]
  await fund(app, alice, 100)
  const hook = await registerWebhookEndpoint(t, app, alice, receiver.url)
  await startWorker(t, { WORKER_POLL_MAX_MS: '60000' })
  // Idle this long, its poll interval has doubled past 6 s: only the wake-up can bring it back sooner.
  await sleep(8000)
  const posted = performance.now()
  t.equal((await app.inject({ method: 'POST', url: '/transactions', headers: { authorization: alice.authorization, 'idempotency-key': randomUUID() }, payload: { kind: 'transfer', toUserId: bob.id, amount: 2, currency: 'USD' } })).statusCode, 201)
  t.ok(await waitFor(async () => receiver.received.length === 1, 5000, 10) >= 0, 'delivered')
  const ms = Math.round(performance.now() - posted)
  t.ok(ms < 2000, `the first attempt left ${ms} ms after the commit`)
  t.match(await deliveryStates(sql, hook.id), { delivered: 1 })
})

t.test('two worker processes on one queue send each attempt once', { skip }, async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const receiver = await startReceiver(() => ({ status: 200, delayMs: 2 }))
  t.teardown(receiver.close)
  const [alice, bob] = [await createUser(app), await createUser(app)]
  await fund(app, alice, 10_000)
  const hook = await registerWebhookEndpoint(t, app, alice, receiver.url)
  await Promise.all([startWorker(t), startWorker(t)])
  await transfers(sql, alice, bob, 1000)
  t.ok(await waitFor(async () => (await deliveryStates(sql, hook.id)).delivered === 1000, 60_000, 200) >= 0, 'all delivered')
  t.equal(receiver.unique.size, 1000)
  t.equal(receiver.received.length, 1000, 'no attempt was sent twice')
  t.ok(await waitFor(async () => await queuedFor(sql, hook.id) === 0, 10_000, 100) >= 0, 'nothing left in the queue')
})

t.test('PostgreSQL restarted while events are due: every event delivered after it is back', { skip }, async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const receiver = await startReceiver(() => ({ status: 200, delayMs: 20 }))
  t.teardown(receiver.close)
  const [alice, bob] = [await createUser(app), await createUser(app)]
  await fund(app, alice, 10_000)
  const hook = await registerWebhookEndpoint(t, app, alice, receiver.url)
  await transfers(sql, alice, bob, 500)
  const worker = await startWorker(t, { WORKER_LEASE_S: '5', WORKER_WEBHOOK_CONCURRENCY: '4', WEBHOOK_ENDPOINT_CONCURRENCY: '4' })
  await waitFor(async () => receiver.received.length >= 50, 10_000, 10)
  await controlService('stop', 'postgres')
  await sleep(2000)
  await controlService('start', 'postgres')
  const ms = await waitFor(async () => {
    try {
      return (await deliveryStates(sql, hook.id)).delivered === 500
    } catch {
      return false
    }
  }, 90_000, 250)
  t.ok(ms >= 0, `all 500 delivered (${ms} ms after PostgreSQL was back)`)
  t.equal(receiver.unique.size, 500, 'every event reached the receiver')
  t.comment(`${receiver.received.length - receiver.unique.size} sent again (delivered, not recorded before the stop: at least once)`)
  t.ok(await waitFor(async () => await queuedFor(sql, hook.id) === 0, 10_000, 100) >= 0, 'nothing left in the queue')
  t.match(await worker.kill('SIGTERM'), { code: 0 }, 'and the worker still closes cleanly')
})

// 10,000 as the issue asks, two workers running 32 attempts each on pools of 10 connections (the case that stalled a
// statement before plugins/database/index.ts's withoutPipelining): about 25 s here, ~1,000 deliveries a second. The
// endpoint's limit holds across both workers, so it is 64: all 32 + 32 attempts may be for the one endpoint.
const MANY = 10_000

t.test(`${MANY} transfers while the endpoint is down, then up: every event delivered once, the outbox drains`, { skip }, async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const port = await freePort()
  const [alice, bob] = [await createUser(app), await createUser(app)]
  await fund(app, alice, 20_000)
  const hook = await registerWebhookEndpoint(t, app, alice, `http://127.0.0.1:${port}/hooks`)
  const count = MANY
  const started = performance.now()
  await transfers(sql, alice, bob, count)
  const posted = performance.now()
  const env = { WORKER_LEASE_S: '15', WORKER_WEBHOOK_CONCURRENCY: '32', WEBHOOK_ENDPOINT_CONCURRENCY: '64', DATABASE_POOL_MAX: '10', JOB_RETRY_BASE_MS: '500', JOB_RETRY_MAX_DELAY_S: '2' }
  const admin = superuserSql(t)
  await resetStatementStats(admin)
  const workers = await Promise.all([startWorker(t, env), startWorker(t, env)])
  // A deadline for liveness (the down endpoint's events are all tried, none lost), not a speed target: the same
  // phase took 12-29 s in isolated runs and 55 s, then over 60 s, in full CI runs on one 2-core machine, with the
  // claim statement's mean at 154 ms (the diagnostics below) and no statement over 300 ms in the isolated runs.
  const triedMs = await waitFor(async () => (await deliveryStates(sql, hook.id)).tried === count, 120_000, 250)
  const triedDiagnostics = triedMs >= 0
    ? {}
    : {
        database: await databaseDiagnostics(admin),
        workers: workers.map((w) => {
          const lines = w.output().split('\n')
          return { failedAttempts: lines.filter((line) => line.includes('job attempt failed')).length, warnings: lines.filter((line) => /"level":(4|5)0/.test(line)).slice(-5) }
        })
      }
  t.ok(triedMs >= 0, 'every event was tried against the closed port', { states: await deliveryStates(sql, hook.id), ...triedDiagnostics })
  t.equal((await deliveryStates(sql, hook.id)).delivered, 0)
  const receiver: Receiver = await startReceiver(() => ({ status: 200 }), '/hooks', port)
  t.teardown(receiver.close)
  const up = performance.now()
  const progress: string[] = []
  let stuck = ''
  const ms = await waitFor(async () => {
    const states = await deliveryStates(sql, hook.id)
    progress.push(`${Math.round(performance.now() - up)}:${states.delivered}`)
    if ((states.delivered ?? 0) > 0 && progress.length > 2 && progress.at(-2)?.endsWith(`:${states.delivered}`) === true && stuck === '') {
      const rows = await sql`
        select j.id, j.attempts, j.run_at - now() as due_in, j.last_error, d.attempts as delivery_attempts, d.last_status_code
          from webhook_deliveries d join jobs j on (j.payload->>'deliveryId')::bigint = d.id
         where d.endpoint_id = ${hook.id} and d.status = 'pending'`
      stuck = JSON.stringify(rows)
    }
    return states.delivered === count
  }, 120_000, 1000)
  if (stuck !== '') {
    t.comment(`the last one: ${stuck}`)
    const ids = (JSON.parse(stuck) as Array<{ id: string }>).map((row) => row.id)
    for (const w of workers) t.comment(w.output().split('\n').filter((line) => ids.some((id) => line.includes(`"jobId":"${id}"`)) || /"level":(5|6)0/.test(line)).slice(0, 20).join('\n').slice(0, 5000))
  }
  t.comment(progress.join(' '))
  for (const w of workers) t.comment(w.output().split('\n').filter((line) => /"level":(4|5)0/.test(line)).slice(0, 5).join('\n'))
  t.ok(ms >= 0, 'all delivered once the endpoint is up', { states: await deliveryStates(sql, hook.id) })
  t.equal(receiver.unique.size, count, 'every event, by webhook-id')
  // At least once: a response the worker did not get to record would be sent again after the lease; a receiver
  // deduplicating by webhook-id processes every event once. None is expected here; a few are tolerated and reported.
  t.ok(receiver.received.length - receiver.unique.size <= 5, `${receiver.received.length - receiver.unique.size} sent again`)
  t.ok(await waitFor(async () => await queuedFor(sql, hook.id) === 0, 10_000, 100) >= 0, 'the outbox drained to zero')
  t.comment(`posted ${count} in ${Math.round(posted - started)} ms; all tried (failing) within ${triedMs} ms; delivered all ${Math.round(performance.now() - up)} ms after the endpoint came up (${Math.round(count / ((performance.now() - up) / 1000))} events/s, two workers)`)
})
