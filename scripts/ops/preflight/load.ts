// 1 load: autocannon, N connections for S seconds (100 x 30 s) over the authenticated GETs without path parameters:
// no socket errors, no timeouts, no 5xx. 429s are counted but expected (one token against the per-user bucket), as
// are other 4xx. It runs last, so its 429s do not drain the token's bucket for the other checks.
// 5 resources: what the servers did during check 1: PostgreSQL client connections of the --database-url database
// (direct, sampled every 250 ms) stay under --max-db-connections (20); the cache hit ratio over the run is reported
// from the API's /metrics counters. Without --database-url the connection part is a SKIP.
import autocannon from 'autocannon'
import { closeSql, DIAGNOSTICS_APPLICATION_NAME, diagnosticSql } from '../diagnostic-sql.ts'
import { int, ms, reason, withTimeout } from '../format.ts'
import { cacheCounts, describeCaches, fetchMetrics, metricsDelta, sumBy, type MetricsSnapshot } from '../prometheus.ts'
import { progress, type Check } from './context.ts'
import { bearer, REQUEST_TIMEOUT_MS } from './http.ts'
import { documents401, isSecured } from './openapi.ts'

const SAMPLE_EVERY_MS = 250

/** Samples the number of client backends of one database while the load runs. */
class ConnectionSampler {
  private readonly sql
  private timer: NodeJS.Timeout | undefined
  private busy = false
  readonly counts: number[] = []
  error: string | undefined

  constructor (url: string) {
    this.sql = diagnosticSql(url)
  }

  private async sample () {
    if (this.busy) return
    this.busy = true
    try {
      const [row] = await this.sql<{ n: number }[]>`
        select count(*)::int as n from pg_stat_activity
         where backend_type = 'client backend' and datname = current_database() and application_name <> ${DIAGNOSTICS_APPLICATION_NAME}`
      this.counts.push(row?.n ?? 0)
    } catch (error) {
      this.error ??= reason(error)
    } finally {
      this.busy = false
    }
  }

  /** Takes a first sample (so a wrong URL is known before the load starts), then one every 250 ms. */
  async start () {
    await withTimeout(this.sample(), 5000, 'PostgreSQL')
    // sample() catches its own errors (kept in this.error), so the promise is safe to leave unawaited.
    this.timer = setInterval(() => { this.sample().catch(() => {}) }, SAMPLE_EVERY_MS)
  }

  async stop () {
    clearInterval(this.timer)
    await this.sample()
    await closeSql(this.sql)
  }
}

export const load: Check = {
  id: 1,
  name: 'load',
  async run (ctx) {
    const { options } = ctx
    const paths = ctx.ops
      .filter((op) => op.method === 'GET' && isSecured(ctx.doc, op) && documents401(op) && !op.path.includes('{') && !(op.parameters ?? []).some((p) => p.required === true))
      .map((op) => op.path)
    let sampler: ConnectionSampler | undefined
    let samplerError: string | undefined
    if (options.databaseUrl !== undefined) {
      sampler = new ConnectionSampler(options.databaseUrl)
      try {
        await sampler.start()
        if (sampler.error !== undefined) throw new Error(sampler.error)
      } catch (error) {
        samplerError = reason(error)
        await sampler.stop().catch(() => {})
        sampler = undefined
      }
    }
    let metricsBefore: MetricsSnapshot | undefined
    let caches = ''
    try {
      metricsBefore = await fetchMetrics(ctx.base, options.metricsToken)
    } catch (error) {
      caches = `cache hit ratio unavailable: ${reason(error)}`
    }

    progress(`load: ${options.connections} connections for ${options.durationS} s on ${paths.join(', ')}`)
    // Each connection cycles through the paths. Statuses are counted, never bailed on: 429s are expected.
    const result = await autocannon({
      url: ctx.base,
      connections: options.connections,
      duration: options.durationS,
      timeout: REQUEST_TIMEOUT_MS / 1000,
      headers: bearer(ctx.token),
      requests: paths.map((path) => ({ method: 'GET', path }))
    })
    await sampler?.stop()
    const failures: string[] = []
    if (metricsBefore !== undefined) {
      try {
        const delta = metricsDelta(metricsBefore, await fetchMetrics(ctx.base, options.metricsToken))
        const errors = [...sumBy(delta, 'ledger_dependency_errors_total', (l) => `${l.dependency} ${l.operation}`)].filter(([, n]) => n > 0)
        caches = `cache hit ratio during the load: ${describeCaches(cacheCounts(delta))}; dependency errors ${errors.map(([k, n]) => `${k} ${int(n)}`).join(', ') || '0'}`
        // Which routes the 5xx came from, as the server counted them.
        const byRoute = sumBy(delta, 'ledger_http_request_duration_seconds_count', (l) => l.status_code?.startsWith('5') === true ? `${l.method} ${l.route} ${l.status_code}` : undefined)
        for (const [route, n] of byRoute) if (n > 0) failures.push(`server counted ${int(n)} x ${route}`)
      } catch (error) {
        caches = `cache hit ratio unavailable: ${reason(error)}`
      }
    }
    ctx.duringLoad = { sampler, samplerError, caches }

    const codes = Object.entries(result.statusCodeStats ?? {}).map(([code, stat]) => [Number(code), stat.count ?? 0] as const)
    const count = (predicate: (code: number) => boolean) => codes.filter(([code]) => predicate(code)).reduce((sum, [, n]) => sum + n, 0)
    const requests = count(() => true)
    const errors5xx = count((code) => code >= 500)
    const limited = count((code) => code === 429)
    const other = codes.filter(([code]) => code >= 300 && code < 500 && code !== 429).map(([code, n]) => `${code}x${int(n)}`)
    return {
      status: result.errors > 0 || errors5xx > 0 || requests === 0 ? 'FAIL' : 'PASS',
      evidence: `${options.connections} conns x ${options.durationS} s, ${int(requests)} requests (${int(requests / Math.max(result.duration, 0.001))}/s, p99 ${ms(result.latency.p99)} ms), ` +
        `${int(result.errors)} errors (${int(result.timeouts)} timeouts), ${int(errors5xx)} 5xx, ${int(limited)} 429s` +
        `${other.length > 0 ? `, other ${other.join(' ')}` : ''}`,
      details: [
        ...failures,
        ...(requests === 0 ? ['no request completed'] : []),
        ...(limited > requests / 2
          ? ['note: most requests were turned away by the per-user rate limit (one token), so the handlers saw little of the load; a higher-tier token or higher RATE_LIMIT_* on the target loads them']
          : [])
      ]
    }
  }
}

export const resources: Check = {
  id: 5,
  name: 'resources',
  async run (ctx) {
    const { sampler, samplerError, caches } = ctx.duringLoad ?? { sampler: undefined, samplerError: 'the load did not run', caches: '' }
    const limit = ctx.options.maxDbConnections
    if (ctx.options.databaseUrl === undefined) return { status: 'SKIP', evidence: `PostgreSQL connections not sampled (no --database-url); ${caches}`, details: [] }
    if (sampler === undefined || samplerError !== undefined) return { status: 'FAIL', evidence: `cannot sample pg_stat_activity: ${samplerError ?? 'no sample'}; ${caches}`, details: [] }
    const max = Math.max(0, ...sampler.counts)
    return {
      status: max < limit ? 'PASS' : 'FAIL',
      evidence: `PostgreSQL client connections max ${max} (${max < limit ? '<' : '>='} ${limit}) over ${sampler.counts.length} samples; ${caches}`,
      details: sampler.error === undefined ? [] : [`some samples failed: ${sampler.error}`]
    }
  }
}
