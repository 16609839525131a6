// `npm run bench [-- --quick] [--only id,id] [--cpu-prof] [--keep-server] [--soak <minutes>]`: seeds a dedicated database, starts the
// API (bench/server.ts) in production mode as a separate process, runs the scenarios (bench/scenarios/, each next to
// the same-run baselines it is compared with), then prints Markdown tables, writes bench/results/<date>.{json,md}
// (git-ignored) and, after a run of every scenario, the summary to docs/bench-latest.md.
// `--quick` is the CI smoke test: small data, short runs, and a non-zero exit on any socket error, timeout or 5xx.
// `--soak <minutes>` keeps first-minute's load going that long afterwards and reports whether RSS settles.
// `--cpu-prof` writes a CPU profile of every API process the bench starts to bench/results/profiles/.
// `node bench/run.ts --render bench/results/<stamp>.json` redraws <stamp>.md from a saved run.
//
// Environment: DATABASE_URL / DATABASE_DIRECT_URL / REDIS_URL (else the project-local stack is brought up),
// BENCH_DATABASE (ledger_bench), BENCH_REDIS_DB (3), BENCH_PGBENCH (path to pgbench), BENCH_SERVER_NODE_ARGS (below), BENCH_FIRST_MINUTE_CONNECTIONS
// (1000: first-minute's connections, each sending 1 req/s), BENCH_FIRST_MINUTE_IDLE_S (first-minute's idle period:
// 660 s, or 35 s with --quick).
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { availableParallelism, loadavg, totalmem } from 'node:os'
import { basename, dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { Redis } from 'ioredis'
import postgres from 'postgres'
import { API_NODE_FLAGS } from '../plugins/http/config.ts'
import { BIG_CONNECTIONS, CONNECTIONS, FRESH_PROCESS_WARM_S, goal, warmUp, type Bench, type Scenario } from './lib/context.ts'
import { startNodeServer } from './lib/processes.ts'
import { markdown, smokeFailures, writeReport, type Report } from './lib/report.ts'
import { recreateDatabase, resolveEnv, seed, type SeedSizes } from './lib/setup.ts'
import { mixedRequests, signClientTokens, signTokens } from './lib/traffic.ts'
import { scenario as abuse } from './scenarios/abuse.ts'
import { FEED_LIMIT, scenario as feed } from './scenarios/feed.ts'
import { scenario as firstMinute } from './scenarios/first-minute.ts'
import { scenario as fixedRate } from './scenarios/fixed-rate.ts'
import { LIST_LIMIT, scenario as list } from './scenarios/list-2m.ts'
import { scenario as mixed } from './scenarios/mixed-1000.ts'
import { scenario as post } from './scenarios/post-transactions.ts'
import { scenario as sessionCheck } from './scenarios/session-check.ts'
import { scenario as userCache } from './scenarios/user-cache.ts'
import { scenario as workers } from './scenarios/workers.ts'

// In this order. session-check comes last among those that use the shared API process: its 11,001 revocations stay in
// that process's memory afterwards. first-minute starts processes of its own.
const scenarios: Scenario[] = [mixed, post, list, userCache, feed, abuse, fixedRate, workers, sessionCheck, firstMinute]

const here = (path: string) => fileURLToPath(new URL(path, import.meta.url))
const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    only: { type: 'string' },
    'cpu-prof': { type: 'boolean', default: false },
    'keep-server': { type: 'boolean', default: false },
    soak: { type: 'string' },
    render: { type: 'string' }
  }
})

if (args.render !== undefined) {
  const file = args.render
  console.log(writeReport(JSON.parse(readFileSync(file, 'utf8')) as Report, dirname(file), basename(file, '.json'), false))
  process.exit(0)
}
const only = args.only?.split(',')
const unknown = only?.filter((id) => !scenarios.some((s) => s.id === id)) ?? []
if (unknown.length > 0) {
  console.error(`bench: unknown scenario ${unknown.join(', ')}; scenarios: ${scenarios.map((s) => s.id).join(', ')}`)
  process.exit(2)
}

const quick = args.quick
const soakMinutes = args.soak === undefined ? undefined : Number(args.soak)
if (soakMinutes !== undefined && !(Number.isInteger(soakMinutes) && soakMinutes >= 2)) {
  console.error('bench: --soak takes whole minutes, at least 2')
  process.exit(2)
}
const started = Date.now()
const log = (line: string) => console.error(`[bench +${((Date.now() - started) / 1000).toFixed(0).padStart(4)} s] ${line}`)
const sizes: SeedSizes = quick
  ? { users: 5000, bigUserTransactions: 200_000, smallUserTransactions: 50, posts: 20_000, profileUsers: 12_000 }
  : { users: 5000, bigUserTransactions: 2_000_000, smallUserTransactions: 50, posts: 200_000, profileUsers: 60_000 }
const time = quick ? { long: 10, pair: 5, warm: 2, pgbench: 5 } : { long: 60, pair: 30, warm: 5, pgbench: 30 }

// ---------------------------------------------------------------------------------------------------------------
// Set-up: data, the API, the callers' tokens
const redisDb = Number(process.env.BENCH_REDIS_DB ?? 3)
const env = resolveEnv(process.env.BENCH_DATABASE ?? 'ledger_bench', redisDb, log)
log(`mode ${quick ? 'quick' : 'full'}; database ${env.database} (recreated), redis db ${redisDb}`)
await recreateDatabase(env)
const seeded = await seed(env, sizes, log)
const redis = new Redis(env.redisUrl, { lazyConnect: false, maxRetriesPerRequest: 2 })
await redis.flushdb()
const admin = postgres(env.adminUrl, { max: 1, onnotice: () => {}, idle_timeout: 30 })

const jwt = { secret: randomBytes(48).toString('base64url'), issuer: 'ledger-api', audience: 'ledger-api', ttlSeconds: 3600 }
// In production /metrics on the public port needs a token (the sampler scrapes it there).
const metricsToken = randomBytes(24).toString('hex')
const serverEnv: NodeJS.ProcessEnv = {
  ...process.env,
  NODE_ENV: 'production',
  LOG_LEVEL: 'warn',
  JWT_SECRET: jwt.secret,
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
const cpuProfDir = here('./results/profiles')
log('starting the API: node bench/server.ts (NODE_ENV=production, LOG_LEVEL=warn)')
// Every API process the bench starts runs with the production V8 flags, and BENCH_SERVER_NODE_ARGS (space-separated)
// adds more, for experiments with flags NODE_OPTIONS does not take.
const extraNodeArgs = (process.env.BENCH_SERVER_NODE_ARGS ?? '').split(' ').filter((arg) => arg !== '')
const serverNodeArgs = [...API_NODE_FLAGS, ...extraNodeArgs, ...(args['cpu-prof'] ? ['--cpu-prof', `--cpu-prof-dir=${cpuProfDir}`] : [])]
const api = await startNodeServer(here('./server.ts'), serverEnv, { nodeArgs: serverNodeArgs })
log(`API ready at ${api.url} (pid ${api.pid})`)

const tokens = await signTokens(jwt, [
  ...seeded.pool.map((id) => ({ id, tier: 'pro' as const })),
  ...[seeded.abuserId, seeded.bigUserId, seeded.smallUserId].map((id, i) => ({ id, tier: i === 0 ? 'standard' as const : 'pro' as const }))
])
const [abuser, bigUser, smallUser] = [seeded.abuserId, seeded.bigUserId, seeded.smallUserId].map((id, i) => ({ id, token: tokens[seeded.pool.length + i]! }))
const callers = seeded.pool.map((id, i) => ({ id, token: tokens[i]! }))
// Deposits and withdrawals come from the seeded settlement client, as in production; users only transfer.
const [funderToken] = await signClientTokens(jwt, [{ id: seeded.clientId, scopes: ['funds:write'] }])
const world = { callers, funder: { id: seeded.clientId, token: funderToken! }, keyPrefix: `bench-${Date.now().toString(36)}`, keys: 0 }
const results = { runs: [], baselines: [], comparisons: [], inFlightLeaks: [] }
const bench: Bench = { quick, sizes, time, soakMinutes, env, seeded, admin, redis, api, serverEnv, serverNodeArgs, jwt, metricsToken, log, callers, world, ...results, abuser: abuser!, bigUser: bigUser!, smallUser: smallUser!, children: new Set([api]) }

let shuttingDown = false
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    if (shuttingDown) return
    shuttingDown = true
    log(`${signal}: stopping child processes`)
    Promise.allSettled([...bench.children].map((child) => child.stop())).finally(() => process.exit(130)).catch(() => {})
  })
}

log(`warming the new API process: the mixed load at ${BIG_CONNECTIONS} connections for ${FRESH_PROCESS_WARM_S} s`)
await warmUp(bench, [{ connections: BIG_CONNECTIONS, requests: mixedRequests(world) }], api.url, FRESH_PROCESS_WARM_S)

// ---------------------------------------------------------------------------------------------------------------
// The scenarios
const failures: string[] = []
try {
  for (const scenario of scenarios) {
    if (only !== undefined && !only.includes(scenario.id)) continue
    log(`--- ${scenario.id}`)
    try {
      await scenario.run(bench)
    } catch (error) {
      failures.push(`${scenario.id}: ${error instanceof Error ? error.message : String(error)}`)
      log(`${scenario.id} failed: ${error instanceof Error ? error.stack ?? error.message : String(error)}`)
      if (api.child.exitCode !== null) break
    }
  }
} finally {
  if (!args['keep-server']) await api.stop()
}

// Checks over every run against the API, first in the table.
const scenarioChecks = bench.comparisons.splice(0)
const fivexx = bench.runs.reduce((s, r) => s + Object.entries(r.load.statusCodes).filter(([c]) => c.startsWith('5')).reduce((a, [, v]) => a + v, 0), 0)
const errors = bench.runs.reduce((s, r) => s + r.load.errors, 0)
goal(bench, { id: 'errors', label: 'socket errors + timeouts + 5xx, all scenarios', measured: 'all scenarios', value: errors + fivexx, unit: 'count', target: { op: '==', value: 0 }, note: `${errors} socket errors/timeouts, ${fivexx} 5xx` })
goal(bench, {
  id: 'in-flight-settled',
  label: 'runs after which an *_in_flight gauge stayed above or below 0',
  measured: 'every run against the API',
  value: bench.inFlightLeaks.length,
  unit: 'count',
  target: { op: '==', value: 0 },
  note: bench.inFlightLeaks.length === 0 ? 'each gauge back to 0 within 5 s of the load generator closing its connections' : bench.inFlightLeaks.join('; ')
})
goal(bench, {
  id: 'peak-pg',
  label: 'peak PostgreSQL server connections (client backends of the bench database)',
  measured: 'max over scenarios',
  value: Math.max(0, ...bench.runs.map((r) => r.samples?.peakPgConnections ?? 0)),
  unit: 'count',
  target: { op: '<=', value: 20 },
  note: 'sampled every 200 ms on the direct connection'
})
bench.comparisons.push(...scenarioChecks)
failures.push(...smokeFailures(bench.runs, bench.baselines))

// ---------------------------------------------------------------------------------------------------------------
// The report
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
  runs: bench.runs,
  baselines: bench.baselines,
  comparisons: bench.comparisons,
  failures
}
mkdirSync(here('./results'), { recursive: true })
console.log(writeReport(report, here('./results'), stamp))
log(`wrote bench/results/${stamp}.{json,md} in ${Math.round((Date.now() - started) / 1000)} s`)
if (only === undefined) {
  writeFileSync(here('../docs/bench-latest.md'), '# Latest benchmark run\n\n' +
    `Written by \`npm run bench${quick ? ' -- --quick' : ''}\` (bench/run.ts) after a run of every scenario; the full tables and every number ` +
    'are in bench/results/ (git-ignored) on the machine that ran it. Scenarios and checks: bench/scenarios/.\n\n' + markdown(report, true))
  log('wrote docs/bench-latest.md')
}
if (args['cpu-prof']) log(`CPU profiles: ${readdirSync(cpuProfDir).map((f) => join('bench/results/profiles', f)).join(', ')}`)

redis.disconnect()
await admin.end({ timeout: 5 })
if (failures.length > 0) {
  console.error(`bench: ${failures.length} failure(s):\n${failures.map((f) => `  - ${f}`).join('\n')}`)
  process.exit(1)
}
