// `npm run bench [-- --quick]`: seeds a dedicated database, starts the API (bench/server.ts) in production mode as a
// separate process, runs the scenarios with autocannon next to same-run baselines (bare Fastify, pgbench through the
// same PgBouncer, redis-benchmark), then prints Markdown tables and writes bench/results/<date>.{json,md,svg}.
// `--quick` is the CI smoke test: small data, short runs, and a non-zero exit on any socket error, timeout or 5xx.
//
// Environment: DATABASE_URL / DATABASE_DIRECT_URL / REDIS_URL (else the project-local stack is brought up),
// BENCH_DATABASE (ledger_bench), BENCH_REDIS_DB (3), BENCH_PGBENCH (path to pgbench).
import { execFileSync } from 'node:child_process'
import { randomBytes, randomUUID } from 'node:crypto'
import { mkdirSync, readdirSync } from 'node:fs'
import { availableParallelism, loadavg, totalmem } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import type autocannon from 'autocannon'
import { Redis } from 'ioredis'
import postgres from 'postgres'
import { withUserOf } from '../scripts/local-stack.ts'
import { createCursorCodec } from '../plugins/auth/cursors.ts'
import type { LatencyBar, ThroughputPair } from './lib/chart.ts'
import { writeOutputs } from './lib/output.ts'
import { Recorder, runLoad, summarize, tagRoute, type LoadResult } from './lib/load.ts'
import { findPgbench, runPgbench, runRedisBenchmark, startEntryServer, startNodeServer, waitReady, type NodeServer, type PgbenchResult } from './lib/processes.ts'
import { compare, cpuPerRequest, smokeFailures, type BaselineRecord, type Comparison, type Report, type RunRecord } from './lib/report.ts'
import { Sampler } from './lib/samplers.ts'
import { idsAtDepths, recreateDatabase, resolveEnv, seed, stackPids, type SeedSizes } from './lib/setup.ts'
import { getRequests, mixedRequests, sequentialGets, signClientTokens, signTokens, type Caller, type TrafficWorld } from './lib/traffic.ts'

const here = (path: string) => fileURLToPath(new URL(path, import.meta.url))

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    only: { type: 'string' },
    'cpu-prof': { type: 'boolean', default: false },
    'keep-server': { type: 'boolean', default: false }
  }
})
const quick = args.quick
const only = args.only === undefined ? undefined : new Set(args.only.split(','))
const wanted = (id: string) => only === undefined || only.has(id)

const started = Date.now()
const log = (line: string) => console.error(`[bench +${((Date.now() - started) / 1000).toFixed(0).padStart(4)} s] ${line}`)

const sizes: SeedSizes = quick
  ? { users: 5000, bigUserTransactions: 200_000, smallUserTransactions: 50, posts: 20_000, profileUsers: 12_000 }
  : { users: 5000, bigUserTransactions: 2_000_000, smallUserTransactions: 50, posts: 200_000, profileUsers: 60_000 }
const time = quick
  ? { long: 10, pair: 5, warm: 2, pgbench: 5 }
  : { long: 60, pair: 30, warm: 5, pgbench: 30 }
const BIG_CONNECTIONS = 1000
const PGBENCH_CLIENTS = 50
const CONNECTIONS = 100
const LIST_LIMIT = 25
const FEED_LIMIT = 19 // not the default 20: the default first page is cached, and this compares the database paths

const database = process.env.BENCH_DATABASE ?? 'ledger_bench'
const redisDb = Number(process.env.BENCH_REDIS_DB ?? 3)
const env = resolveEnv(database, redisDb, log)

const runs: RunRecord[] = []
const baselines: BaselineRecord[] = []
const comparisons: Comparison[] = []
const chartPairs: ThroughputPair[] = []
const children: NodeServer[] = []

let shuttingDown = false
async function cleanup () {
  for (const child of children) await child.stop().catch(() => {})
}
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    if (shuttingDown) return
    shuttingDown = true
    log(`${signal}: stopping child processes`)
    cleanup().finally(() => process.exit(130)).catch(() => {})
  })
}

// ---------------------------------------------------------------------------------------------------------------
// Data
log(`mode ${quick ? 'quick' : 'full'}; database ${env.database} (recreated), redis db ${redisDb}`)
await recreateDatabase(env)
const seeded = await seed(env, sizes, log)
const redis = new Redis(env.redisUrl, { lazyConnect: false, maxRetriesPerRequest: 2 })
await redis.flushdb()
const admin = postgres(env.adminUrl, { max: 1, onnotice: () => {}, idle_timeout: 30 })

// ---------------------------------------------------------------------------------------------------------------
// The API
const secret = randomBytes(48).toString('base64url')
// In production /metrics on the public port needs a token (the sampler scrapes it there).
const metricsToken = randomBytes(24).toString('hex')
const jwt = { secret, issuer: 'ledger-api', audience: 'ledger-api', ttlSeconds: 3600 }
const serverEnv: NodeJS.ProcessEnv = {
  ...process.env,
  NODE_ENV: 'production',
  LOG_LEVEL: 'warn',
  JWT_SECRET: secret,
  METRICS_TOKEN: metricsToken,
  JWT_ISSUER: jwt.issuer,
  JWT_AUDIENCE: jwt.audience,
  DATABASE_URL: env.databaseUrl,
  DATABASE_DIRECT_URL: env.directUrl,
  REDIS_URL: env.redisUrl,
  // The per-user limit is not what these scenarios measure (pro tokens); `abuse` uses a standard-tier token.
  RATE_LIMIT_PRO_CAPACITY: '1000000',
  RATE_LIMIT_PRO_REFILL_PER_S: '1000000',
  RATE_LIMIT_SERVICE_CAPACITY: '1000000',
  RATE_LIMIT_SERVICE_REFILL_PER_S: '1000000',
  BENCH_SERVER_MAX_S: String(quick ? 900 : 3600)
}
const cpuProfDir = join(here('./results'), 'profiles')
const nodeArgs = args['cpu-prof'] ? ['--cpu-prof', `--cpu-prof-dir=${cpuProfDir}`] : []
log('starting the API: node bench/server.ts (NODE_ENV=production, LOG_LEVEL=warn)')
const api = await startNodeServer(here('./server.ts'), serverEnv, nodeArgs)
children.push(api)
await waitReady(api.url)
log(`API ready at ${api.url} (pid ${api.pid})`)

/** Samples around the API by default; baselines pass their own server's pid (or none) and no metrics URL. */
const sampler = (target: { pid: number | undefined, metricsUrl: string | undefined } = { pid: api.pid, metricsUrl: `${api.url}/metrics` }) => new Sampler({
  admin,
  database: env.database,
  redis,
  ...(target.metricsUrl === undefined ? {} : { metricsUrl: target.metricsUrl, metricsToken }),
  groups: { apiPid: () => target.pid, ...stackPids(env.stackDir) }
})

const tokens = await signTokens(jwt, [
  ...seeded.pool.map((id) => ({ id, tier: 'pro' as const })),
  { id: seeded.abuserId, tier: 'standard' as const },
  { id: seeded.bigUserId, tier: 'pro' as const },
  { id: seeded.smallUserId, tier: 'pro' as const }
])
const callers: Caller[] = seeded.pool.map((id, i) => ({ id, token: tokens[i]! }))
const abuser: Caller = { id: seeded.abuserId, token: tokens[seeded.pool.length]! }
const bigUser: Caller = { id: seeded.bigUserId, token: tokens[seeded.pool.length + 1]! }
const smallUser: Caller = { id: seeded.smallUserId, token: tokens[seeded.pool.length + 2]! }
// Deposits and withdrawals come from the seeded settlement client, as in production; users only transfer.
const [funderToken] = await signClientTokens(jwt, [{ id: seeded.clientId, scopes: ['funds:write'] }])
const world: TrafficWorld = { callers, funder: { id: seeded.clientId, token: funderToken! }, keyPrefix: `bench-${Date.now().toString(36)}` }

// ---------------------------------------------------------------------------------------------------------------
// Helpers
interface Measured { load: LoadResult, samples: Awaited<ReturnType<Sampler['stop']>> }

async function warmUp (specs: Array<{ connections: number, requests: autocannon.Request[], overallRate?: number }>, url = api.url) {
  await Promise.all(specs.map((spec) => runLoad({ url, connections: spec.connections, duration: time.warm, requests: spec.requests, defaultRoute: 'warm-up', ...(spec.overallRate === undefined ? {} : { overallRate: spec.overallRate }) })))
}

/** Runs several autocannon instances side by side (optionally started `staggerMs` apart) under one sampler. */
async function measure (specs: Array<{ connections: number, requests: autocannon.Request[], duration?: number, amount?: number, overallRate?: number, route: string }>, staggerMs = 0, recorder = new Recorder(), server: NodeServer = api): Promise<Measured> {
  const s = server === api ? sampler() : sampler({ pid: server.pid, metricsUrl: undefined })
  await s.start()
  const began = performance.now()
  const results = await Promise.all(specs.map(async (spec, i) => {
    if (staggerMs > 0 && i > 0) await new Promise((resolve) => setTimeout(resolve, staggerMs * i))
    return (await runLoad({
      url: server.url,
      connections: spec.connections,
      requests: spec.requests,
      defaultRoute: spec.route,
      ...(spec.amount === undefined ? { duration: spec.duration ?? time.long } : { amount: spec.amount }),
      ...(spec.overallRate === undefined ? {} : { overallRate: spec.overallRate })
    }, recorder)).result
  }))
  const load = summarize(results, recorder, (performance.now() - began) / 1000)
  const samples = await s.stop()
  if (server.child.exitCode !== null) throw new Error(`the API exited with ${server.child.exitCode} during a run`)
  if (server === api) await checkInFlightSettled(specs.map((spec) => spec.route).join(' + '))
  return { load, samples }
}

/**
 * After each run against the API (autocannon closes its connections at the end, some with requests in flight):
 * every `*_in_flight` gauge returns to 0 within a few seconds, the scrape itself aside (issue 22). A gauge that
 * stays up, or goes negative, is a leak in the accounting that would page someone during an incident.
 */
const inFlightLeaks: string[] = []
async function checkInFlightSettled (label: string, timeoutMs = 5000) {
  const started = performance.now()
  let gauges: Record<string, number> = {}
  while (performance.now() - started < timeoutMs) {
    const text = await (await fetch(`${api.url}/metrics`, { headers: { authorization: `Bearer ${metricsToken}` } })).text()
    gauges = {}
    for (const match of text.matchAll(/^([a-z_:]+_in_flight)(?:\{[^}]*\})? (\S+)$/gm)) gauges[match[1]!] = (gauges[match[1]!] ?? 0) + Number(match[2])
    // The scrape is itself a request in flight.
    if (gauges.ledger_http_requests_in_flight !== undefined) gauges.ledger_http_requests_in_flight -= 1
    if (Object.values(gauges).every((value) => value === 0)) return
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  inFlightLeaks.push(`${label}: ${JSON.stringify(gauges)}`)
  log(`in-flight gauges did not return to 0 after ${label}: ${JSON.stringify(gauges)}`)
}

function record (id: string, scenario: string, label: string, connections: number, m: Measured, notes: string[] = [], overallRate?: number): RunRecord {
  const run: RunRecord = { id, scenario, label, connections, load: m.load, samples: m.samples, notes, ...(overallRate === undefined ? {} : { overallRate }) }
  runs.push(run)
  const l = m.load
  log(`${label}: ${l.rps.toFixed(0)} req/s, p50 ${l.latency.p50.toFixed(2)} ms, p99 ${l.latency.p99.toFixed(2)} ms, max ${l.latency.max.toFixed(0)} ms, ` +
    `statuses ${JSON.stringify(l.statusCodes)}, errors ${l.errors} (timeouts ${l.timeouts}), peak PG ${m.samples.peakPgConnections}, ` +
    `RSS ${m.samples.peakApiRssMb.toFixed(0)} MB, cpu ${JSON.stringify(Object.fromEntries(Object.entries(m.samples.cpu).map(([k, v]) => [k, Number(v.toFixed(2))])))}`)
  return run
}

/**
 * The same comparison by CPU cost instead of throughput: reference CPU ms per request / measured CPU ms per request
 * (so, like a throughput ratio, above 1 means the measured side is cheaper). Robust to other work on the machine.
 */
function cpuCompare (id: string, label: string, measured: { label: string, samples: RunRecord['samples'], rps: number }, reference: { label: string, samples: RunRecord['samples'], rps: number }, part: 'api' | 'db' | 'stack', note: string) {
  const m = cpuPerRequest(measured.samples, measured.rps)
  const r = cpuPerRequest(reference.samples, reference.rps)
  if (m === undefined || r === undefined || m[part] <= 0) return
  comparisons.push(compare({
    id: `${id}-cpu`,
    label: `${label} (by ${part} CPU ms per request)`,
    measured: measured.label,
    reference: reference.label,
    measuredValue: m[part],
    referenceValue: r[part],
    value: r[part] / m[part],
    unit: 'ratio',
    target: undefined,
    note: `${m[part].toFixed(3)} vs ${r[part].toFixed(3)} CPU ms per request; ${note}`
  }))
}
/** The usual comparison by throughput: measured req/s over reference req/s (above 1: the measured side is faster). */
function throughputRatio (id: string, label: string, measured: { label: string, rps: number }, reference: { label: string, rps: number }, target: number | undefined, note: string): Comparison {
  return compare({
    id,
    label,
    measured: measured.label,
    reference: reference.label,
    measuredValue: measured.rps,
    referenceValue: reference.rps,
    value: measured.rps / reference.rps,
    unit: 'ratio',
    target: target === undefined ? undefined : { op: '>=', value: target },
    note
  })
}
const runSide = (run: RunRecord) => ({ label: run.label, samples: run.samples, rps: run.load.rps })
const baselineSide = (b: BaselineRecord) => ({ label: b.label, samples: b.samples, rps: b.rps })

const findRun = (id: string) => runs.find((r) => r.id === id)
const findBaseline = (id: string) => baselines.find((b) => b.id === id)

// ---------------------------------------------------------------------------------------------------------------
// Baselines
async function bareBaseline (connections: number, withLimiter = false) {
  const bare = await startNodeServer(here('./bare-server.ts'), { ...process.env, BENCH_SERVER_MAX_S: '600', ...(withLimiter ? { BENCH_BARE_REDIS_URL: env.redisUrl } : {}) })
  children.push(bare)
  try {
    const requests: autocannon.Request[] = [{ method: 'GET', path: '/' }]
    await warmUp([{ connections, requests }], bare.url)
    const s = sampler({ pid: bare.pid, metricsUrl: undefined })
    await s.start()
    const { result, recorder, wallS } = await runLoad({ url: bare.url, connections, duration: time.pair, requests, defaultRoute: 'GET /' })
    const load = summarize([result], recorder, wallS)
    const samples = await s.stop()
    baselines.push({
      id: withLimiter ? `bare-limiter-${connections}` : `bare-${connections}`,
      label: withLimiter ? `bare Fastify + the rate-limit script in Redis, constant JSON (${connections} conns)` : `bare Fastify, constant JSON (${connections} conns)`,
      tool: 'autocannon',
      connections,
      rps: load.rps,
      latency: load.latency,
      errors: load.errors,
      samples,
      details: { statusCodes: load.statusCodes, timeouts: load.timeouts }
    })
    log(`baseline bare Fastify${withLimiter ? ' + limiter' : ''} @${connections}: ${load.rps.toFixed(0)} req/s, p99 ${load.latency.p99.toFixed(2)} ms`)
  } finally {
    await bare.stop()
    children.splice(children.indexOf(bare), 1)
  }
}

async function pgbenchBaseline (id: string, label: string, run: () => Promise<PgbenchResult>) {
  const s = sampler({ pid: undefined, metricsUrl: undefined })
  await s.start()
  const result = await run()
  const samples = await s.stop()
  baselines.push({
    id,
    label,
    tool: 'pgbench',
    connections: result.clients,
    rps: result.tps,
    latency: result.latency,
    errors: result.failed,
    samples,
    details: { transactions: result.transactions, failed: result.failed, retried: result.retried, exitCode: result.exitCode, script: `bench/pgbench/${result.script.split('/').at(-1)}` }
  })
  log(`baseline ${label}: ${result.tps.toFixed(0)} tps, p50 ${result.latency.p50.toFixed(2)} ms, p99 ${result.latency.p99.toFixed(2)} ms, failed ${result.failed}, retried ${result.retried}, exit ${result.exitCode}`)
  if (result.tps === 0) log(`pgbench output:\n${result.output}`)
}

async function databaseBaselines () {
  const pgbench = findPgbench()
  if (pgbench === undefined) {
    log('pgbench not found (set BENCH_PGBENCH): database baselines skipped')
    return
  }
  const options = { clients: PGBENCH_CLIENTS, threads: 2, seconds: time.pgbench, defines: { users: seeded.pool.length } }
  // The ceiling writes ledger tables directly, which the API's role may not: it runs as the owner, through PgBouncer.
  await pgbenchBaseline('pgbench-one-statement', 'pgbench: transfer as one CTE statement (ceiling)',
    () => runPgbench(pgbench, withUserOf(env.databaseUrl, env.directUrl), here('./pgbench/transfer-one-statement.sql'), options))
  await pgbenchBaseline('pgbench-post-transaction', 'pgbench: select * from post_transaction(...) (our statement)',
    () => runPgbench(pgbench, env.databaseUrl, here('./pgbench/post-transaction.sql'), options))
  // The minimal ledger write (issue 20) lives in its own schema, so it is loaded here, after the seed it takes its
  // accounts from, and rebuilt on every run like the database. Owner only: it is a bench object, not the API's.
  const owner = postgres(env.directUrl, { max: 1, onnotice: () => {} })
  try {
    // A project file of several statements, sent as it is (simple protocol): no value is ever put into it.
    await owner.file(here('./pgbench/minimal-ledger.sql'))
    // As the seed does for the product's tables: no hint-bit writes or autovacuum inside the measured run.
    await owner`vacuum analyze bench_minimal.accounts`
  } finally {
    await owner.end({ timeout: 5 })
  }
  await pgbenchBaseline('pgbench-minimal-ledger', 'pgbench: select * from bench_minimal.transfer(...) (minimal ledger write)',
    () => runPgbench(pgbench, withUserOf(env.databaseUrl, env.directUrl), here('./pgbench/minimal-ledger-transfer.sql'), options))
}

async function redisBaseline () {
  const result = await runRedisBenchmark(env.redisUrl, 100_000).catch(() => undefined)
  if (result === undefined) {
    log('redis-benchmark not available: Redis baseline skipped')
    return
  }
  baselines.push({
    id: 'redis-get',
    label: 'redis-benchmark -t get -n 100000 (50 clients)',
    tool: 'redis-benchmark',
    connections: 50,
    rps: result.rps,
    latency: { count: 100_000, mean: result.p50, p50: result.p50, p90: result.p50, p99: Number.NaN, max: Number.NaN },
    errors: 0,
    samples: undefined,
    details: { output: result.output }
  })
  log(`baseline redis GET: ${result.rps.toFixed(0)} req/s, p50 ${result.p50} ms`)
}

// ---------------------------------------------------------------------------------------------------------------
// Scenarios
async function mixedScenario () {
  const requests = mixedRequests(world)
  await warmUp([{ connections: BIG_CONNECTIONS, requests }])
  record('mixed-1000', 'mixed-1000', 'mixed-1000', BIG_CONNECTIONS, await measure([{ connections: BIG_CONNECTIONS, requests, route: 'mixed' }]),
    ['mix: 30 % GET /users/:id (others), 25 % GET /transactions, 25 % GET /feed (default page, cached), 20 % POST /transactions (deposit/withdrawal/transfer)'])
}

/**
 * Scale-out on one machine: the same mixed load against the real entry point, `node server.ts`, with WORKERS=1
 * and WORKERS=2 (node:cluster), one after the other. On this 2-core machine the workers share the cores with
 * PostgreSQL, PgBouncer, Redis and the load generator, so the speed-up says where the next limit is.
 */
async function workersScenario () {
  const requests = mixedRequests(world)
  const measured: RunRecord[] = []
  for (const workers of [1, 2]) {
    const server = await startEntryServer(here('../server.ts'), { ...serverEnv, WORKERS: String(workers) })
    children.push(server)
    try {
      await warmUp([{ connections: BIG_CONNECTIONS, requests }], server.url)
      measured.push(record(`mixed-workers-${workers}`, 'mixed-workers', `mixed-1000, server.ts WORKERS=${workers}`, BIG_CONNECTIONS,
        await measure([{ connections: BIG_CONNECTIONS, requests, route: 'mixed' }], 0, new Recorder(), server),
        [`node server.ts with WORKERS=${workers}${workers > 1 ? ' (node:cluster primary + workers, each with its own pool)' : ''}; the same mix as mixed-1000; API CPU and RSS columns show the primary process only`]))
    } finally {
      await server.stop()
    }
  }
  const [one, two] = measured
  if (one === undefined || two === undefined) return
  comparisons.push(compare({
    id: 'workers-speedup',
    label: 'mixed-1000: WORKERS=2 vs WORKERS=1 (speed-up)',
    measured: two.label,
    reference: one.label,
    measuredValue: two.load.rps,
    referenceValue: one.load.rps,
    value: two.load.rps / one.load.rps,
    unit: 'ratio',
    target: undefined,
    note: 'both workers share 2 cores with PostgreSQL, PgBouncer, Redis and autocannon; see the CPU columns for who is busy'
  }))
}

async function postScenario () {
  const requests = mixedRequests(world, [['POST /transactions', 1]], ['transfer'])
  await warmUp([{ connections: BIG_CONNECTIONS, requests }])
  record('post-transactions', 'post-transactions', 'post-transactions (transfers)', BIG_CONNECTIONS,
    await measure([{ connections: BIG_CONNECTIONS, requests, route: 'POST /transactions' }]),
    ['every request a transfer between two random users with a unique Idempotency-Key, like the pgbench scripts'])
  // At 1,000 connections most requests wait for one of the pool's connections, and that waiting costs CPU of its
  // own; at pgbench's concurrency the API's cost per write is what the write itself costs.
  await warmUp([{ connections: PGBENCH_CLIENTS, requests }])
  const atPgbench = record('post-transactions-50', 'post-transactions', `post-transactions (transfers, ${PGBENCH_CLIENTS} connections)`, PGBENCH_CLIENTS,
    await measure([{ connections: PGBENCH_CLIENTS, requests, duration: time.pair, route: 'POST /transactions' }]),
    [`the same transfers at the database baselines' concurrency (pgbench -c ${PGBENCH_CLIENTS})`])
  apiCpuGoal('post-api-cpu', 'POST /transactions: API CPU per request', atPgbench, 0.18)
}

/** Issue 20's goals: the API process's CPU per request, absolute, on the bench machine. */
function apiCpuGoal (id: string, label: string, run: RunRecord, targetMs: number) {
  const per = cpuPerRequest(run.samples, run.load.rps)
  if (per === undefined) return
  comparisons.push(compare({
    id,
    label,
    measured: run.label,
    reference: '',
    measuredValue: per.api,
    referenceValue: targetMs,
    value: per.api,
    unit: 'ms',
    target: { op: '<=', value: targetMs },
    note: `${per.api.toFixed(3)} ms at ${run.load.rps.toFixed(0)} req/s (API process CPU seconds / requests)`
  }))
}

async function walkCursors (caller: Caller, pages: number): Promise<string[]> {
  const cursors: string[] = []
  let cursor: string | null = null
  for (let i = 0; i < pages; i++) {
    const response: Response = await fetch(`${api.url}/transactions?limit=${LIST_LIMIT}${cursor === null ? '' : `&cursor=${cursor}`}`, { headers: { authorization: `Bearer ${caller.token}` } })
    if (!response.ok) throw new Error(`walking cursors: ${response.status} ${await response.text()}`)
    const page = await response.json() as { nextCursor: string | null }
    if (page.nextCursor === null) break
    cursor = page.nextCursor
    cursors.push(cursor)
  }
  return cursors
}

async function listScenario () {
  const walked = await walkCursors(bigUser, 5)
  const codec = createCursorCodec(secret)
  const depthList = [0.001, 0.05, 0.5, 0.95].map((f) => Math.floor(sizes.bigUserTransactions * f))
  const deep = (await idsAtDepths(env, bigUser.id, depthList)).map(({ id }) => codec.encode(`transactions:${bigUser.id}`, { before: id }))
  const page = (cursor?: string) => `/transactions?limit=${LIST_LIMIT}${cursor === undefined ? '' : `&cursor=${cursor}`}`
  const bigPaths: Array<[string, string]> = [
    ['page 1', page()],
    ...walked.map((c): [string, string] => [`pages 2-${walked.length + 1} (walked)`, page(c)]),
    ...deep.map((c, i): [string, string] => [`depth ${depthList[i]!} (minted)`, page(c)])
  ]
  const smallPaths: Array<[string, string]> = [['page 1', page()], ...(await walkCursors(smallUser, 1)).map((c): [string, string] => ['page 2', page(c)])]
  const cycle = (caller: Caller, paths: Array<[string, string]>): autocannon.Request[] =>
    paths.map(([tag, path]) => ({
      setupRequest: (request: autocannon.Request, context: object) => {
        tagRoute(context, `GET /transactions ${tag}`)
        return { ...request, method: 'GET', path, headers: { authorization: `Bearer ${caller.token}` } } as autocannon.Request
      }
    }))
  const big = cycle(bigUser, bigPaths)
  const small = cycle(smallUser, smallPaths)
  await warmUp([{ connections: CONNECTIONS, requests: big }])
  const bigRun = record('list-2m-big', 'list-2m', `list-2m: ${(sizes.bigUserTransactions / 1e6).toString()}M-row user`, CONNECTIONS,
    await measure([{ connections: CONNECTIONS, requests: big, duration: time.pair, route: 'GET /transactions (big)' }]),
    [`limit ${LIST_LIMIT}; cycles the first page, ${walked.length} walked cursors and ${deep.length} deep cursors (depths ${depthList.join(', ')}, signed with the bench's secret)`])
  await warmUp([{ connections: CONNECTIONS, requests: small }])
  const smallRun = record('list-2m-small', 'list-2m', `list-2m: ${sizes.smallUserTransactions}-row user`, CONNECTIONS,
    await measure([{ connections: CONNECTIONS, requests: small, duration: time.pair, route: 'GET /transactions (small)' }]),
    [`limit ${LIST_LIMIT}; first page and second page`])
  comparisons.push(compare({
    id: 'list-2m',
    label: 'list-2m: big user req/s vs 50-row user',
    measured: bigRun.label,
    reference: smallRun.label,
    measuredValue: bigRun.load.rps,
    referenceValue: smallRun.load.rps,
    value: bigRun.load.rps / smallRun.load.rps,
    unit: 'ratio',
    target: { op: '>=', value: 0.8 },
    note: `p99 ${bigRun.load.latency.p99.toFixed(2)} vs ${smallRun.load.latency.p99.toFixed(2)} ms`
  }))
  cpuCompare('list-2m', 'list-2m: big user vs 50-row user', runSide(bigRun), runSide(smallRun), 'db', 'PostgreSQL + PgBouncer work per page')
  chartPairs.push({ check: 'list: big user vs 50-row user', measuredName: bigRun.label, measured: bigRun.load.rps, referenceName: smallRun.label, reference: smallRun.load.rps, target: 0.8 })
}

async function userCacheScenario () {
  const targets = callers.slice(0, 10)
  const others = callers.slice(10)
  const hits = getRequests(others, () => `/users/${targets[Math.floor(Math.random() * targets.length)]!.id}`, 'GET /users/:id (hit)')
  await warmUp([{ connections: CONNECTIONS, requests: hits }])
  const hitRun = record('user-cache-hits', 'user-cache', 'user-cache: hits (10 warm ids)', CONNECTIONS,
    await measure([{ connections: CONNECTIONS, requests: hits, duration: time.pair, route: 'GET /users/:id (hit)' }]))
  apiCpuGoal('user-cache-api-cpu', 'cached GET /users/:id: API CPU per request', hitRun, 0.06)
  const bareLimiter = findBaseline(`bare-limiter-${CONNECTIONS}`)
  if (bareLimiter !== undefined) {
    // Issue 20: what a cached read costs beyond the one Redis round trip every API request makes (the limiter's).
    comparisons.push(throughputRatio('user-cache-vs-bare-limiter', 'cached GET /users/:id vs bare Fastify + the rate-limit round trip', runSide(hitRun), baselineSide(bareLimiter), undefined,
      'the reference runs the same token-bucket script through the same client settings, and nothing else'))
    cpuCompare('user-cache-vs-bare-limiter', 'cached GET /users/:id vs bare Fastify + the rate-limit round trip', runSide(hitRun), baselineSide(bareLimiter), 'api', 'API process vs bare process with the limiter')
  }
  const warmIds = seeded.profileIds.slice(0, 1000)
  const missIds = seeded.profileIds.slice(1000)
  await warmUp([{ connections: CONNECTIONS, requests: sequentialGets(callers[0]!, warmIds.map((id) => `/users/${id}`), 'warm') }])
  const missRun = record('user-cache-misses', 'user-cache', `user-cache: misses (${missIds.length.toLocaleString('en-US')} ids, each read once)`, CONNECTIONS,
    await measure([{ connections: CONNECTIONS, requests: sequentialGets(callers[0]!, missIds.map((id) => `/users/${id}`), 'GET /users/:id (miss)'), amount: missIds.length, route: 'GET /users/:id (miss)' }]))
  const bare = findBaseline(`bare-${CONNECTIONS}`)
  if (bare !== undefined) {
    comparisons.push(compare({
      id: 'user-cache-vs-bare',
      label: 'cached GET /users/:id vs bare Fastify',
      measured: hitRun.label,
      reference: bare.label,
      measuredValue: hitRun.load.rps,
      referenceValue: bare.rps,
      value: hitRun.load.rps / bare.rps,
      unit: 'ratio',
      target: { op: '>=', value: 0.4 },
      note: 'same connections'
    }))
    cpuCompare('user-cache-vs-bare', 'cached GET /users/:id vs bare Fastify', runSide(hitRun), baselineSide(bare), 'api', 'API process vs bare process')
    chartPairs.push({ check: 'cached GET /users/:id vs bare Fastify', measuredName: hitRun.label, measured: hitRun.load.rps, referenceName: bare.label, reference: bare.rps, target: 0.4 })
  }
  comparisons.push(compare({
    id: 'user-cache-miss-vs-hit',
    label: 'GET /users/:id misses vs hits',
    measured: missRun.label,
    reference: hitRun.label,
    measuredValue: missRun.load.rps,
    referenceValue: hitRun.load.rps,
    value: missRun.load.rps / hitRun.load.rps,
    unit: 'ratio',
    target: undefined,
    note: `app-side hit share: hits run ${pct(hitRun.samples?.appCache.user?.hitShare)}, misses run ${pct(missRun.samples?.appCache.user?.hitShare)}`
  }))
  chartPairs.push({ check: 'GET /users/:id misses vs hits', measuredName: missRun.label, measured: missRun.load.rps, referenceName: hitRun.label, reference: hitRun.load.rps })
  const redisGet = findBaseline('redis-get')
  if (redisGet !== undefined) {
    comparisons.push(compare({
      id: 'user-cache-vs-redis',
      label: 'cached GET /users/:id vs redis-benchmark GET',
      measured: hitRun.label,
      reference: redisGet.label,
      measuredValue: hitRun.load.rps,
      referenceValue: redisGet.rps,
      value: hitRun.load.rps / redisGet.rps,
      unit: 'ratio',
      target: undefined,
      note: 'each API request also runs the rate-limit script (EVALSHA) and a cache GET'
    }))
  }
}

const pct = (v: number | null | undefined) => v === null || v === undefined ? '-' : `${(v * 100).toFixed(0)} %`

async function feedScenario () {
  const join = getRequests(callers, () => `/feed?limit=${FEED_LIMIT}`, `GET /feed?limit=${FEED_LIMIT}`)
  const naive = getRequests(callers, () => `/bench/feed-n-plus-one?limit=${FEED_LIMIT}`, `GET /bench/feed-n-plus-one?limit=${FEED_LIMIT}`)
  await warmUp([{ connections: CONNECTIONS, requests: join }])
  const joinRun = record('feed-join', 'feed', `feed: JOIN (limit ${FEED_LIMIT}, uncached)`, CONNECTIONS,
    await measure([{ connections: CONNECTIONS, requests: join, duration: time.pair, route: 'GET /feed' }]))
  await warmUp([{ connections: CONNECTIONS, requests: naive }])
  const naiveRun = record('feed-n-plus-one', 'feed', `feed: N+1 (limit ${FEED_LIMIT})`, CONNECTIONS,
    await measure([{ connections: CONNECTIONS, requests: naive, duration: time.pair, route: 'GET /bench/feed-n-plus-one' }]))
  comparisons.push(compare({
    id: 'feed-join-vs-n-plus-one',
    label: 'feed JOIN vs N+1',
    measured: joinRun.label,
    reference: naiveRun.label,
    measuredValue: joinRun.load.rps,
    referenceValue: naiveRun.load.rps,
    value: joinRun.load.rps / naiveRun.load.rps,
    unit: 'ratio',
    target: { op: '>=', value: 5 },
    note: `p99 ${joinRun.load.latency.p99.toFixed(1)} vs ${naiveRun.load.latency.p99.toFixed(1)} ms`
  }))
  cpuCompare('feed-join-vs-n-plus-one', 'feed JOIN vs N+1', runSide(joinRun), runSide(naiveRun), 'stack', 'API + PostgreSQL + PgBouncer + Redis')
  chartPairs.push({ check: 'feed JOIN vs N+1', measuredName: joinRun.label, measured: joinRun.load.rps, referenceName: naiveRun.label, reference: naiveRun.load.rps, target: 5 })
}

const ENDED_SESSIONS = 10_000
const ENDED_USERS = 1000

/** Redis commands + database transactions per request, and the breakdown, from a run's samples. */
function roundTripsPerRequest (run: RunRecord): { total: number, text: string } | undefined {
  const trips = run.samples?.roundTrips
  const requests = run.load.requests
  if (trips === undefined || trips.pgTransactions === undefined || requests === 0) return undefined
  const redisCalls = Object.values(trips.redisCommands).reduce((a, b) => a + b, 0)
  const byCommand = Object.entries(trips.redisCommands).sort(([, a], [, b]) => b - a).map(([command, calls]) => `${command} ${(calls / requests).toFixed(3)}`).join(', ')
  return {
    total: (redisCalls + trips.pgTransactions) / requests,
    text: `Redis ${(redisCalls / requests).toFixed(3)} (${byCommand || 'none'}), PostgreSQL transactions ${(trips.pgTransactions / requests).toFixed(3)}`
  }
}

/**
 * Issue 17: every authenticated request checks its session and its user against the revocation list
 * (plugins/revocations.ts), a Map each process refreshes in the background, so the check should cost nothing
 * measurable and no round trip. The same cached GET /users/:id load runs twice in the same API process: with the
 * list empty, then after ${ENDED_SESSIONS} ended sessions and ${ENDED_USERS} ended users were written (as the owner,
 * as logout, password changes and user removal write them) and the API loaded them, which a canary session among
 * them proves: its token turns 401 before the second run starts. The list cannot be emptied in a running process
 * (rows leave memory only when their tokens have expired), so the order is fixed: empty first.
 */
async function sessionCheckScenario () {
  const owner = postgres(env.directUrl, { max: 1, onnotice: () => {} })
  try {
    const held = async () => (await owner<{ n: number }[]>`select count(*)::int as n from revocations`)[0]!.n
    const targets = callers.slice(0, 10)
    const hits = getRequests(callers.slice(10), () => `/users/${targets[Math.floor(Math.random() * targets.length)]!.id}`, 'GET /users/:id (hit)')
    const run = async (id: string, revocations: number, notes: string[]) => {
      await warmUp([{ connections: CONNECTIONS, requests: hits }])
      return record(id, 'session-check', `session-check: cached GET /users/:id, ${revocations.toLocaleString('en-US')} revocations held`, CONNECTIONS,
        await measure([{ connections: CONNECTIONS, requests: hits, duration: time.pair, route: 'GET /users/:id (hit)' }]), notes)
    }
    const empty = await run('session-check-empty', await held(), ['the same load as user-cache hits; every token has a session id of its own, checked with its user against the list'])

    const canarySession = randomUUID()
    const [canaryToken] = await signTokens(jwt, [{ id: callers[0]!.id, tier: 'pro', sessionId: canarySession }])
    const probe = async () => (await fetch(`${api.url}/users/${targets[0]!.id}`, { headers: { authorization: `Bearer ${canaryToken!}` } })).status
    const before = await probe()
    if (before !== 200) throw new Error(`the canary session's token got ${before} before its session ended`)
    const written = performance.now()
    await owner`
      insert into revocations (subject)
      select 'session:' || gen_random_uuid() from generate_series(1, ${ENDED_SESSIONS})
      union all
      select 'user:' || gen_random_uuid() from generate_series(1, ${ENDED_USERS})
      union all
      select ${`session:${canarySession}`}`
    let status = before
    while (status !== 401) {
      if (performance.now() - written > 10_000) throw new Error(`the API did not refuse an ended session within 10 s (last status ${status})`)
      await new Promise((resolve) => setTimeout(resolve, 10))
      status = await probe()
    }
    const loadedMs = performance.now() - written
    log(`session-check: ${ENDED_SESSIONS + ENDED_USERS + 1} revocations written; the canary's token refused after ${loadedMs.toFixed(0)} ms`)
    const large = await run('session-check-large', await held(), [
      `${ENDED_SESSIONS.toLocaleString('en-US')} ended sessions + ${ENDED_USERS.toLocaleString('en-US')} ended users + 1 canary session written as the owner; ` +
      `the canary's token was refused ${loadedMs.toFixed(0)} ms after the commit (REVOCATION_POLL_MS 500), so the API held them all before this run`
    ])

    comparisons.push(compare({
      id: 'session-check-rps',
      label: 'session check: cached GET /users/:id with 11,001 revocations vs none (req/s)',
      measured: large.label,
      reference: empty.label,
      measuredValue: large.load.rps,
      referenceValue: empty.load.rps,
      value: large.load.rps / empty.load.rps,
      unit: 'ratio',
      target: undefined,
      note: `p50 ${large.load.latency.p50.toFixed(2)} vs ${empty.load.latency.p50.toFixed(2)} ms, p99 ${large.load.latency.p99.toFixed(2)} vs ${empty.load.latency.p99.toFixed(2)} ms; one after the other on a shared machine, so a few percent either way is noise`
    }))
    cpuCompare('session-check', 'session check: 11,001 revocations vs none', runSide(large), runSide(empty), 'api', 'API process CPU per request; above 1 means the large list is cheaper')
    const largeTrips = roundTripsPerRequest(large)
    const emptyTrips = roundTripsPerRequest(empty)
    if (largeTrips !== undefined && emptyTrips !== undefined) {
      comparisons.push(compare({
        id: 'session-check-round-trips',
        label: 'session check: Redis commands + PostgreSQL transactions per request added by 11,001 revocations',
        measured: large.label,
        reference: empty.label,
        measuredValue: largeTrips.total,
        referenceValue: emptyTrips.total,
        value: largeTrips.total - emptyTrips.total,
        unit: 'count',
        // One more call per request would add 1; background polls and the sampler add a few thousandths.
        target: { op: '<', value: 0.1 },
        note: `Redis counts the commands the limiter's script runs (TIME, HMGET, HSET, PEXPIRE) besides its EVALSHA. With the list: ${largeTrips.text}; empty: ${emptyTrips.text}`
      }))
    }
    chartPairs.push({ check: 'session check: 11,001 revocations vs none', measuredName: large.label, measured: large.load.rps, referenceName: empty.label, reference: empty.load.rps })
  } finally {
    await owner.end({ timeout: 5 })
  }
}

async function abuseScenario () {
  const requests = mixedRequests(world)
  const statuses: number[] = []
  let first429: Record<string, unknown> | undefined
  const abuserRequests: autocannon.Request[] = [{
    method: 'GET',
    path: `/users/${callers[0]!.id}`,
    headers: { authorization: `Bearer ${abuser.token}` },
    onResponse: (status, _body, _context, headers) => {
      statuses.push(status)
      if (status === 429 && first429 === undefined) {
        const h = headers as Record<string, unknown> | undefined
        first429 = { after: statuses.length - 1, retryAfter: h?.['retry-after'], limit: h?.['ratelimit-limit'], remaining: h?.['ratelimit-remaining'], reset: h?.['ratelimit-reset'] }
      }
    }
  }]
  await warmUp([{ connections: BIG_CONNECTIONS, requests }])
  const others = new Recorder()
  const abuserRecorder = new Recorder()
  const s = sampler()
  await s.start()
  const began = performance.now()
  const [othersResult, abuserResult] = await Promise.all([
    runLoad({ url: api.url, connections: BIG_CONNECTIONS, duration: time.long, requests, defaultRoute: 'mixed' }, others),
    runLoad({ url: api.url, connections: 1, duration: time.long, overallRate: 17, requests: abuserRequests, defaultRoute: 'abuser GET /users/:id' }, abuserRecorder)
  ])
  const wallS = (performance.now() - began) / 1000
  const samples = await s.stop()
  const ok = statuses.filter((st) => st >= 200 && st < 300).length
  const limited = statuses.filter((st) => st === 429).length
  const othersRun = record('abuse-others', 'abuse', 'abuse: the others (mixed)', BIG_CONNECTIONS, { load: summarize([othersResult.result], others, wallS), samples })
  const abuserRun = record('abuse-abuser', 'abuse', 'abuse: the abuser (standard tier, ~1,000/min)', 1, { load: summarize([abuserResult.result], abuserRecorder, wallS), samples },
    [`${statuses.length} requests: ${ok} admitted, ${limited} refused with 429; first 429 after ${String(first429?.after ?? '-')} admitted requests (bucket 60, refill 1/s); ` +
      `429 headers: Retry-After ${String(first429?.retryAfter ?? '-')}, RateLimit-Limit ${String(first429?.limit ?? '-')}, RateLimit-Remaining ${String(first429?.remaining ?? '-')}`], 17)
  abuserRun.sharedSamples = true
  const expectedAdmitted = 60 + time.long
  comparisons.push(compare({
    id: 'abuse-limited',
    label: 'abuse: abuser admitted before 429s (bucket 60 + 1/s)',
    measured: abuserRun.label,
    reference: '',
    measuredValue: ok,
    referenceValue: expectedAdmitted,
    value: ok,
    unit: 'count',
    target: { op: '<=', value: expectedAdmitted + 2 },
    note: `${limited} of ${statuses.length} refused with 429; first 429 after ${String(first429?.after ?? 'none')} requests`
  }))
  const mixed = findRun('mixed-1000')
  if (mixed !== undefined) {
    comparisons.push(compare({
      id: 'abuse-others-p99',
      label: 'abuse: others\' p99 vs mixed-1000 p99',
      measured: othersRun.label,
      reference: mixed.label,
      measuredValue: othersRun.load.latency.p99,
      referenceValue: mixed.load.latency.p99,
      value: othersRun.load.latency.p99 / mixed.load.latency.p99,
      unit: 'ratio',
      target: { op: '<=', value: 1.25 },
      note: `others' errors ${othersRun.load.errors}, non-2xx ${othersRun.load.non2xx} (mixed: ${mixed.load.errors}, ${mixed.load.non2xx}); 1.25x allows for run-to-run noise`
    }))
  }
}

async function fixedRateScenario () {
  // autocannon paces each connection with a 1 s timer, so all connections of one instance burst together at the
  // start of every second. Ten instances of 10 connections x 100 req/s, started 100 ms apart, spread the
  // arrivals over the second like real traffic; the single-instance variant shows the burst effect.
  const requests = mixedRequests(world)
  const instances = 10
  const specs = Array.from({ length: instances }, () => ({ connections: CONNECTIONS / instances, requests, overallRate: 1000 / instances, route: 'mixed' }))
  await warmUp(specs)
  const run = record('fixed-rate', 'fixed-rate', 'fixed-rate: 1,000 req/s (10 staggered instances)', CONNECTIONS, await measure(specs, 1000 / instances), [
    'the same mix as mixed-1000; 10 autocannon instances x 10 connections x 100 req/s, started 100 ms apart'
  ], 1000)
  comparisons.push(compare({
    id: 'fixed-rate-p99',
    label: 'fixed 1,000 req/s: p99',
    measured: run.label,
    reference: '',
    measuredValue: run.load.latency.p99,
    referenceValue: 25,
    value: run.load.latency.p99,
    unit: 'ms',
    target: { op: '<', value: 25 },
    note: `achieved ${run.load.rps.toFixed(0)} req/s; p50 ${run.load.latency.p50.toFixed(2)} ms, max ${run.load.latency.max.toFixed(1)} ms`
  }))
  await warmUp([{ connections: CONNECTIONS, requests, overallRate: 1000 }])
  const burst = record('fixed-rate-burst', 'fixed-rate', 'fixed-rate: 1,000 req/s (one instance, bursts each second)', CONNECTIONS,
    await measure([{ connections: CONNECTIONS, requests, overallRate: 1000, route: 'mixed' }]),
    ['autocannon overallRate 1000 over 100 connections = 10 req/s per connection, all sent at the top of each second'], 1000)
  comparisons.push(compare({
    id: 'fixed-rate-burst-p99',
    label: 'fixed 1,000 req/s in 1 s bursts: p99',
    measured: burst.label,
    reference: '',
    measuredValue: burst.load.latency.p99,
    referenceValue: 25,
    value: burst.load.latency.p99,
    unit: 'ms',
    target: undefined,
    note: `achieved ${burst.load.rps.toFixed(0)} req/s: what a burst of 100 concurrent requests costs`
  }))
}

// ---------------------------------------------------------------------------------------------------------------
// Run everything
const failures: string[] = []
// Each ceiling is measured right before the scenario it is compared with, so that load from other work on the
// machine, which comes and goes, hits both sides of a ratio alike.
const steps: Array<[string, () => Promise<void>]> = [
  ['mixed-1000', async () => { await bareBaseline(BIG_CONNECTIONS); await mixedScenario() }],
  ['post-transactions', async () => { await databaseBaselines(); await postScenario() }],
  ['list-2m', listScenario],
  ['user-cache', async () => { await bareBaseline(CONNECTIONS); await bareBaseline(CONNECTIONS, true); await redisBaseline(); await userCacheScenario() }],
  ['feed', feedScenario],
  ['abuse', abuseScenario],
  ['fixed-rate', fixedRateScenario],
  ['workers', workersScenario],
  // Last among the single-process scenarios' order: its 11,001 revocations stay in the API's memory afterwards.
  ['session-check', sessionCheckScenario]
]
try {
  for (const [id, step] of steps) {
    if (!wanted(id)) continue
    log(`--- ${id}`)
    try {
      await step()
    } catch (error) {
      failures.push(`${id}: ${error instanceof Error ? error.message : String(error)}`)
      log(`${id} failed: ${error instanceof Error ? error.stack ?? error.message : String(error)}`)
      if (api.child.exitCode !== null) break
    }
  }
} finally {
  if (!args['keep-server']) await api.stop()
}

// Targets that span scenarios.
const apiRuns = runs
const errorsTotal = apiRuns.reduce((s, r) => s + r.load.errors, 0)
const fivexx = apiRuns.reduce((s, r) => s + Object.entries(r.load.statusCodes).filter(([c]) => c.startsWith('5')).reduce((a, [, v]) => a + v, 0), 0)
comparisons.unshift(compare({
  id: 'errors',
  label: 'socket errors + timeouts + 5xx, all scenarios',
  measured: 'all scenarios',
  reference: '',
  measuredValue: errorsTotal + fivexx,
  referenceValue: 0,
  value: errorsTotal + fivexx,
  unit: 'count',
  target: { op: '==', value: 0 },
  note: `${errorsTotal} socket errors/timeouts, ${fivexx} 5xx`
}))
comparisons.splice(1, 0, compare({
  id: 'in-flight-settled',
  label: 'runs after which an *_in_flight gauge stayed above or below 0',
  measured: 'every run against the API',
  reference: '',
  measuredValue: inFlightLeaks.length,
  referenceValue: 0,
  value: inFlightLeaks.length,
  unit: 'count',
  target: { op: '==', value: 0 },
  note: inFlightLeaks.length === 0 ? 'each gauge back to 0 within 5 s of the load generator closing its connections' : inFlightLeaks.join('; ')
}))
const peakPg = Math.max(0, ...apiRuns.map((r) => r.samples?.peakPgConnections ?? 0))
comparisons.splice(2, 0, compare({
  id: 'peak-pg',
  label: 'peak PostgreSQL server connections (client backends of the bench database)',
  measured: 'max over scenarios',
  reference: '',
  measuredValue: peakPg,
  referenceValue: 20,
  value: peakPg,
  unit: 'count',
  target: { op: '<=', value: 20 },
  note: 'sampled every 200 ms on the direct connection'
}))
const post = findRun('post-transactions')
const ceiling = findBaseline('pgbench-one-statement')
const ours = findBaseline('pgbench-post-transaction')
const minimal = findBaseline('pgbench-minimal-ledger')
if (post !== undefined) {
  comparisons.splice(3, 0, compare({
    id: 'post-rps',
    label: 'POST /transactions at 1,000 connections',
    measured: post.label,
    reference: '',
    measuredValue: post.load.rps,
    referenceValue: 1200,
    value: post.load.rps,
    unit: 'req/s',
    target: { op: '>=', value: 1200 },
    note: `p99 ${post.load.latency.p99.toFixed(0)} ms`
  }))
  if (ceiling !== undefined) {
    comparisons.splice(4, 0, compare({
      id: 'post-vs-ceiling',
      label: 'POST /transactions vs pgbench one-statement ceiling',
      measured: post.label,
      reference: ceiling.label,
      measuredValue: post.load.rps,
      referenceValue: ceiling.rps,
      value: post.load.rps / ceiling.rps,
      unit: 'ratio',
      target: { op: '>=', value: 0.8 },
      note: 'pgbench: 50 clients through the same PgBouncer'
    }))
    chartPairs.unshift({ check: 'POST /transactions vs pgbench one-statement', measuredName: post.label, measured: post.load.rps, referenceName: ceiling.label, reference: ceiling.rps, target: 0.8 })
  }
  if (ours !== undefined) {
    comparisons.splice(5, 0, compare({
      id: 'post-vs-statement',
      label: 'POST /transactions vs pgbench post_transaction()',
      measured: post.label,
      reference: ours.label,
      measuredValue: post.load.rps,
      referenceValue: ours.rps,
      value: post.load.rps / ours.rps,
      unit: 'ratio',
      target: undefined,
      note: 'what HTTP, auth, validation, rate limiting and Node add to our own statement'
    }))
    cpuCompare('post-vs-statement', 'POST /transactions vs pgbench post_transaction()', runSide(post), baselineSide(ours), 'db', 'database work per money write')
    cpuCompare('post-vs-statement-stack', 'POST /transactions (whole stack) vs pgbench post_transaction() (database only)', runSide(post), baselineSide(ours), 'stack', 'what the API adds per write')
    chartPairs.splice(1, 0, { check: 'POST /transactions vs pgbench post_transaction()', measuredName: post.label, measured: post.load.rps, referenceName: ours.label, reference: ours.rps })
  }
  // At pgbench's concurrency when that run exists (issue 20 compares the two at the same concurrency).
  const postSameConcurrency = findRun('post-transactions-50') ?? post
  if (minimal !== undefined) {
    // Issue 20: the one-statement CTE is a ceiling no checked write reaches; the minimal ledger write does what any
    // transfer must (key, ordered locks, funds check, two balances, transaction and entries, foreign keys), so
    // the gap to it is what our API and our function add on top of the necessary work.
    comparisons.splice(6, 0, throughputRatio('post-vs-minimal', 'POST /transactions vs a minimal ledger write', runSide(postSameConcurrency), baselineSide(minimal), 0.6,
      'pgbench: 50 clients through the same PgBouncer, bench_minimal.transfer() on tables of its own (bench/pgbench/minimal-ledger.sql)'))
    cpuCompare('post-vs-minimal', 'POST /transactions vs a minimal ledger write', runSide(postSameConcurrency), baselineSide(minimal), 'db', 'database work per money write: post_transaction() vs the minimal function')
    chartPairs.splice(2, 0, { check: 'POST /transactions vs a minimal ledger write', measuredName: postSameConcurrency.label, measured: postSameConcurrency.load.rps, referenceName: minimal.label, reference: minimal.rps, target: 0.6 })
  }
}
if (ours !== undefined && minimal !== undefined) {
  // Both sides are pgbench, so this is the function alone: what post_transaction()'s checks, triggers, indexes and
  // outbox cost beyond the minimal write (issue 20's 1.9x database time).
  comparisons.push(throughputRatio('statement-vs-minimal', 'post_transaction() vs the minimal ledger write (both pgbench)', baselineSide(ours), baselineSide(minimal), undefined,
    'the same call shape, clients and PgBouncer; below 1: what our function does beyond the work a transfer must do'))
  cpuCompare('statement-vs-minimal', 'post_transaction() vs the minimal ledger write (both pgbench)', baselineSide(ours), baselineSide(minimal), 'db', 'database CPU per write')
}
if (ceiling !== undefined && ours !== undefined) {
  comparisons.push(compare({
    id: 'statement-vs-ceiling',
    label: 'post_transaction() vs one-statement CTE (both pgbench)',
    measured: ours.label,
    reference: ceiling.label,
    measuredValue: ours.rps,
    referenceValue: ceiling.rps,
    value: ours.rps / ceiling.rps,
    unit: 'ratio',
    target: undefined,
    note: 'above 1: PL/pgSQL caches the plans of the function\'s statements per connection, while the CTE statement is parsed and planned on every call (no prepared statements through PgBouncer 1.18)'
  }))
}
const mixed = findRun('mixed-1000')
const bareBig = findBaseline(`bare-${BIG_CONNECTIONS}`)
if (mixed !== undefined && bareBig !== undefined) {
  comparisons.push(compare({
    id: 'mixed-vs-bare',
    label: 'mixed-1000 vs bare Fastify (1,000 conns)',
    measured: mixed.label,
    reference: bareBig.label,
    measuredValue: mixed.load.rps,
    referenceValue: bareBig.rps,
    value: mixed.load.rps / bareBig.rps,
    unit: 'ratio',
    target: undefined,
    note: ''
  }))
  chartPairs.push({ check: 'mixed-1000 vs bare Fastify (1000 conns)', measuredName: mixed.label, measured: mixed.load.rps, referenceName: bareBig.label, reference: bareBig.rps })
}

failures.push(...smokeFailures(runs, baselines))

// ---------------------------------------------------------------------------------------------------------------
// Output
const date = new Date(started)
const stamp = date.toISOString().replace(/\.\d+Z$/, 'Z').replaceAll(':', '-')
let commit: string | undefined
try {
  commit = execFileSync('git', ['rev-parse', 'HEAD'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim()
} catch {}
const report: Report = {
  meta: {
    date: date.toISOString(),
    mode: quick ? 'quick' : 'full',
    commit,
    node: process.version,
    machine: { cpus: availableParallelism(), memoryGb: Math.round(totalmem() / 2 ** 30), loadavg: loadavg().map((v) => v.toFixed(2)).join(' ') },
    sizes: { ...sizes, poolUsers: seeded.pool.length },
    seedSeconds: seeded.seconds,
    durations: time,
    connections: { big: BIG_CONNECTIONS, default: CONNECTIONS },
    api: { databasePoolMax: Number(process.env.DATABASE_POOL_MAX ?? 10), rateLimitPro: 'raised to 1,000,000 (not measured)', listLimit: LIST_LIMIT, feedLimit: FEED_LIMIT },
    totalSeconds: Math.round((Date.now() - started) / 1000)
  },
  runs,
  baselines,
  comparisons,
  failures
}
const resultsDir = here('./results')
mkdirSync(resultsDir, { recursive: true })
const latencyBars: LatencyBar[] = [
  ...runs.map((r) => ({ name: r.label, kind: 'scenario' as const, p50: r.load.latency.p50, p99: r.load.latency.p99 })),
  ...baselines.filter((b) => b.latency !== undefined && Number.isFinite(b.latency.p99)).map((b) => ({ name: b.label, kind: 'baseline' as const, p50: b.latency!.p50, p99: b.latency!.p99 }))
]
const md = await writeOutputs({ ...report, chart: { pairs: chartPairs, latencies: latencyBars } }, resultsDir, stamp, { json: true, log })
console.log(md)
log(`wrote bench/results/${stamp}.{json,md,svg} in ${Math.round((Date.now() - started) / 1000)} s`)
if (args['cpu-prof']) log(`CPU profiles: ${readdirSync(cpuProfDir).map((f) => join('bench/results/profiles', f)).join(', ')}`)

redis.disconnect()
await admin.end({ timeout: 5 })
if (failures.length > 0) {
  console.error(`bench: ${failures.length} failure(s):\n${failures.map((f) => `  - ${f}`).join('\n')}`)
  process.exit(1)
}
