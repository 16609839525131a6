// Same-run baselines, each measured right before the scenario it is compared with: a bare Fastify route (with or
// without the API's rate-limit script in Redis), pgbench through the same PgBouncer (bench/pgbench/*.sql), and
// redis-benchmark GET.
import { fileURLToPath } from 'node:url'
import postgres from 'postgres'
import { withUserOf } from '../../scripts/local-stack.ts'
import { PGBENCH_CLIENTS, sample, type Bench } from './context.ts'
import { runLoad, summarize } from './load.ts'
import { findPgbench, runPgbench, runRedisBenchmark, startNodeServer, type PgbenchResult } from './processes.ts'

const here = (path: string) => fileURLToPath(new URL(path, import.meta.url))

export async function bareBaseline (b: Bench, connections: number, withLimiter = false) {
  const bare = await startNodeServer(here('../bare-server.ts'), { ...process.env, BENCH_SERVER_MAX_S: '600', ...(withLimiter ? { BENCH_BARE_REDIS_URL: b.env.redisUrl } : {}) }, { ready: false })
  b.children.add(bare)
  try {
    const requests = [{ method: 'GET' as const, path: '/' }]
    await runLoad(bare.url, { connections, requests, route: 'warm-up', duration: b.time.warm })
    const s = await sample(b, { pid: bare.pid })
    const { result, recorder, wallS } = await runLoad(bare.url, { connections, requests, route: 'GET /', duration: b.time.pair })
    const load = summarize([result], recorder, wallS)
    const samples = await s.stop()
    b.baselines.push({
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
    b.log(`baseline bare Fastify${withLimiter ? ' + limiter' : ''} @${connections}: ${load.rps.toFixed(0)} req/s, p99 ${load.latency.p99.toFixed(2)} ms`)
  } finally {
    await bare.stop()
    b.children.delete(bare)
  }
}

async function pgbenchBaseline (b: Bench, id: string, label: string, run: () => Promise<PgbenchResult>) {
  const s = await sample(b, { pid: undefined })
  const result = await run()
  const samples = await s.stop()
  b.baselines.push({
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
  b.log(`baseline ${label}: ${result.tps.toFixed(0)} tps, p50 ${result.latency.p50.toFixed(2)} ms, p99 ${result.latency.p99.toFixed(2)} ms, failed ${result.failed}, retried ${result.retried}, exit ${result.exitCode}`)
  if (result.tps === 0) b.log(`pgbench output:\n${result.output}`)
}

/** The one-statement ceiling, our post_transaction() statement and the minimal ledger write, all by pgbench. */
export async function databaseBaselines (b: Bench) {
  const pgbench = findPgbench()
  if (pgbench === undefined) {
    b.log('pgbench not found (set BENCH_PGBENCH): database baselines skipped')
    return
  }
  const options = { clients: PGBENCH_CLIENTS, threads: 2, seconds: b.time.pgbench, defines: { users: b.seeded.pool.length } }
  // The ceiling and the minimal write touch tables the API's role may not write: they run as the owner, through PgBouncer.
  const asOwner = withUserOf(b.env.databaseUrl, b.env.directUrl)
  await pgbenchBaseline(b, 'pgbench-one-statement', 'pgbench: transfer as one CTE statement (ceiling)',
    () => runPgbench(pgbench, asOwner, here('../pgbench/transfer-one-statement.sql'), options))
  await pgbenchBaseline(b, 'pgbench-post-transaction', 'pgbench: select * from post_transaction(...) (our statement)',
    () => runPgbench(pgbench, b.env.databaseUrl, here('../pgbench/post-transaction.sql'), options))
  // The minimal ledger write lives in a schema of its own, loaded after the seed it takes its accounts from and
  // rebuilt on every run like the database. A project file of several statements, sent as it is (simple protocol).
  const owner = postgres(b.env.directUrl, { max: 1, onnotice: () => {} })
  try {
    await owner.file(here('../pgbench/minimal-ledger.sql'))
    // As the seed does for the product's tables: no hint-bit writes or autovacuum inside the measured run.
    await owner`vacuum analyze bench_minimal.accounts`
  } finally {
    await owner.end({ timeout: 5 })
  }
  await pgbenchBaseline(b, 'pgbench-minimal-ledger', 'pgbench: select * from bench_minimal.transfer(...) (minimal ledger write)',
    () => runPgbench(pgbench, asOwner, here('../pgbench/minimal-ledger-transfer.sql'), options))
}

export async function redisBaseline (b: Bench) {
  const result = await runRedisBenchmark(b.env.redisUrl, 100_000).catch(() => undefined)
  if (result === undefined) {
    b.log('redis-benchmark not available: Redis baseline skipped')
    return
  }
  b.baselines.push({
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
  b.log(`baseline redis GET: ${result.rps.toFixed(0)} req/s, p50 ${result.p50} ms`)
}
