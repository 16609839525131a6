// Same-run baselines, each measured right before the scenario it is compared with: a bare Fastify route (with or
// without the API's rate-limit script in Redis), pgbench through the same PgBouncer (bench/pgbench/*.sql), and
// redis-benchmark GET.
import { execFile } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import postgres from 'postgres'
import { withUserOf } from '../../scripts/local-stack.ts'
import { PGBENCH_CLIENTS, sample, type Bench } from './context.ts'
import { percentiles, runLoad, summarize } from './load.ts'
import { startNodeServer } from './processes.ts'
import type { BaselineRecord } from './report.ts'

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

function run (file: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs: number): Promise<{ code: number, stdout: string, stderr: string }> {
  return new Promise((resolve) => {
    execFile(file, args, { env, timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1, stdout, stderr })
    })
  })
}

function findPgbench (): string | undefined {
  if (process.env.BENCH_PGBENCH) return process.env.BENCH_PGBENCH
  const root = '/usr/lib/postgresql'
  const versions = existsSync(root) ? readdirSync(root).filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a)) : []
  const dirs = [...(process.env.PATH ?? '').split(':').filter((dir) => dir !== ''), ...versions.map((version) => join(root, version, 'bin'))]
  return dirs.map((dir) => join(dir, 'pgbench')).find((candidate) => existsSync(candidate))
}

/**
 * pgbench with a script of bench/pgbench/ through `url` (PgBouncer), simple protocol, bounded by -T, with a
 * per-transaction log for the percentiles, sampled like a scenario run.
 */
async function pgbenchBaseline (b: Bench, pgbench: string, id: string, label: string, url: string, script: string): Promise<BaselineRecord> {
  const parsed = new URL(url)
  const logDir = mkdtempSync(join(tmpdir(), 'ledger-pgbench-'))
  const s = await sample(b, { pid: undefined })
  try {
    const args = [
      '-h', parsed.hostname, '-p', parsed.port || '5432', '-U', decodeURIComponent(parsed.username), '-n', '-M', 'simple',
      '-c', String(PGBENCH_CLIENTS), '-j', '2', '-T', String(b.time.pgbench), '--max-tries=10', '-l', `--log-prefix=${join(logDir, 'pgbench')}`,
      '-f', here(`../pgbench/${script}`), '-D', `users=${b.seeded.pool.length}`, decodeURIComponent(parsed.pathname.slice(1))
    ]
    const env = { ...process.env, PGPASSWORD: decodeURIComponent(parsed.password), PGCONNECT_TIMEOUT: '10' }
    const { code, stdout, stderr } = await run(pgbench, args, env, (b.time.pgbench + 60) * 1000)
    const samples = await s.stop()
    const number = (pattern: RegExp) => Number(pattern.exec(stdout)?.[1] ?? 0)
    // Log lines: client_id transaction_no time(us) script_no epoch us ...; failed transactions log a word instead of time.
    const latencies = readdirSync(logDir).flatMap((file) => readFileSync(join(logDir, file), 'utf8').split('\n'))
      .map((line) => Number(line.split(' ')[2]) / 1000).filter((ms) => Number.isFinite(ms))
    const tps = number(/tps = ([\d.]+)/)
    const failed = number(/number of failed transactions: (\d+)/)
    const retried = number(/number of transactions retried: (\d+)/)
    const latency = percentiles(latencies)
    const details = { transactions: number(/number of transactions actually processed: (\d+)/), failed, retried, exitCode: code, script: `bench/pgbench/${script}` }
    const record: BaselineRecord = { id, label, tool: 'pgbench', connections: PGBENCH_CLIENTS, rps: tps, latency, errors: failed, samples, details }
    b.baselines.push(record)
    b.log(`baseline ${label}: ${tps.toFixed(0)} tps, p50 ${latency.p50.toFixed(2)} ms, p99 ${latency.p99.toFixed(2)} ms, failed ${failed}, retried ${retried}, exit ${code}`)
    if (tps === 0) b.log(`pgbench output:\n${stdout}\n${stderr}`)
    return record
  } finally {
    rmSync(logDir, { recursive: true, force: true })
  }
}

/** The one-statement ceiling, our post_transaction() statement and the minimal ledger write, all by pgbench. */
export async function databaseBaselines (b: Bench) {
  const pgbench = findPgbench()
  if (pgbench === undefined) {
    b.log('pgbench not found (set BENCH_PGBENCH): database baselines skipped')
    return
  }
  // The ceiling and the minimal write touch tables the API's role may not write: they run as the owner, through PgBouncer.
  const asOwner = withUserOf(b.env.databaseUrl, b.env.directUrl)
  await pgbenchBaseline(b, pgbench, 'pgbench-one-statement', 'pgbench: transfer as one CTE statement (ceiling)', asOwner, 'transfer-one-statement.sql')
  await pgbenchBaseline(b, pgbench, 'pgbench-post-transaction', 'pgbench: select * from post_transaction(...) (our statement)', b.env.databaseUrl, 'post-transaction.sql')
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
  await minimalLedgerBaseline(b, 'pgbench-minimal-ledger', 'pgbench: select * from bench_minimal.transfer(...) (minimal ledger write)')
}

/**
 * The minimal ledger write once more (its schema is loaded by databaseBaselines), for a comparison that pairs it with
 * a run right next to it. Undefined without pgbench.
 */
export async function minimalLedgerBaseline (b: Bench, id: string, label: string): Promise<BaselineRecord | undefined> {
  const pgbench = findPgbench()
  if (pgbench === undefined) return undefined
  return await pgbenchBaseline(b, pgbench, id, label, withUserOf(b.env.databaseUrl, b.env.directUrl), 'minimal-ledger-transfer.sql')
}

export async function redisBaseline (b: Bench) {
  const parsed = new URL(b.env.redisUrl)
  const args = ['-h', parsed.hostname, '-p', parsed.port || '6379', '-t', 'get', '-n', '100000', '-q']
  if (parsed.password !== '') args.push('-a', decodeURIComponent(parsed.password), '--no-auth-warning')
  const { code, stdout, stderr } = await run('redis-benchmark', args, process.env, 120_000)
  if (code !== 0 && stdout === '') {
    b.log('redis-benchmark not available: Redis baseline skipped')
    return
  }
  // "GET: 98039.22 requests per second, p50=0.255 msec" (the progress lines before it end in \r).
  const line = stdout.split(/[\r\n]/).filter((l) => l.startsWith('GET:')).at(-1) ?? ''
  const rps = Number(/GET: ([\d.]+) requests per second/.exec(line)?.[1] ?? 0)
  const p50 = Number(/p50=([\d.]+) msec/.exec(line)?.[1] ?? 0)
  b.baselines.push({
    id: 'redis-get',
    label: 'redis-benchmark -t get -n 100000 (50 clients)',
    tool: 'redis-benchmark',
    connections: 50,
    rps,
    latency: { count: 100_000, mean: p50, p50, p90: p50, p99: Number.NaN, max: Number.NaN },
    errors: 0,
    samples: undefined,
    details: { output: `${line || stdout}${stderr}`.trim() }
  })
  b.log(`baseline redis GET: ${rps.toFixed(0)} req/s, p50 ${p50} ms`)
}
