// Shared by scripts/diagnose.ts and scripts/preflight.ts: aligned text tables, number formatting, time bounds,
// a one-connection PostgreSQL client for diagnostics, and the API's own /metrics read into the figures both print.
import postgres from 'postgres'

export interface Column {
  header: string
  /** Right-aligned (numbers); text columns are left-aligned. */
  right?: boolean
}

/** Plain aligned columns, two spaces apart, each line indented by `indent`. */
export function table (columns: Column[], rows: string[][], indent = '  '): string {
  const widths = columns.map((column, i) => Math.max(column.header.length, ...rows.map((row) => (row[i] ?? '').length)))
  const line = (cells: string[]) => indent + cells
    .map((cell, i) => columns[i]?.right === true ? cell.padStart(widths[i] ?? 0) : cell.padEnd(widths[i] ?? 0))
    .join('  ').trimEnd()
  return [line(columns.map((column) => column.header)), ...rows.map(line)].join('\n')
}

export const int = (n: number) => Math.round(n).toLocaleString('en-US')
export const ms = (n: number) => n >= 100 ? n.toFixed(0) : n >= 10 ? n.toFixed(1) : n.toFixed(2)
export const pct = (share: number | null) => share === null ? 'n/a' : `${(share * 100).toFixed(1)}%`
export const ratio = (part: number, whole: number) => whole > 0 ? part / whole : null

/** A message without stack or secrets, for "unavailable: <reason>" lines. */
export function reason (error: unknown): string {
  if (error instanceof AggregateError && error.errors.length > 0) return reason(error.errors[0])
  if (error instanceof Error) {
    // fetch() says only "fetch failed"; the reason (ECONNREFUSED, a DNS error...) is its cause.
    if (error.message === 'fetch failed' && error.cause !== undefined) return reason(error.cause)
    const code = (error as { code?: unknown }).code
    const message = error.message !== '' ? error.message : error.name
    return typeof code === 'string' && !message.includes(code) ? `${message} (${code})` : message
  }
  return String(error)
}

export class TimeoutError extends Error {
  override name = 'TimeoutError'
}

/** Rejects after `timeoutMs` so no section or check can hang the script; the caller closes what it opened. */
export async function withTimeout<T> (work: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((resolve, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(`${what} did not answer within ${timeoutMs / 1000} s`)), timeoutMs)
  })
  try {
    return await Promise.race([work, timeout])
  } finally {
    clearTimeout(timer)
  }
}

/** The URL without its password, for printing where a result came from. */
export function redact (url: string): string {
  try {
    const parsed = new URL(url)
    if (parsed.password !== '') parsed.password = '***'
    return parsed.toString()
  } catch {
    return '(not a URL)'
  }
}

/** Set on every diagnostics connection, so that connection counts can leave them out. */
export const DIAGNOSTICS_APPLICATION_NAME = 'ledger-diagnostics'

/**
 * One connection for read-only diagnostics. `prepare: false` and `fetch_types: false` keep every statement to
 * what PgBouncer accepts: no named prepared statements (transaction pooling), and no type lookup on connect,
 * which the PgBouncer admin console would refuse (it speaks only the simple query protocol).
 */
export function diagnosticSql (url: string, database?: string) {
  return postgres(url, {
    ...(database === undefined ? {} : { database }),
    max: 1,
    prepare: false,
    fetch_types: false,
    connect_timeout: 3,
    idle_timeout: 1,
    max_lifetime: 60,
    connection: { application_name: DIAGNOSTICS_APPLICATION_NAME },
    onnotice: () => {}
  })
}

/** Closes a diagnostics connection without waiting on a server that stopped answering. */
export async function closeSql (sql: postgres.Sql) {
  await sql.end({ timeout: 1 }).catch(() => {})
}

// ---- the API's /metrics ---------------------------------------------------------------------------------------

/** Prometheus text, one entry per series: `name{label="value",...}` -> value. */
export type MetricsSnapshot = Map<string, number>

export function parseMetrics (text: string): MetricsSnapshot {
  const metrics: MetricsSnapshot = new Map()
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    // Label values here never hold spaces (route templates, status codes, names), so the value is the last field.
    const space = line.lastIndexOf(' ')
    if (space > 0) metrics.set(line.slice(0, space), Number(line.slice(space + 1)))
  }
  return metrics
}

export interface Series {
  labels: Record<string, string>
  value: number
}

/** Every series of one metric, with its labels. */
export function metricSeries (metrics: MetricsSnapshot, name: string): Series[] {
  const out: Series[] = []
  for (const [key, value] of metrics) {
    if (key !== name && !key.startsWith(`${name}{`)) continue
    const labels: Record<string, string> = {}
    for (const match of key.slice(name.length).matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
      if (match[1] !== undefined && match[2] !== undefined) labels[match[1]] = match[2]
    }
    out.push({ labels, value })
  }
  return out
}

/** Sums a metric's series grouped by a key made from their labels. */
export function sumBy (metrics: MetricsSnapshot, name: string, key: (labels: Record<string, string>) => string | undefined): Map<string, number> {
  const sums = new Map<string, number>()
  for (const { labels, value } of metricSeries(metrics, name)) {
    const k = key(labels)
    if (k !== undefined) sums.set(k, (sums.get(k) ?? 0) + value)
  }
  return sums
}

/** Each series of `after` minus the same series of `before` (counters read before and after a run). */
export function metricsDelta (before: MetricsSnapshot, after: MetricsSnapshot): MetricsSnapshot {
  const delta: MetricsSnapshot = new Map()
  for (const [key, value] of after) delta.set(key, value - (before.get(key) ?? 0))
  return delta
}

export interface CacheCounts {
  hits: number
  misses: number
  hitRatio: number | null
}

/** Cache-aside lookups per cache name, from ledger_cache_requests_total{cache,result}. */
export function cacheCounts (metrics: MetricsSnapshot): Record<string, CacheCounts> {
  const out: Record<string, CacheCounts> = {}
  for (const { labels, value } of metricSeries(metrics, 'ledger_cache_requests_total')) {
    const name = labels.cache ?? '?'
    const entry = out[name] ?? { hits: 0, misses: 0, hitRatio: null }
    if (labels.result === 'hit') entry.hits += value
    else entry.misses += value
    entry.hitRatio = ratio(entry.hits, entry.hits + entry.misses)
    out[name] = entry
  }
  return out
}

/** `feed 98.0% of 1,200, user n/a` */
export function describeCaches (caches: Record<string, CacheCounts>): string {
  const names = Object.keys(caches).filter((name) => caches[name]!.hits + caches[name]!.misses > 0).sort()
  if (names.length === 0) return 'no cache lookups'
  return names.map((name) => {
    const { hits, misses, hitRatio } = caches[name]!
    return `${name} ${pct(hitRatio)} of ${int(hits + misses)}`
  }).join(', ')
}

export class HttpStatusError extends Error {
  override name = 'HttpStatusError'
  readonly status: number
  constructor (status: number, message: string) {
    super(message)
    this.status = status
  }
}

/** GET <api>/metrics (with the bearer token when one is configured), parsed. */
export async function fetchMetrics (apiUrl: string, token: string | undefined, timeoutMs = 3000): Promise<MetricsSnapshot> {
  const headers: Record<string, string> = token === undefined ? {} : { authorization: `Bearer ${token}` }
  const response = await fetch(new URL('/metrics', apiUrl), { headers, signal: AbortSignal.timeout(timeoutMs) })
  const text = await response.text()
  if (response.status === 401) throw new HttpStatusError(401, 'GET /metrics answered 401: pass --metrics-token (METRICS_TOKEN)')
  if (response.status !== 200) throw new HttpStatusError(response.status, `GET /metrics answered ${response.status}`)
  return parseMetrics(text)
}
