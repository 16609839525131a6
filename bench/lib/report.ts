// Results as data (JSON), as Markdown tables (printed, saved beside the JSON, and the summary of the latest complete
// run in docs/bench-latest.md) and the checks that make `--quick` a CI smoke test.
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { formatHistogram } from './histogram.ts'
import type { LoadResult, Percentiles } from './load.ts'
import type { SampleResult } from './samplers.ts'

export interface RunRecord {
  id: string
  scenario: string
  label: string
  connections: number
  overallRate?: number
  load: LoadResult
  samples: SampleResult | undefined
  /** Sampled together with another run (side-by-side instances): CPU per request is not its own. */
  sharedSamples?: boolean
  notes: string[]
  /** The API process's resident memory before and after the run (first-minute), per minute and its slope (soak). */
  rss?: { startMb: number, endMb: number, perMinuteMb?: number[], slopeMbPerMin?: number }
}

export interface BaselineRecord {
  id: string
  label: string
  tool: 'autocannon' | 'pgbench' | 'redis-benchmark'
  connections: number
  rps: number
  latency: Percentiles | undefined
  errors: number
  samples: SampleResult | undefined
  details: Record<string, unknown>
}

export interface Comparison {
  id: string
  label: string
  measured: string
  reference: string
  measuredValue: number
  referenceValue: number
  /** measured / reference, or a value in the target's own unit when `unit` says so. */
  value: number
  unit: 'ratio' | 'req/s' | 'ms' | 'count'
  target: { op: '>=' | '<=' | '<' | '==', value: number } | undefined
  met: boolean | undefined
  note: string
}

export function compare (c: Omit<Comparison, 'met'>): Comparison {
  let met: boolean | undefined
  if (c.target !== undefined && Number.isFinite(c.value)) {
    const { op, value } = c.target
    met = op === '>=' ? c.value >= value : op === '<=' ? c.value <= value : op === '<' ? c.value < value : c.value === value
  }
  return { ...c, met }
}

const n0 = (v: number) => Math.round(v).toLocaleString('en-US')
/** Counts and req/s as integers; small values (CPU ms) with their decimals. */
const num = (v: number | null) => v === null ? '-' : Math.abs(v) >= 100 || Number.isInteger(v) ? n0(v) : v.toFixed(3)
// Saved JSON turns NaN (a percentile a tool does not report) into null.
const ms = (v: number | null) => v === null || !Number.isFinite(v) ? '-' : v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)
// Saved JSON turns NaN (0 / 0 when a run completed nothing) into null too.
const fmtValue = (c: Comparison) => c.value === null || !Number.isFinite(c.value) ? '-' : c.unit === 'ratio' ? `${c.value.toFixed(2)}x` : c.unit === 'ms' ? `${ms(c.value)} ms` : c.unit === 'req/s' ? `${n0(c.value)} req/s` : num(c.value)
const fmtTarget = (c: Comparison) => c.target === undefined
  ? '(info)'
  : `${c.target.op} ${c.unit === 'ratio' ? `${c.target.value}x` : c.unit === 'ms' ? `${c.target.value} ms` : c.unit === 'req/s' ? `${n0(c.target.value)} req/s` : c.target.value}`

function statusText (codes: Record<string, number>): string {
  const bad = Object.entries(codes).filter(([code]) => !code.startsWith('2'))
  return bad.length === 0 ? '0' : bad.map(([code, count]) => `${code}: ${n0(count)}`).join(', ')
}

function cpuText (cpu: Record<string, number> | undefined): string {
  if (cpu === undefined) return ''
  const order = ['api', 'postgres', 'pgbouncer', 'redis', 'bench', 'others']
  return order.filter((k) => cpu[k] !== undefined).map((k) => `${k} ${cpu[k]!.toFixed(2)}`).join(' / ')
}

/** CPU milliseconds per request: of the API process alone, and of the whole stack (API, PostgreSQL, PgBouncer, Redis). */
export function cpuPerRequest (samples: SampleResult | undefined, rps: number): { api: number, db: number, stack: number } | undefined {
  if (samples === undefined || rps <= 0) return undefined
  const c = samples.cpu
  const db = (c.postgres ?? 0) + (c.pgbouncer ?? 0)
  return { api: (c.api ?? 0) * 1000 / rps, db: db * 1000 / rps, stack: ((c.api ?? 0) + db + (c.redis ?? 0)) * 1000 / rps }
}

const cpuCell = (samples: SampleResult | undefined, rps: number) => {
  const per = cpuPerRequest(samples, rps)
  return per === undefined ? '' : `${per.api.toFixed(2)} / ${per.db.toFixed(2)} / ${per.stack.toFixed(2)}`
}

function table (header: string[], rows: string[][]): string {
  const lines = [`| ${header.join(' | ')} |`, `|${header.map(() => '---').join('|')}|`]
  for (const row of rows) lines.push(`| ${row.join(' | ')} |`)
  return lines.join('\n')
}

export interface Report {
  meta: Record<string, unknown>
  runs: RunRecord[]
  baselines: BaselineRecord[]
  comparisons: Comparison[]
  failures: string[]
}

/** The whole report, or (`summary`) its scenarios, baselines, ratios and failures only. */
export function markdown (report: Report, summary = false): string {
  const { runs, baselines, comparisons } = report
  const meta = report.meta as { date: string, mode: string, commit?: string, sizes: Record<string, number>, machine: Record<string, unknown> }
  const lat = (l: Percentiles | undefined) => l === undefined ? ['', '', ''] : [ms(l.p50), ms(l.p99), ms(l.max)]
  const percent = (share: number | null | undefined) => share === null || share === undefined ? '-' : `${(share * 100).toFixed(0)}%`
  const out = [
    `## ledger-api benchmark: ${meta.date} (${meta.mode}${meta.commit ? `, commit ${String(meta.commit).slice(0, 10)}` : ''})`,
    '',
    `Data: ${n0(meta.sizes.users ?? 0)} users, ${n0(meta.sizes.bigUserTransactions ?? 0)} transactions on one user, ${n0(meta.sizes.posts ?? 0)} posts. ` +
    `Machine: ${String(meta.machine.cpus)} cores, load average ${String(meta.machine.loadavg)} at start (other work shares these cores, so compare ratios, not absolutes).`,
    '',
    '### Scenarios',
    '',
    'CPU ms per request = CPU seconds used during the run / requests: `api` the API process, `db` PostgreSQL + PgBouncer, `stack` both plus Redis. ' +
    'Unlike req/s, it barely depends on how much of the machine other work took, so it is the fairer cost comparison on a shared machine.',
    '',
    table(
      ['scenario', 'conns', 'req/s', 'p50 ms', 'p99 ms', 'max ms', 'non-2xx', 'socket err / timeouts', 'peak PG conns', 'peak API RSS MB', 'cache hit share (app / Redis INFO)', 'CPU ms per request: api / db / stack', 'CPU cores: api / postgres / pgbouncer / redis / bench / others'],
      runs.map((r) => {
        const s = r.samples
        const caches = s === undefined ? '' : Object.entries(s.appCache).filter(([, c]) => c.hit + c.miss > 0).map(([name, c]) => `${name} ${percent(c.hitShare ?? 0)}`).join(', ') || '-'
        return [
          r.label, `${r.connections}${r.overallRate === undefined ? '' : ` @${r.overallRate}/s`}`, n0(r.load.rps), ...lat(r.load.latency), statusText(r.load.statusCodes),
          `${r.load.errors - r.load.timeouts} / ${r.load.timeouts}`, s === undefined ? '' : String(s.peakPgConnections), s === undefined ? '' : s.peakApiRssMb.toFixed(0),
          s === undefined ? '' : `${caches} / ${percent(s.redis.hitShare)}`,
          r.sharedSamples === true ? '(shared with the run above)' : cpuCell(s, r.load.rps), r.sharedSamples === true ? '' : cpuText(s?.cpu)
        ]
      })
    ),
    ...firstMinuteTable(runs),
    ...writeBatchTable(runs),
    '### Baselines (same run, same machine)',
    '',
    table(
      ['baseline', 'tool', 'conns', 'req/s', 'p50 ms', 'p99 ms', 'max ms', 'errors', 'CPU ms per request: server / db / stack', 'CPU cores: server / postgres / pgbouncer / redis / bench / others'],
      baselines.map((b) => [b.label, b.tool, String(b.connections), n0(b.rps), ...lat(b.latency), String(b.errors), cpuCell(b.samples, b.rps), cpuText(b.samples?.cpu)])
    ),
    '',
    '### Ratios and targets',
    '',
    table(['check', 'measured', 'reference', 'result', 'target', 'met', 'note'], comparisons.map((c) => {
      const value = (v: number) => c.unit === 'ms' ? `${ms(v)} ms` : num(v)
      const met = c.met === undefined ? '' : c.met ? 'yes' : '**no**'
      return [c.label, `${c.measured}: ${value(c.measuredValue)}`, c.reference === '' ? '' : `${c.reference}: ${value(c.referenceValue)}`, fmtValue(c), fmtTarget(c), met, c.note]
    }))
  ]
  if (summary) {
    if (report.failures.length > 0) out.push('', '### Failures', '', ...report.failures.map((failure) => `- ${failure}`))
    return out.join('\n') + '\n'
  }
  const tripped = runs.filter((r) => r.sharedSamples !== true && r.load.requests > 0 && r.samples?.roundTrips !== undefined)
  if (tripped.length > 0) {
    out.push('', '### Round trips per request', '', 'Calls that reached Redis (INFO commandstats, by command; the commands a Lua script runs are counted besides its EVALSHA) and ' +
      'PostgreSQL (commits + rollbacks of the bench database) during the run, divided by the requests completed; background work (polls, jobs) is included.', '')
    out.push(table(['scenario', 'Redis commands (scripts\' included)', 'by command', 'PostgreSQL transactions'], tripped.map((r) => {
      const trips = r.samples!.roundTrips
      const per = (n: number) => (n / r.load.requests).toFixed(3)
      const commands = Object.entries(trips.redisCommands).sort(([, a], [, b]) => b - a)
      const byCommand = commands.slice(0, 6).map(([command, calls]) => `${command} ${per(calls)}`).join(', ') || '-'
      return [r.label, per(commands.reduce((sum, [, calls]) => sum + calls, 0)), byCommand, trips.pgTransactions === undefined ? '-' : per(trips.pgTransactions)]
    })))
  }
  const routed = runs.filter((r) => Object.keys(r.load.perRoute).length > 1)
  if (routed.length > 0) {
    out.push('', '### Per route (client-side latency; server-side mean from the API\'s own histogram)', '')
    out.push(table(['scenario', 'route', 'req/s', 'p50 ms', 'p99 ms', 'max ms', 'non-2xx', 'server mean ms'], routed.flatMap((r) => Object.entries(r.load.perRoute).map(([route, stats]) => {
      const server = Object.entries(r.samples?.serverRoutes ?? {}).filter(([key]) => key.startsWith(`${route.split(' ').slice(0, 2).join(' ')} `)).map(([, v]) => v)
      const count = server.reduce((s, v) => s + v.count, 0)
      const mean = count === 0 ? '' : ms(server.reduce((s, v) => s + v.meanMs * v.count, 0) / count)
      return [r.label, route, n0(stats.count / r.load.durationS), ...lat(stats), statusText(stats.statusCodes), mean]
    }))))
  }
  const notes = runs.flatMap((r) => r.notes.map((note) => `- ${r.label}: ${note}`))
  if (notes.length > 0 || report.failures.length > 0) out.push('', '### Notes', '', ...notes, ...report.failures.map((failure) => `- FAILURE: ${failure}`))
  return out.join('\n') + '\n'
}

/** Runs recorded in time windows (first-minute): p99 per window, errors and the API's RSS before and after. */
function firstMinuteTable (runs: RunRecord[]): string[] {
  const windowed = runs.filter((r) => r.load.windows !== undefined)
  if (windowed.length === 0) return ['']
  const span = (r: RunRecord) => {
    const [first, second] = r.load.windows!
    return first === undefined || second === undefined ? 0 : second.fromS - first.fromS
  }
  return ['', '### First minute', '', 'p99 of the responses that arrived in each window of the run (a window\'s count in brackets), and the API process\'s resident memory.', '',
    table(['run', 'p99 ms', 'p99 ms per window', 'window s', 'socket err / timeouts', 'non-2xx', 'RSS MB start -> end', 'RSS slope MB/min (last half)'], windowed.map((r) => [
      r.label, ms(r.load.latency.p99), r.load.windows!.map((w) => `${ms(w.p99)} (${w.count})`).join(', '), String(span(r)),
      `${r.load.errors - r.load.timeouts} / ${r.load.timeouts}`, statusText(r.load.statusCodes),
      r.rss === undefined ? '' : `${r.rss.startMb.toFixed(0)} -> ${r.rss.endMb.toFixed(0)}`, r.rss?.slopeMbPerMin === undefined ? '' : r.rss.slopeMbPerMin.toFixed(2)
    ])), '']
}

/**
 * The money write's batches (server-side group commit) in the POST /transactions runs, from the API's
 * ledger_write_batch_size histogram: '-' where the API does not export it.
 */
function writeBatchTable (runs: RunRecord[]): string[] {
  const posting = runs.filter((r) => r.scenario === 'post-transactions')
  if (posting.length === 0) return []
  return ['### Ledger write batches', '', 'Money writes per database round trip, from the API\'s `ledger_write_batch_size` histogram (increase over the run; percentiles are bucket bounds). \'-\': the API does not export it (no group commit).', '',
    table(['run', 'conns', 'req/s', 'p99 ms', 'batches', 'mean writes per batch', 'p50', 'p99'], posting.map((r) => {
      const h = formatHistogram(r.samples?.writeBatchSize)
      return [r.label, String(r.connections), n0(r.load.rps), ms(r.load.latency.p99), h.count, h.mean, h.p50, h.p99]
    })), '']
}

/** Writes <dir>/<stamp>.json (every number) and <dir>/<stamp>.md (the tables); returns the Markdown. */
export function writeReport (report: Report, dir: string, stamp: string, json = true): string {
  const md = markdown(report)
  if (json) writeFileSync(join(dir, `${stamp}.json`), JSON.stringify(report, null, 1) + '\n')
  writeFileSync(join(dir, `${stamp}.md`), md)
  return md
}

/** What fails `--quick` in CI: socket errors, timeouts and 5xx anywhere (never speed). */
export function smokeFailures (runs: RunRecord[], baselines: BaselineRecord[]): string[] {
  const failures: string[] = []
  for (const r of runs) {
    const fivexx = Object.entries(r.load.statusCodes).filter(([code]) => code.startsWith('5')).reduce((s, [, v]) => s + v, 0)
    if (r.load.errors > 0) failures.push(`${r.label}: ${r.load.errors} socket errors (${r.load.timeouts} timeouts)`)
    if (fivexx > 0) failures.push(`${r.label}: ${fivexx} responses with status 5xx (${statusText(r.load.statusCodes)})`)
    if (r.load.requests === 0) failures.push(`${r.label}: no request completed`)
  }
  for (const b of baselines) if (b.tool === 'autocannon' && b.errors > 0) failures.push(`${b.label}: ${b.errors} socket errors`)
  return failures
}
