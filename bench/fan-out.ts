// `npm run bench:fan-out [-- --followers 10000 --requests 200 --fan-outs 5]`: what a post costs its author and what
// it costs the worker.
// 1. POST /posts latency for an author with no follower and one with --followers, in the same run, requests
//    alternating between the two: the request writes the post, its row on the author's feed and one job, and does no
//    per-follower work, so both should take the same time.
// 2. Fan-out throughput: --fan-outs posts of the popular author delivered by the feed.fan_out handler, batch after
//    batch (1,000 feeds each) until done, as the worker runs it: feed rows written per second.
// In-process (app.inject, no HTTP sockets) against the real stack: PgBouncer, PostgreSQL, Redis. Uses a database of
// its own (BENCH_FANOUT_DATABASE, default ledger_bench_fanout, recreated on every run). The fan-out steps are driven
// here, one after the other, as the job model says (the payload of each `continue` feeds the next step), so that
// the worker's polling and other jobs are not in the measured time.
import { randomBytes, randomUUID } from 'node:crypto'
import { performance } from 'node:perf_hooks'
import { parseArgs } from 'node:util'
import postgres from 'postgres'
import { buildApp } from '../app.ts'
import { loadConfig } from '../settings.ts'
import type { JobHandler } from '../plugins/jobs/queue.ts'
import { createFeedJobHandlers, FEED_JOB, type FanOutPayload } from '../routes/social/feed-jobs.ts'
import { recreateDatabase, resolveEnv } from './lib/setup.ts'

const { values: args } = parseArgs({ options: { followers: { type: 'string', default: '10000' }, requests: { type: 'string', default: '200' }, 'fan-outs': { type: 'string', default: '5' } } })
const [FOLLOWERS, REQUESTS, FAN_OUTS] = [args.followers, args.requests, args['fan-outs']].map(Number) as [number, number, number]

const started = Date.now()
const log = (line: string) => console.error(`[fan-out +${((Date.now() - started) / 1000).toFixed(0).padStart(3)} s] ${line}`)

const env = resolveEnv(process.env.BENCH_FANOUT_DATABASE ?? 'ledger_bench_fanout', Number(process.env.BENCH_REDIS_DB ?? 3), log)
await recreateDatabase(env)
const owner = postgres(env.directUrl, { max: 1, onnotice: () => {} })

const [quiet, popular] = await owner<{ id: string }[]>`
  insert into users (email, name, password_hash)
  values (${`quiet-${randomBytes(4).toString('hex')}@bench.test`}, 'No followers', '!'),
         (${`popular-${randomBytes(4).toString('hex')}@bench.test`}, 'Popular', '!')
  returning id`
const seedStarted = performance.now()
await owner`
  with made as (
    insert into users (email, name, password_hash)
    select 'follower-' || g || '@bench.test', 'Follower ' || g, '!' from generate_series(1, ${FOLLOWERS}::int) g
    returning id
  )
  insert into follows (follower_id, followee_id) select id, ${popular!.id} from made`
await owner`vacuum analyze users, follows`
log(`${FOLLOWERS} followers made in ${Math.round(performance.now() - seedStarted)} ms`)

const app = await buildApp(loadConfig({
  ...process.env,
  NODE_ENV: 'development',
  LOG_LEVEL: 'warn',
  // The fan-out steps are driven below; an in-process worker would claim the same jobs.
  WORKER_ENABLED: 'false',
  DATABASE_URL: env.databaseUrl,
  DATABASE_DIRECT_URL: env.directUrl,
  REDIS_URL: env.redisUrl,
  RATE_LIMIT_STANDARD_CAPACITY: '1000000',
  RATE_LIMIT_STANDARD_REFILL_PER_S: '1000000',
  PRESSURE_MAX_EVENT_LOOP_DELAY_MS: '0'
}))
await app.ready()

try {
  const authorization = async (id: string) => `Bearer ${(await app.issueToken({ id, tier: 'standard', sessionId: randomUUID() })).accessToken}`
  const authors = [
    { label: 'no followers', authorization: await authorization(quiet!.id), ms: [] as number[] },
    { label: `${FOLLOWERS.toLocaleString('en')} followers`, authorization: await authorization(popular!.id), ms: [] as number[] }
  ]
  const post = async (author: (typeof authors)[number], body: string) => {
    const before = performance.now()
    const response = await app.inject({ method: 'POST', url: '/posts', headers: { authorization: author.authorization }, payload: { body } })
    const ms = performance.now() - before
    if (response.statusCode !== 201) throw new Error(`POST /posts: ${response.statusCode} ${response.body}`)
    return { ms, id: response.json().id as string }
  }

  // Warm-up (connections, JIT), then alternate so both see the same machine at the same moments.
  for (let i = 0; i < 20; i++) for (const author of authors) await post(author, `warm-up ${i}`)
  for (let i = 0; i < REQUESTS; i++) for (const author of authors) author.ms.push((await post(author, `latency ${i}`)).ms)
  // The latency posts' fan-outs are not what is measured next.
  await owner`delete from jobs`

  const quantile = (values: number[], q: number) => values.toSorted((a, b) => a - b)[Math.min(values.length - 1, Math.floor(q * values.length))] ?? Number.NaN
  const format = (ms: number) => ms.toFixed(2)
  console.log(`\n## POST /posts latency (${REQUESTS} requests each, alternating, in-process)\n`)
  console.log('| author | mean ms | p50 ms | p95 ms | p99 ms |')
  console.log('|---|---|---|---|---|')
  for (const author of authors) {
    const mean = author.ms.reduce((sum, ms) => sum + ms, 0) / author.ms.length
    console.log(`| ${author.label} | ${format(mean)} | ${format(quantile(author.ms, 0.5))} | ${format(quantile(author.ms, 0.95))} | ${format(quantile(author.ms, 0.99))} |`)
  }

  const handlers = createFeedJobHandlers({ cache: app.cache })
  const fanOut = handlers[FEED_JOB.fanOut] as JobHandler<FanOutPayload>
  const context = { sql: app.db, log: app.log, signal: new AbortController().signal }
  let rows = 0
  let steps = 0
  let elapsedMs = 0
  for (let i = 0; i < FAN_OUTS; i++) {
    const { id } = await post(authors[1]!, `fan-out ${i}`)
    const [job] = await owner<{ id: string, payload: FanOutPayload }[]>`
      delete from jobs where kind = ${FEED_JOB.fanOut} and payload->>'postId' = ${id} returning id, payload`
    if (job === undefined) throw new Error('no fan-out job was queued')
    let payload = job.payload
    const before = performance.now()
    for (;;) {
      steps++
      const result = await fanOut({ id: job.id, kind: FEED_JOB.fanOut, payload, attempts: 0 }, context)
      if (result.status === 'done') break
      payload = result.payload as FanOutPayload
    }
    elapsedMs += performance.now() - before
    const [{ count } = { count: 0 }] = await owner<{ count: number }[]>`select count(*)::int as count from feed_items where post_id = ${id}`
    if (count !== FOLLOWERS + 1) throw new Error(`post ${id} is on ${count} feeds, expected ${FOLLOWERS + 1}`)
    rows += count - 1
  }
  console.log(`\n## Fan-out throughput (${FAN_OUTS} posts × ${FOLLOWERS.toLocaleString('en')} followers, batches of 1,000)\n`)
  console.log('| feed rows | steps | seconds | feed rows/s | per post (ms) |')
  console.log('|---|---|---|---|---|')
  console.log(`| ${rows.toLocaleString('en')} | ${steps} | ${(elapsedMs / 1000).toFixed(2)} | ${Math.round(rows / (elapsedMs / 1000)).toLocaleString('en')} | ${(elapsedMs / FAN_OUTS).toFixed(0)} |`)
} finally {
  await app.close()
  await owner.end({ timeout: 5 })
}
