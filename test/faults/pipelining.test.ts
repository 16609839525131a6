// More statements at once than pooled connections, through PgBouncer in transaction mode: every statement returns.
// postgres.js pipelines a new statement behind one without parameters on a busy connection, and PgBouncer 1.18
// drops the answers to it (plugins/database/index.ts, withoutPipelining): the statement never returned and the worker's
// job waited out its lease. Runs alone after the main suite (scripts/test.ts): a stalled statement would hold a
// connection of the shared PgBouncer pool until its client ends.
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import Fastify from 'fastify'
import t from 'tap'
import { createSql, type Sql } from '../../plugins/database/index.ts'
import errorsPlugin from '../../plugins/errors/index.ts'
import type { JobHandlers } from '../../plugins/jobs/queue.ts'
import metricsPlugin, { createMetrics } from '../../plugins/metrics/index.ts'
import databasePlugin from '../../plugins/database/index.ts'
import workerPlugin from '../../plugins/jobs/index.ts'
import { hasLocalStack, testConfig, testSql } from '../helper.ts'
import { deadline, sleep } from './support.ts'

const skip = hasLocalStack ? false : 'needs the local stack started by scripts/test.ts'

/** Settles with 'answered' or, if `statement` has not settled within `ms`, 'stalled' (a real answer takes milliseconds). */
const within = async (statement: Promise<unknown>, ms: number) =>
  await Promise.race([statement.then(() => 'answered' as const, () => 'answered' as const), deadline(ms).then(() => 'stalled' as const)])

t.test('a statement with parameters sent while one without parameters holds the only connection returns', { skip }, async (t) => {
  const config = testConfig()
  // One connection: the second statement finds it busy with the first, the case a saturated pool is in.
  const sql: Sql = createSql({ url: config.DATABASE_URL, max: 1, idleTimeoutS: 5, connectTimeoutS: 5 })
  t.teardown(() => sql.end({ timeout: 0 }))
  const outcomes: string[] = []
  for (let i = 0; i < 20; i++) {
    const first = sql`select pg_sleep(0.02)`
    const second = sql<Array<{ i: number }>>`select ${i}::int as i`
    const outcome = await within(Promise.all([first, second]), 3000)
    outcomes.push(outcome)
    // A stalled statement keeps the only connection: every later one would wait behind it.
    if (outcome === 'stalled') break
  }
  t.same(outcomes.filter((outcome) => outcome !== 'answered'), [], 'every pair answered within 3 s')
  t.equal(outcomes.length, 20)
  t.equal(await within(sql`select ${41}::int + 1 as n`, 3000), 'answered', 'the connection still serves statements')
})

t.test('32 job attempts on a pool of 10: every attempt is recorded, none waits out its lease', { skip }, async (t) => {
  const config = testConfig({ DATABASE_POOL_MAX: '10' })
  // The loopback receiver a webhook attempt posts to, answering within a few milliseconds.
  const receiver = createServer((request, response) => {
    request.resume()
    request.on('end', () => setTimeout(() => response.end('ok'), Math.random() * 5))
  })
  await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise((resolve) => receiver.close(resolve)))
  const url = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/`

  const kind = `test.pipelining_${process.pid}`
  let posted = 0
  // What the webhook handler does: a read, an outbound POST, then the worker records the result.
  const handlers: JobHandlers = {
    [kind]: async (job, { sql }) => {
      await sql`select ${job.id}::bigint as id`
      const response = await fetch(url, { method: 'POST', body: job.id })
      await response.text()
      posted++
      return { status: 'done' }
    }
  }
  const app = Fastify({ logger: false })
  await app.register(errorsPlugin)
  await app.register(metricsPlugin, { metrics: createMetrics() })
  await app.register(databasePlugin, { url: config.DATABASE_URL, max: 10, idleTimeoutS: 5, connectTimeoutS: 5 })
  await app.register(workerPlugin, {
    lanes: { test: { handlers, concurrency: 32 } },
    enabled: false,
    leaseMs: 60_000,
    pollMaxMs: 1000,
    retry: { baseMs: 60_000, maxDelayMs: 60_000, windowMs: 3_600_000 }
  })
  await app.ready()
  // A stalled statement never settles, and close waits for the attempts in flight: ending the pool first rejects
  // it, so a failing run ends instead of hanging.
  t.teardown(async () => {
    await app.db.end({ timeout: 0 })
    await app.close()
  })

  const sql = testSql(t)
  const count = 600
  await sql`insert into jobs (kind, payload) select ${kind}, jsonb_build_object('n', g) from generate_series(1, ${count}::int) g`
  t.teardown(async () => { await sql`delete from jobs where kind = ${kind}` })

  // The worker's own statement without parameters (the queue gauges, every 5 s in a running worker), sent often
  // here so that one is in flight whenever every connection is taken.
  const gauging = { on: true }
  const gauges = (async () => {
    while (gauging.on) {
      await app.jobs.refreshQueueMetrics().catch(() => {})
      await sleep(1)
    }
  })()
  const run = app.jobs.runDue({ kinds: [kind] })
  const outcome = await within(run, 30_000)
  gauging.on = false
  await gauges
  const [left] = await sql<Array<{ n: number }>>`select count(*)::int as n from jobs where kind = ${kind}`
  t.equal(outcome, 'answered', `every attempt finished and was recorded (${app.jobs.inFlight()} still in flight)`)
  t.equal(posted, count, 'every job posted once')
  t.equal(left?.n, 0, 'no job left to wait out its lease')
})
