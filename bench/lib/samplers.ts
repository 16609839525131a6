// What happens around the load while it runs: PostgreSQL client backends of the bench database (direct connection,
// every 200 ms), the API's resident memory (/proc/<pid>/status), CPU seconds per process group (/proc/<pid>/stat,
// Redis INFO cpu), Redis INFO stats hits/misses, and the API's own /metrics (cache hits, in-flight statements,
// server-side latency per route, time per SQL statement), and round trips: Redis commands (INFO commandstats) and
// transactions of the bench database (pg_stat_database), so a scenario can show what a request costs in calls.
import { readdirSync, readFileSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import type { Redis } from 'ioredis'
import type postgres from 'postgres'

const CLOCK_TICKS = 100 // getconf CLK_TCK on Linux

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
}

function readTicks (pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // The command name may contain spaces; the fields after its closing parenthesis are fixed.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return Number(fields[11]) + Number(fields[12])
  } catch {
    return 0
  }
}

function childrenOf (parent: number): number[] {
  const pids: number[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      if (Number(fields[1]) === parent) pids.push(Number(entry))
    } catch {}
  }
  return pids
}

function machineBusyTicks (): { busy: number, total: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? ''
  const values = line.trim().split(/\s+/).slice(1).map(Number)
  const total = values.reduce((a, b) => a + b, 0)
  const idle = (values[3] ?? 0) + (values[4] ?? 0)
  return { busy: total - idle, total }
}

function rssMb (pid: number): number {
  try {
    const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return match?.[1] === undefined ? 0 : Number(match[1]) / 1024
  } catch {
    return 0
  }
}

/** Prometheus text format to a map of `name{labels}` -> value (only what this bench reads). */
export function parseMetrics (text: string): Map<string, number> {
  const out = new Map<string, number>()
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const space = line.lastIndexOf(' ')
    out.set(line.slice(0, space), Number(line.slice(space + 1)))
  }
  return out
}

function labelsOf (series: string): Record<string, string> {
  const labels: Record<string, string> = {}
  const open = series.indexOf('{')
  if (open < 0) return labels
  for (const match of series.slice(open + 1, -1).matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[match[1]!] = match[2]!
  return labels
}

/** Each series of `name` with its increase between two scrapes. */
function deltasOf (first: Map<string, number>, last: Map<string, number>, name: string): Array<{ labels: Record<string, string>, value: number }> {
  const out = []
  for (const [series, value] of last) {
    if (series === name || series.startsWith(`${name}{`)) out.push({ labels: labelsOf(series), value: value - (first.get(series) ?? 0) })
  }
  return out
}

interface Snapshot {
  at: number
  ticks: Record<string, number>
  machine: { busy: number, total: number }
  benchCpuUs: number
  redisCpuS: number
  redisHits: number
  redisMisses: number
  redisCommands: Record<string, number>
  pgTransactions: number | undefined
  metrics: Map<string, number>
}

/** `cmdstat_evalsha:calls=12,usec=...` lines to calls by command (INFO itself left out: the sampler sends it). */
function redisCommandCalls (info: string): Record<string, number> {
  const calls: Record<string, number> = {}
  for (const match of info.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) if (match[1] !== 'info') calls[match[1]!] = Number(match[2])
  return calls
}

function redisField (info: string, field: string): number {
  const match = new RegExp(`^${field}:([\\d.]+)`, 'm').exec(info)
  return match?.[1] === undefined ? 0 : Number(match[1])
}

export class Sampler {
  private timer: NodeJS.Timeout | undefined
  private slowTimer: NodeJS.Timeout | undefined
  private peakPg = 0
  private peakRss = 0
  private peakDbInFlight = 0
  private peakHttpInFlight = 0
  private pgBusy = false
  private metricsBusy = false
  private first: Snapshot | undefined
  private readonly admin: postgres.Sql
  private readonly database: string
  private readonly redis: Redis
  private readonly metricsUrl: string | undefined
  private readonly metricsHeaders: Record<string, string>
  private readonly groups: ProcessGroups

  constructor (options: { admin: postgres.Sql, database: string, redis: Redis, metricsUrl?: string, metricsToken?: string, groups: ProcessGroups }) {
    this.admin = options.admin
    this.database = options.database
    this.redis = options.redis
    this.metricsUrl = options.metricsUrl
    this.metricsHeaders = options.metricsToken === undefined ? {} : { authorization: `Bearer ${options.metricsToken}` }
    this.groups = options.groups
  }

  private ticks (): Record<string, number> {
    const ticks: Record<string, number> = {}
    const api = this.groups.apiPid()
    if (api !== undefined) ticks.api = readTicks(api)
    const postmaster = this.groups.postmasterPid
    if (postmaster !== undefined) {
      ticks.postgres = readTicks(postmaster) + childrenOf(postmaster).reduce((sum, pid) => sum + readTicks(pid), 0)
    }
    if (this.groups.pgbouncerPid !== undefined) ticks.pgbouncer = readTicks(this.groups.pgbouncerPid)
    return ticks
  }

  private async metrics (): Promise<Map<string, number>> {
    if (this.metricsUrl === undefined) return new Map()
    try {
      const response = await fetch(this.metricsUrl, { headers: this.metricsHeaders, signal: AbortSignal.timeout(2000) })
      return parseMetrics(await response.text())
    } catch {
      return new Map()
    }
  }

  private async snapshot (): Promise<Snapshot> {
    const [stats, cpu, commands, pgTransactions, metrics] = await Promise.all([
      this.redis.info('stats'), this.redis.info('cpu'), this.redis.info('commandstats'), this.pgTransactions(), this.metrics()
    ])
    return {
      at: performance.now(),
      ticks: this.ticks(),
      machine: machineBusyTicks(),
      benchCpuUs: process.cpuUsage().user + process.cpuUsage().system,
      redisCpuS: redisField(cpu, 'used_cpu_sys') + redisField(cpu, 'used_cpu_user'),
      redisHits: redisField(stats, 'keyspace_hits'),
      redisMisses: redisField(stats, 'keyspace_misses'),
      redisCommands: redisCommandCalls(commands),
      pgTransactions,
      metrics
    }
  }

  private async pgTransactions (): Promise<number | undefined> {
    try {
      const [row] = await this.admin<{ n: string }[]>`
        select (xact_commit + xact_rollback)::text as n from pg_stat_database where datname = ${this.database}`
      return row === undefined ? undefined : Number(row.n)
    } catch {
      return undefined
    }
  }

  private async samplePg () {
    if (this.pgBusy) return
    this.pgBusy = true
    try {
      const [row] = await this.admin<{ n: number }[]>`
        select count(*)::int as n from pg_stat_activity
         where backend_type = 'client backend' and datname = ${this.database}`
      this.peakPg = Math.max(this.peakPg, row?.n ?? 0)
    } catch {} finally {
      this.pgBusy = false
    }
  }

  private async sampleMetrics () {
    if (this.metricsBusy || this.metricsUrl === undefined) return
    this.metricsBusy = true
    try {
      const metrics = await this.metrics()
      this.peakDbInFlight = Math.max(this.peakDbInFlight, metrics.get('ledger_db_statements_in_flight') ?? 0)
      this.peakHttpInFlight = Math.max(this.peakHttpInFlight, metrics.get('ledger_http_requests_in_flight') ?? 0)
    } finally {
      this.metricsBusy = false
    }
  }

  async start () {
    this.first = await this.snapshot()
    this.timer = setInterval(() => {
      this.samplePg().catch(() => {})
      const pid = this.groups.apiPid()
      if (pid !== undefined) this.peakRss = Math.max(this.peakRss, rssMb(pid))
    }, 200)
    this.slowTimer = setInterval(() => { this.sampleMetrics().catch(() => {}) }, 1000)
  }

  async stop (): Promise<SampleResult> {
    clearInterval(this.timer)
    clearInterval(this.slowTimer)
    const first = this.first
    if (first === undefined) throw new Error('Sampler.stop() before start()')
    const last = await this.snapshot()
    const wallS = (last.at - first.at) / 1000
    const cores = (ticks: number) => ticks / CLOCK_TICKS / wallS
    const cpu: Record<string, number> = {}
    for (const [name, value] of Object.entries(last.ticks)) cpu[name] = cores(value - (first.ticks[name] ?? 0))
    cpu.redis = (last.redisCpuS - first.redisCpuS) / wallS
    cpu.bench = (last.benchCpuUs - first.benchCpuUs) / 1e6 / wallS
    const machineTotal = last.machine.total - first.machine.total
    // /proc/stat counts every core: busy share of all cores times the number of cores = cores busy.
    cpu.machine = machineTotal > 0 ? (last.machine.busy - first.machine.busy) / machineTotal * availableParallelism() : 0
    cpu.others = Math.max(0, cpu.machine - Object.entries(cpu).filter(([k]) => k !== 'machine').reduce((s, [, v]) => s + v, 0))

    const deltas = (name: string) => deltasOf(first.metrics, last.metrics, name)
    const appCache: SampleResult['appCache'] = {}
    for (const { labels, value } of deltas('ledger_cache_requests_total')) {
      const cache = labels.cache ?? '?'
      const entry = appCache[cache] ?? { hit: 0, miss: 0, hitShare: null }
      if (labels.result === 'hit') entry.hit += value
      else entry.miss += value
      entry.hitShare = entry.hit + entry.miss > 0 ? entry.hit / (entry.hit + entry.miss) : null
      appCache[cache] = entry
    }

    const grouped = (name: string, key: (labels: Record<string, string>) => string) => {
      const sums = new Map<string, { sum: number, count: number }>()
      for (const [suffix, field] of [['_count', 'count'], ['_sum', 'sum']] as const) {
        for (const { labels, value } of deltas(`${name}${suffix}`)) {
          const k = key(labels)
          const entry = sums.get(k) ?? { sum: 0, count: 0 }
          entry[field] += value
          sums.set(k, entry)
        }
      }
      const out: Record<string, { count: number, meanMs: number }> = {}
      for (const [k, { sum, count }] of sums) if (count > 0) out[k] = { count, meanMs: sum / count * 1000 }
      return out
    }

    const dependencyErrors: Record<string, number> = {}
    for (const { labels, value } of deltas('ledger_dependency_errors_total')) {
      if (value > 0) dependencyErrors[`${labels.dependency}/${labels.operation}`] = value
    }

    const redisCommands: Record<string, number> = {}
    for (const [command, calls] of Object.entries(last.redisCommands)) {
      const delta = calls - (first.redisCommands[command] ?? 0)
      if (delta > 0) redisCommands[command] = delta
    }
    const pgTransactions = first.pgTransactions === undefined || last.pgTransactions === undefined ? undefined : last.pgTransactions - first.pgTransactions

    const hits = last.redisHits - first.redisHits
    const misses = last.redisMisses - first.redisMisses
    return {
      peakPgConnections: this.peakPg,
      peakApiRssMb: this.peakRss,
      cpu,
      redis: { keyspaceHits: hits, keyspaceMisses: misses, hitShare: hits + misses > 0 ? hits / (hits + misses) : null },
      appCache,
      peakDbStatementsInFlight: this.peakDbInFlight,
      peakHttpInFlight: this.peakHttpInFlight,
      serverRoutes: grouped('ledger_http_request_duration_seconds', (l) => `${l.method} ${l.route} ${l.status_code}`),
      sqlStatements: grouped('ledger_db_query_duration_seconds', (l) => `${l.statement}${l.outcome === 'ok' ? '' : ` (${l.outcome})`}`),
      dependencyErrors,
      roundTrips: { redisCommands, pgTransactions }
    }
  }
}
