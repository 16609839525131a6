// The API's own /metrics (Prometheus text) read into the figures the operator tools print.
import { int, pct, ratio } from './format.ts'

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
      // The exposition format escapes backslash, double quote and newline in label values.
      if (match[1] !== undefined && match[2] !== undefined) labels[match[1]] = match[2].replace(/\\(.)/g, (_, c: string) => c === 'n' ? '\n' : c)
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
  // In production the public port has /metrics only with METRICS_TOKEN, and never when OPS_PORT serves it.
  if (response.status === 404) throw new HttpStatusError(404, 'GET /metrics answered 404: point at the operations port (OPS_PORT), or set METRICS_TOKEN on the API and pass --metrics-token')
  if (response.status !== 200) throw new HttpStatusError(response.status, `GET /metrics answered ${response.status}`)
  return parseMetrics(text)
}
