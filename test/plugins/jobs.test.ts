import { randomUUID } from 'node:crypto'
import t, { type Test } from 'tap'
import { enqueueJob, JOBS_WAKE_CHANNEL, JobDeferred, nextRetryAt, wakeWorkers, type JobHandlers } from '../../plugins/jobs/queue.ts'
import Fastify from 'fastify'
import { Redis } from 'ioredis'
import pino from 'pino'
import databasePlugin from '../../plugins/database/index.ts'
import errorsPlugin from '../../plugins/errors/index.ts'
import metricsPlugin, { createMetrics } from '../../plugins/metrics/index.ts'
import workerPlugin, { type WorkerOptions } from '../../plugins/jobs/index.ts'
import { buildTestApp, testConfig, testSql, within } from '../helper.ts'

const retry = { baseMs: 5000, maxDelayMs: 3_600_000, windowMs: 86_400_000 }

t.test('the retry schedule: first retry within 10 s, exponential with jitter, capped, at least 24 h in all', async (t) => {
  const queued = new Date('2026-01-01T00:00:00Z')
  const first = nextRetryAt(retry, queued, 1, queued.getTime(), () => 1)!
  t.ok(first.getTime() - queued.getTime() <= 10_000, 'first retry within 10 s')
  t.ok(nextRetryAt(retry, queued, 1, queued.getTime(), () => 0)!.getTime() - queued.getTime() >= 2500, 'jitter keeps at least half the step')
  t.equal(nextRetryAt(retry, queued, 3, queued.getTime(), () => 1)!.getTime() - queued.getTime(), 20_000, 'doubles')
  t.equal(nextRetryAt(retry, queued, 40, queued.getTime(), () => 1)!.getTime() - queued.getTime(), 3_600_000, 'capped')
  // Walk the whole schedule with the longest draws: attempts keep coming until the window's end, then stop.
  let now = queued.getTime()
  let attempts = 1
  for (;;) {
    const at = nextRetryAt(retry, queued, attempts, now, () => 0.5)
    if (at === null) break
    now = at.getTime()
    attempts++
  }
  t.equal(now, queued.getTime() + retry.windowMs, 'the last attempt is made at the end of the 24 h window')
  t.ok(attempts > 20 && attempts < 60, `${attempts} attempts in all`)
})

/** A bare app with only what the worker needs, and handlers of the test's own kinds. */
async function workerApp (t: Test, handlers: JobHandlers, options: Partial<WorkerOptions> & { concurrency?: number } = {}) {
  const config = testConfig()
  const app = Fastify({ logger: false })
  await app.register(errorsPlugin)
  await app.register(metricsPlugin, { metrics: createMetrics() })
  await app.register(databasePlugin, { url: config.DATABASE_URL, max: 4, idleTimeoutS: 5, connectTimeoutS: 5 })
  const { concurrency = 8, ...rest } = options
  await app.register(workerPlugin, { lanes: { test: { handlers, concurrency } }, enabled: false, leaseMs: 60_000, pollMaxMs: 100, retry: { baseMs: 20, maxDelayMs: 50, windowMs: 60_000 }, ...rest })
  await app.ready()
  t.teardown(() => app.close())
  return app
}

t.test('two workers on one queue run each attempt once', async (t) => {
  const sql = testSql(t)
  const kind = `test.once_${randomUUID().slice(0, 8)}`
  const runs = new Map<string, number>()
  const handlers: JobHandlers = {
    [kind]: async (job) => {
      runs.set(job.id, (runs.get(job.id) ?? 0) + 1)
      await new Promise((resolve) => setTimeout(resolve, 2))
      return { status: 'done' }
    }
  }
  const [a, b] = [await workerApp(t, handlers), await workerApp(t, handlers)]
  await sql.begin(async (tx) => { for (let i = 0; i < 300; i++) await enqueueJob(tx as never, kind, { i }) })
  const [ranA, ranB] = await Promise.all([a.jobs.runDue(), b.jobs.runDue()])
  t.equal(runs.size, 300, 'every job ran')
  t.same([...runs.values()].filter((n) => n !== 1), [], 'none twice')
  t.equal(ranA + ranB, 300)
  t.ok(ranA > 0 && ranB > 0, `both took a share (${ranA} / ${ranB})`)
  const [left] = await sql`select count(*)::int as n from jobs where kind = ${kind}`
  t.equal(left?.n, 0, 'done jobs are deleted')
})

t.test('continue resumes with the new payload; a throw is retried; a deferral is not counted; the window ends in failed', async (t) => {
  const sql = testSql(t)
  const kind = `test.mixed_${randomUUID().slice(0, 8)}`
  const seen: Array<{ step: number, attempts: number }> = []
  let deferred = false
  const handlers: JobHandlers = {
    [kind]: async (job: { payload: { step: number, failUntil?: number }, attempts: number }) => {
      seen.push({ step: job.payload.step, attempts: job.attempts })
      if (job.payload.step < 2) return { status: 'continue', payload: { ...job.payload, step: job.payload.step + 1 } }
      if (!deferred) {
        deferred = true
        throw new JobDeferred(10)
      }
      if (job.attempts < 2) throw new Error('flaky')
      return { status: 'done' }
    },
    [`${kind}_never`]: async () => { throw new Error('always fails') }
  }
  const app = await workerApp(t, handlers, { retry: { baseMs: 20, maxDelayMs: 40, windowMs: 300 } })
  await sql.begin(async (tx) => {
    await enqueueJob(tx as never, kind, { step: 0 })
    await enqueueJob(tx as never, `${kind}_never`, {})
  })
  for (let i = 0; i < 60; i++) {
    await app.jobs.runDue()
    const [row] = await sql`select count(*)::int as n from jobs where kind like ${kind + '%'} and failed_at is null`
    if (row?.n === 0) break
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  t.same(seen.map((s) => s.step), [0, 1, 2, 2, 2, 2], 'two continuations, a deferral, two failures, success')
  t.same(seen.map((s) => s.attempts), [0, 0, 0, 0, 1, 2], 'continue resets the count; the deferral was not counted')
  const [failed] = await sql`select failed_at, last_error, attempts from jobs where kind = ${kind + '_never'}`
  t.ok(failed?.failed_at instanceof Date, 'a job that fails past its window is marked failed')
  t.match(failed?.last_error, /always fails/)
  t.ok((failed?.attempts as number) >= 2)
  await sql`delete from jobs where kind = ${kind + '_never'}`
})

t.test('a worker claims only the kinds it has handlers for', async (t) => {
  const sql = testSql(t)
  const kind = `test.orphan_${randomUUID().slice(0, 8)}`
  const app = await workerApp(t, { [`${kind}_known`]: async () => ({ status: 'done' }) })
  await enqueueJob(sql as never, kind, {})
  t.equal(await app.jobs.runDue(), 0)
  const [row] = await sql`select attempts, run_at <= now() as due from jobs where kind = ${kind}`
  t.match(row, { attempts: 0, due: true }, 'left, untouched, for a worker that knows it')
  await sql`delete from jobs where kind = ${kind}`
})

t.test('the loop claims by itself, and closing waits for the attempt in flight', async (t) => {
  const sql = testSql(t)
  const kind = `test.loop_${randomUUID().slice(0, 8)}`
  let finished = 0
  const app = await workerApp(t, {
    [kind]: async () => {
      await new Promise((resolve) => setTimeout(resolve, 300))
      finished++
      return { status: 'done' }
    }
  }, { enabled: true })
  await enqueueJob(sql as never, kind, {})
  for (let i = 0; i < 100 && app.jobs.inFlight() === 0; i++) await new Promise((resolve) => setTimeout(resolve, 20))
  t.equal(app.jobs.inFlight(), 1, 'claimed without runDue')
  await app.close()
  t.equal(finished, 1, 'close waited for it')
  const [row] = await sql`select count(*)::int as n from jobs where kind = ${kind}`
  t.equal(row?.n, 0, 'and recorded it')
  await app.jobs.refreshQueueMetrics().catch(() => {})
  const text = await app.metrics.registry.metrics()
  t.match(text, /ledger_job_attempts_total\{kind="test\.loop_[0-9a-f]+",outcome="done"\} 1/)
})

t.test('the API app has the worker and its queue metrics', async (t) => {
  const app = await buildTestApp(t)
  await app.jobs.refreshQueueMetrics()
  const text = await app.metrics.registry.metrics()
  for (const lane of ['feed', 'webhooks']) {
    t.match(text, new RegExp(`ledger_jobs_due\\{lane="${lane}"\\} \\d+`), `jobs due in the ${lane} lane`)
    t.match(text, new RegExp(`ledger_jobs_oldest_due_age_seconds\\{lane="${lane}"\\} [\\d.e+-]+`), `oldest due age in the ${lane} lane`)
  }
  t.match(text, /ledger_jobs_failed \d+/)
})

t.test('lanes never share capacity: a lane full of hanging jobs leaves another lane\'s job to run at once', async (t) => {
  const sql = testSql(t)
  const suffix = randomUUID().slice(0, 8)
  const [slowKind, quickKind] = [`test.slow_${suffix}`, `test.quick_${suffix}`]
  let release = () => {}
  const released = new Promise<void>((resolve) => { release = resolve })
  let slowStarted = 0
  let quickDone = 0
  const app = await workerApp(t, {}, {
    enabled: true,
    lanes: {
      slow: { concurrency: 2, handlers: { [slowKind]: async () => { slowStarted++; await released; return { status: 'done' } } } },
      quick: { concurrency: 1, handlers: { [quickKind]: async () => { quickDone++; return { status: 'done' } } } }
    }
  })
  t.teardown(release)
  // The slow jobs are older: in one queue ordered by due time they would all go first. The quick job is queued
  // once the slow lane is full: the lanes claim independently, so queued together the quick one may well finish
  // before the slow lane's first claim, which would prove nothing.
  for (let i = 0; i < 4; i++) await enqueueJob(sql as never, slowKind, { i })
  t.ok(await within(5000, async () => slowStarted === 2) < 5000, 'the slow lane fills its 2 slots')
  await enqueueJob(sql as never, quickKind, {})
  const ms = await within(5000, async () => quickDone === 1)
  t.ok(ms < 5000, `the quick lane's job ran while the slow lane was full (${ms} ms)`)
  t.equal(slowStarted, 2, 'the slow lane holds its own 2 slots, no more')
  t.ok(await within(5000, async () => app.jobs.inFlight() === 2) < 5000, 'the two slow jobs are what is in flight once the quick one is recorded')
  release()
  t.ok(await within(5000, async () => slowStarted === 4 && app.jobs.inFlight() === 0) < 5000, 'the slow lane drains once released')
  const [left] = await sql`select count(*)::int as n from jobs where kind in (${slowKind}, ${quickKind})`
  t.equal(left?.n, 0)
  await app.jobs.refreshQueueMetrics()
  const text = await app.metrics.registry.metrics()
  t.match(text, /ledger_worker_lag_seconds_count\{lane="slow"\} 4/, 'worker lag per lane')
  t.match(text, /ledger_job_first_attempt_lag_seconds_count\{lane="quick"\} 1/, 'first-attempt lag per lane')
})

t.test('the first-attempt lag is observed once per job, however many steps it takes', async (t) => {
  const sql = testSql(t)
  const kind = `test.steps_${randomUUID().slice(0, 8)}`
  const app = await workerApp(t, {
    [kind]: async (job: { payload: { step: number } }) => job.payload.step < 2 ? { status: 'continue', payload: { step: job.payload.step + 1 } } : { status: 'done' }
  })
  await enqueueJob(sql as never, kind, { step: 0 })
  t.equal(await app.jobs.runDue({ kinds: [kind] }), 3, 'three steps')
  const text = await app.metrics.registry.metrics()
  t.match(text, /ledger_job_first_attempt_lag_seconds_count\{lane="test"\} 1\n/, 'one first attempt')
  t.match(text, /ledger_worker_lag_seconds_count\{lane="test"\} 3\n/, 'three claims')
})

t.test('a kind belongs to one lane', async (t) => {
  const handler = async () => ({ status: 'done' as const })
  await t.rejects(workerApp(t, {}, { lanes: { a: { concurrency: 1, handlers: { 'test.twice': handler } }, b: { concurrency: 1, handlers: { 'test.twice': handler } } } }),
    /job kind test\.twice is in two lanes/)
})

t.test('commits in one turn of the event loop wake the workers with one message', async (t) => {
  const url = testConfig().REDIS_URL
  const publisher = new Redis(url)
  const subscriber = new Redis(url)
  t.teardown(() => { publisher.disconnect(); subscriber.disconnect() })
  // The real client, counting what it is asked to send; other test files may publish on the channel too, so the
  // subscriber only shows the message arrives.
  let sent = 0
  const counting = { publish: (channel: string, message: string) => { sent++; return publisher.publish(channel, message) } }
  await subscriber.subscribe(JOBS_WAKE_CHANNEL)
  const received = new Promise<string>((resolve) => subscriber.once('message', (_channel: string, message: string) => resolve(message)))
  const log = pino({ level: 'silent' })
  for (let i = 0; i < 5; i++) wakeWorkers(counting, log)
  t.equal(sent, 0, 'nothing is sent before the turn ends')
  await new Promise((resolve) => setImmediate(resolve))
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(sent, 1, 'five wake-ups in one turn are one message')
  const timeout = new Promise<string>((resolve) => setTimeout(() => resolve('no message within 5 s'), 5000).unref())
  t.equal(await Promise.race([received, timeout]), '1', 'and it reaches the subscribers')
  wakeWorkers(counting, log)
  await new Promise((resolve) => setImmediate(resolve))
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(sent, 2, 'a wake-up in a later turn is a message of its own')
})

t.test('a wake-up that cannot be published is logged at debug and goes no further', async (t) => {
  const lines: Array<{ msg?: string }> = []
  const log = pino({ level: 'debug' }, { write: (line: string) => { lines.push(JSON.parse(line) as { msg?: string }) } })
  // Never connected, and commands are not queued for later: every command fails at once, as during an outage.
  const offline = new Redis(testConfig().REDIS_URL, { lazyConnect: true, enableOfflineQueue: false })
  t.teardown(() => offline.disconnect())
  wakeWorkers(offline, log)
  await new Promise((resolve) => setTimeout(resolve, 20))
  t.same(lines.map((line) => line.msg), ['worker wake-up not published'])
})
