// 5. The API's own /metrics: requests, 5xx, 429s, cache hit ratio per cache, dependency errors, the N+1s it saw.
import { columns, int, ms, pct, seconds, table } from '../format.ts'
import { cacheCounts, fetchMetrics, metricSeries, sumBy, type MetricsSnapshot } from '../prometheus.ts'
import type { NPlusOneEvidence } from './statements.ts'

export const title = '5. API metrics (GET /metrics)'

export interface RouteSummary {
  route: string
  requests: number
  errors5xx: number
  meanMs: number
}

export type Data = ReturnType<typeof summarizeMetrics>

export function summarizeMetrics (metrics: MetricsSnapshot, source: string, top: number) {
  const routes = new Map<string, RouteSummary & { seconds: number }>()
  const status = { total: 0, '5xx': 0, '4xx': 0, 429: 0 }
  for (const { labels, value } of metricSeries(metrics, 'ledger_http_request_duration_seconds_count')) {
    const code = labels.status_code ?? ''
    status.total += value
    if (code.startsWith('5')) status['5xx'] += value
    if (code.startsWith('4')) status['4xx'] += value
    if (code === '429') status[429] += value
    const key = `${labels.method} ${labels.route}`
    const entry = routes.get(key) ?? { route: key, requests: 0, errors5xx: 0, meanMs: 0, seconds: 0 }
    entry.requests += value
    if (code.startsWith('5')) entry.errors5xx += value
    routes.set(key, entry)
  }
  for (const { labels, value } of metricSeries(metrics, 'ledger_http_request_duration_seconds_sum')) {
    const entry = routes.get(`${labels.method} ${labels.route}`)
    if (entry !== undefined) entry.seconds += value
  }
  const single = (name: string) => metrics.get(name) ?? null
  const startTime = single('process_start_time_seconds')
  const lag = single('nodejs_eventloop_lag_p99_seconds')
  const rss = single('process_resident_memory_bytes')
  return {
    source,
    requests: status.total,
    status5xx: status['5xx'],
    status4xx: status['4xx'],
    status429: status[429],
    rateLimitRejected: Object.fromEntries(sumBy(metrics, 'ledger_rate_limit_decisions_total', (l) => l.decision === 'rejected' ? l.tier : undefined)),
    caches: cacheCounts(metrics),
    dependencyErrors: Object.fromEntries(sumBy(metrics, 'ledger_dependency_errors_total', (l) => `${l.dependency} ${l.operation}`)),
    nPlusOne: metricSeries(metrics, 'ledger_db_n_plus_one_total').filter((s) => s.value > 0)
      .map(({ labels, value }): NPlusOneEvidence => ({ route: labels.route ?? '', statement: labels.statement ?? '', rowsOf: labels.rows_of ?? '', requests: value })),
    routes: [...routes.values()]
      .map(({ seconds, ...route }): RouteSummary => ({ ...route, meanMs: route.requests > 0 ? seconds / route.requests * 1000 : 0 }))
      .sort((a, b) => b.requests - a.requests)
      .slice(0, top),
    httpInFlight: single('ledger_http_requests_in_flight') ?? 0,
    dbStatementsInFlight: single('ledger_db_statements_in_flight') ?? 0,
    dbPoolMax: single('ledger_db_pool_max_connections') ?? 0,
    uptimeS: startTime === null ? null : Date.now() / 1000 - startTime,
    residentMemoryMb: rss === null ? null : rss / 1024 / 1024,
    eventLoopLagP99Ms: lag === null ? null : lag * 1000
  }
}

export async function read (apiUrl: string, { metricsToken, top }: { metricsToken?: string | undefined, top: number }): Promise<Data> {
  return summarizeMetrics(await fetchMetrics(apiUrl, metricsToken), new URL('/metrics', apiUrl).toString(), top)
}

export function render (a: Data): string[] {
  const caches = Object.entries(a.caches).sort(([x], [y]) => x.localeCompare(y))
    .map(([name, c]) => `${name} ${pct(c.hitRatio)} (${int(c.hits)}/${int(c.hits + c.misses)})`).join(', ') || 'no lookups yet'
  const counts = (record: Record<string, number>) => Object.entries(record).map(([k, v]) => `${k} ${int(v)}`).join(', ') || 'none'
  const process = [
    a.uptimeS === null ? undefined : `up ${seconds(a.uptimeS)}`,
    a.residentMemoryMb === null ? undefined : `RSS ${a.residentMemoryMb.toFixed(0)} MB`,
    a.eventLoopLagP99Ms === null ? undefined : `event loop lag p99 ${ms(a.eventLoopLagP99Ms)} ms`
  ].filter(Boolean).join(', ')
  return [
    table(columns('field', 'value'), [
      ['requests', `${int(a.requests)} (5xx ${int(a.status5xx)}, 4xx ${int(a.status4xx)}, 429 ${int(a.status429)})`],
      ['rate limit rejections', counts(a.rateLimitRejected)],
      ['cache hit ratio', caches],
      ['dependency errors', counts(a.dependencyErrors)],
      ['in flight', `${int(a.httpInFlight)} requests, ${int(a.dbStatementsInFlight)} SQL statements (pool max ${int(a.dbPoolMax)})`],
      ['process', process]
    ]),
    ...a.routes.length > 0
      ? [table(columns('route', '>requests', '>5xx', '>mean ms'), a.routes.map((r) => [r.route, int(r.requests), int(r.errors5xx), ms(r.meanMs)]))]
      : []
  ]
}
