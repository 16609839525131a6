// What happens around the load while it runs: PostgreSQL client backends of the bench database (direct connection,
// every 200 ms), the API's resident memory (/proc/<pid>/status, a cluster primary's with its workers'), CPU seconds
// per process group (/proc/<pid>/stat,
// Redis INFO cpu), Redis INFO stats hits/misses, and the API's own /metrics (cache hits, in-flight statements,
// server-side latency per route, time per SQL statement), and round trips: Redis commands (INFO commandstats) and
// transactions of the bench database (pg_stat_database), so a scenario can show what a request costs in calls.
import { readdirSync, readFileSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import type { Redis } from 'ioredis'
import type postgres from 'postgres'
import { summarizeHistogram, type HistogramSummary } from './histogram.ts'

const CLOCK_TICKS = 100 // getconf CLK_TCK on Linux
/** The API's histogram of money writes per batch (buckets 1, 2, 4, 8, 16, 32), when it groups commits. */
export const WRITE_BATCH_SIZE = 'ledger_write_batch_size'

export interface ProcessGroups {
  apiPid: () => number | undefined
  /** PostgreSQL postmaster pid; its children are the backends. Undefined when the database is not local. */
  postmasterPid?: number | undefined
  pgbouncerPid?: number | undefined
}

export interface SampleResult {
  peakPgConnections: number
  peakApiRssMb: number
  /** CPU used during the run, in cores (CPU seconds per wall second). */
  cpu: Record<string, number>
  redis: { keyspaceHits: number, keyspaceMisses: number, hitShare: number | null }
  /** From the API's metrics: cache-aside hits and misses by cache. */
  appCache: Record<string, { hit: number, miss: number, hitShare: number | null }>
  peakDbStatementsInFlight: number
  peakHttpInFlight: number
  /** Server-side mean duration per route (ms) and count, from the request histogram sums. */
  serverRoutes: Record<string, { count: number, meanMs: number }>
  /** Mean time per SQL statement kind (ms) as the API observed it, including the wait for a pooled connection. */
  sqlStatements: Record<string, { count: number, meanMs: number }>
  /** Requests shed by @fastify/under-pressure or failing on a dependency, from ledger_dependency_errors_total. */
  dependencyErrors: Record<string, number>
  /**
   * Calls that reached the servers during the run: Redis commands by name (INFO commandstats, whole server: the
   * sampler's own INFO left out) and commits + rollbacks of the bench database (pg_stat_database, which backends
   * report when they go idle, at most about a second late; undefined when it could not be read).
   */
  roundTrips: { redisCommands: Record<string, number>, pgTransactions: number | undefined }
  /**
   * Money writes per database round trip (server-side group commit), from the API's `ledger_write_batch_size`
   * histogram; undefined when the API does not export it.
   */
  writeBatchSize?: HistogramSummary | undefined
}

/** The fields of /proc/<pid>/stat after the command name (which may contain spaces), or [] once it is gone. */
function procStat (pid: number | string): string[] {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  } catch {
    return []
  }
}
const readTicks = (pid: number) => { const f = procStat(pid); return f.length === 0 ? 0 : Number(f[11]) + Number(f[12]) }
const childrenOf = (parent: number) => readdirSync('/proc').filter((entry) => /^\d+$/.test(entry) && Number(procStat(entry)[1]) === parent).map(Number)

function machineBusyTicks (): { busy: number, total: number } {
  const values = (readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '').trim().split(/\s+/).slice(1).map(Number)
  const total = values.reduce((a, b) => a + b, 0)
  return { busy: total - (values[3] ?? 0) - (values[4] ?? 0), total }
}

/** Resident memory of a process in MB, or 0 once it is gone. */
export function rssMb (pid: number): number {
  try {
    return Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) / 1024
  } catch {
    return 0
  }
}

/** Prometheus text format to a map of `name{labels}` -> value. */
export function parseMetrics (text: string): Map<string, number> {
  const out = new Map<string, number>()
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const space = line.lastIndexOf(' ')
    out.set(line.slice(0, space), Number(line.slice(space + 1)))
  }
  return out
}

/** Each series of `name` with its labels and its increase between two scrapes. */
export function deltasOf (first: Map<string, number>, last: Map<string, number>, name: string) {
  const out: Array<{ labels: Record<string, string>, value: number }> = []
  for (const [series, value] of last) {
    if (series !== name && !series.startsWith(`${name}{`)) continue
    const labels: Record<string, string> = {}
    for (const match of series.slice(name.length + 1, -1).matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[match[1]!] = match[2]!
    out.push({ labels, value: value - (first.get(series) ?? 0) })
  }
  return out
}

const redisField = (info: string, field: string) => Number(new RegExp(`^${field}:([\\d.]+)`, 'm').exec(info)?.[1] ?? 0)

export interface SamplerOptions { admin: postgres.Sql, database: string, redis: Redis, metricsUrl?: string, metricsToken?: string, groups: ProcessGroups }

/** Starts sampling; `stop()` returns what happened between the two. */
export async function startSampler (options: SamplerOptions): Promise<{ stop: () => Promise<SampleResult> }> {
  const { admin, database, redis, metricsUrl, groups } = options
  const headers: Record<string, string> = options.metricsToken === undefined ? {} : { authorization: `Bearer ${options.metricsToken}` }
  const peak = { pg: 0, rss: 0, dbInFlight: 0, httpInFlight: 0 }
  const busy = { pg: false, metrics: false }

  const metrics = async () => {
    if (metricsUrl === undefined) return new Map<string, number>()
    try {
      return parseMetrics(await (await fetch(metricsUrl, { headers, signal: AbortSignal.timeout(2000) })).text())
    } catch {
      return new Map<string, number>()
    }
  }
  const pgTransactions = async () => {
    try {
      const [row] = await admin<{ n: string }[]>`select (xact_commit + xact_rollback)::text as n from pg_stat_database where datname = ${database}`
      return row === undefined ? undefined : Number(row.n)
    } catch {
      return undefined
    }
  }
  const snapshot = async () => {
    const [stats, cpu, commands, transactions, scraped] = await Promise.all([redis.info('stats'), redis.info('cpu'), redis.info('commandstats'), pgTransactions(), metrics()])
    const ticks: Record<string, number> = {}
    const api = groups.apiPid()
    // A node:cluster primary's workers are its children; a single process has none.
    if (api !== undefined) ticks.api = [api, ...childrenOf(api)].reduce((sum, pid) => sum + readTicks(pid), 0)
    if (groups.postmasterPid !== undefined) ticks.postgres = readTicks(groups.postmasterPid) + childrenOf(groups.postmasterPid).reduce((sum, pid) => sum + readTicks(pid), 0)
    if (groups.pgbouncerPid !== undefined) ticks.pgbouncer = readTicks(groups.pgbouncerPid)
    const benchCpu = process.cpuUsage()
    // `cmdstat_evalsha:calls=12,usec=...` lines; INFO itself left out (the sampler sends it).
    const redisCommands: Record<string, number> = {}
    for (const match of commands.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) if (match[1] !== 'info') redisCommands[match[1]!] = Number(match[2])
    return {
      at: performance.now(),
      ticks,
      machine: machineBusyTicks(),
      benchCpuUs: benchCpu.user + benchCpu.system,
      redisCpuS: redisField(cpu, 'used_cpu_sys') + redisField(cpu, 'used_cpu_user'),
      redisHits: redisField(stats, 'keyspace_hits'),
      redisMisses: redisField(stats, 'keyspace_misses'),
      redisCommands,
      pgTransactions: transactions,
      metrics: scraped
    }
  }

  const first = await snapshot()
  // A node:cluster primary's workers, looked up once a second: reading all of /proc every 200 ms would cost the
  // load generator's core more than the sample is worth.
  let apiChildren: number[] = []
  const findChildren = () => { const pid = groups.apiPid(); apiChildren = pid === undefined ? [] : childrenOf(pid) }
  findChildren()
  const timer = setInterval(() => {
    if (!busy.pg) {
      busy.pg = true
      admin<{ n: number }[]>`select count(*)::int as n from pg_stat_activity where backend_type = 'client backend' and datname = ${database}`
        .then(([row]) => { peak.pg = Math.max(peak.pg, row?.n ?? 0) }, () => {}).finally(() => { busy.pg = false })
    }
    const pid = groups.apiPid()
    if (pid !== undefined) peak.rss = Math.max(peak.rss, [pid, ...apiChildren].reduce((sum, each) => sum + rssMb(each), 0))
  }, 200)
  const slowTimer = setInterval(() => {
    findChildren()
    if (busy.metrics || metricsUrl === undefined) return
    busy.metrics = true
    metrics().then((scraped) => {
      peak.dbInFlight = Math.max(peak.dbInFlight, scraped.get('ledger_db_statements_in_flight') ?? 0)
      peak.httpInFlight = Math.max(peak.httpInFlight, scraped.get('ledger_http_requests_in_flight') ?? 0)
    }).finally(() => { busy.metrics = false }).catch(() => {})
  }, 1000)

  return {
    async stop (): Promise<SampleResult> {
      clearInterval(timer)
      clearInterval(slowTimer)
      const last = await snapshot()
      const wallS = (last.at - first.at) / 1000
      const cpu: Record<string, number> = {}
      for (const [name, value] of Object.entries(last.ticks)) cpu[name] = (value - (first.ticks[name] ?? 0)) / CLOCK_TICKS / wallS
      cpu.redis = (last.redisCpuS - first.redisCpuS) / wallS
      cpu.bench = (last.benchCpuUs - first.benchCpuUs) / 1e6 / wallS
      // /proc/stat counts every core: busy share of all cores times the number of cores = cores busy.
      const machineTotal = last.machine.total - first.machine.total
      cpu.machine = machineTotal > 0 ? (last.machine.busy - first.machine.busy) / machineTotal * availableParallelism() : 0
      cpu.others = Math.max(0, cpu.machine - Object.entries(cpu).filter(([k]) => k !== 'machine').reduce((s, [, v]) => s + v, 0))

      const deltas = (name: string) => deltasOf(first.metrics, last.metrics, name)
      const share = (hit: number, miss: number) => hit + miss > 0 ? hit / (hit + miss) : null
      const appCache: SampleResult['appCache'] = {}
      for (const { labels, value } of deltas('ledger_cache_requests_total')) {
        const entry = appCache[labels.cache ?? '?'] ??= { hit: 0, miss: 0, hitShare: null }
        entry[labels.result === 'hit' ? 'hit' : 'miss'] += value
        entry.hitShare = share(entry.hit, entry.miss)
      }
      /** Mean (ms) and count of a histogram's series grouped by `key`. */
      const grouped = (name: string, key: (labels: Record<string, string>) => string) => {
        const sums = new Map<string, { sum: number, count: number }>()
        for (const field of ['count', 'sum'] as const) {
          for (const { labels, value } of deltas(`${name}_${field}`)) {
            const entry = sums.get(key(labels)) ?? { sum: 0, count: 0 }
            entry[field] += value
            sums.set(key(labels), entry)
          }
        }
        return Object.fromEntries([...sums].filter(([, v]) => v.count > 0).map(([k, { sum, count }]) => [k, { count, meanMs: sum / count * 1000 }]))
      }
      const dependencyErrors = Object.fromEntries(deltas('ledger_dependency_errors_total').filter(({ value }) => value > 0)
        .map(({ labels, value }) => [`${labels.dependency}/${labels.operation}`, value]))
      const redisCommands = Object.fromEntries(Object.entries(last.redisCommands).map(([command, calls]) => [command, calls - (first.redisCommands[command] ?? 0)]).filter(([, delta]) => Number(delta) > 0))
      const hits = last.redisHits - first.redisHits
      const misses = last.redisMisses - first.redisMisses
      return {
        peakPgConnections: peak.pg,
        peakApiRssMb: peak.rss,
        cpu,
        redis: { keyspaceHits: hits, keyspaceMisses: misses, hitShare: share(hits, misses) },
        appCache,
        peakDbStatementsInFlight: peak.dbInFlight,
        peakHttpInFlight: peak.httpInFlight,
        serverRoutes: grouped('ledger_http_request_duration_seconds', (l) => `${l.method} ${l.route} ${l.status_code}`),
        sqlStatements: grouped('ledger_db_query_duration_seconds', (l) => `${l.statement}${l.outcome === 'ok' ? '' : ` (${l.outcome})`}`),
        dependencyErrors,
        writeBatchSize: summarizeHistogram(deltas(`${WRITE_BATCH_SIZE}_bucket`), deltas(`${WRITE_BATCH_SIZE}_sum`), deltas(`${WRITE_BATCH_SIZE}_count`)),
        roundTrips: { redisCommands, pgTransactions: first.pgTransactions === undefined || last.pgTransactions === undefined ? undefined : last.pgTransactions - first.pgTransactions }
      }
    }
  }
}
