// `npm run diagnose [-- --api URL] [--metrics-token T] [--window S] [--top N] [--json]`: one look at the live
// servers behind the API, for an incident or a slow day. Five sections, each read on its own and each allowed to
// fail alone ("unavailable: <reason>") so a dead Redis never hides what PostgreSQL says:
//   1. PostgreSQL connections (pg_stat_activity), grouped by database, state and wait event;
//   2. top statements of pg_stat_statements by calls and by total time, with calls per second and an N+1 hint;
//   3. PgBouncer SHOW POOLS / SHOW STATS (admin console);
//   4. Redis INFO: keyspace hit ratio and memory;
//   5. the API's own /metrics: requests, 5xx, 429s, cache hit ratio per cache, dependency errors.
//
// Servers come from DATABASE_URL (PgBouncer), DATABASE_DIRECT_URL (PostgreSQL) and REDIS_URL, or flags of the same
// meaning; whatever is unset is taken from the project-local stack (`bash scripts/stack.sh env`, which starts
// nothing). Everything it runs is read-only. The API is http://127.0.0.1:$PORT (3000) unless --api says otherwise.
import { parseArgs } from 'node:util'
import { Redis } from 'ioredis'
import { readStackEnv, withUserOf } from '../local-stack.ts'
import { closeSql, DIAGNOSTICS_APPLICATION_NAME, diagnosticSql } from './diagnostic-sql.ts'
import { int, ms, pct, ratio, reason, redact, table, withTimeout } from './format.ts'
import { cacheCounts, fetchMetrics, metricSeries, sumBy, type CacheCounts, type MetricsSnapshot } from './prometheus.ts'

const SECTION_TIMEOUT_MS = 10_000
const QUERY_WIDTH = 72

export type Section<T> = ({ ok: true } & T) | { ok: false, error: string }

export interface Targets {
  databaseUrl?: string | undefined
  directUrl?: string | undefined
  redisUrl?: string | undefined
  apiUrl: string
  metricsToken?: string | undefined
}

export interface DiagnoseOptions extends Targets {
  /** 0: calls per second since pg_stat_statements was last reset; else over a window of this many seconds. */
  windowS: number
  top: number
}

// ---- 1. connections ---------------------------------------------------------------------------------------------

export interface ConnectionGroup {
  database: string
  user: string
  state: string
  wait: string
  connections: number
  longestInStateS: number
  oldestXactS: number
}

export interface ConnectionsSection {
  source: string
  maxConnections: number
  total: number
  groups: ConnectionGroup[]
}

async function connections (url: string): Promise<ConnectionsSection> {
  const sql = diagnosticSql(url)
  try {
    // Client backends only (not autovacuum, walwriter...), and not this script's own connections.
    const groups = await sql<ConnectionGroup[]>`
      select coalesce(datname, '') as database, coalesce(usename, '') as user,
             coalesce(state, '') as state,
             coalesce(wait_event_type || ':' || wait_event, '') as wait,
             count(*)::int as connections,
             greatest(max(extract(epoch from now() - state_change)), 0)::float8 as "longestInStateS",
             greatest(max(extract(epoch from now() - xact_start)), 0)::float8 as "oldestXactS"
        from pg_stat_activity
       where backend_type = 'client backend' and application_name <> ${DIAGNOSTICS_APPLICATION_NAME}
       group by 1, 2, 3, 4
       order by connections desc, 1, 3, 4`
    // Read from this connection's own pg_stat_activity row only so that section 2 leaves it out with the other
    // monitoring statements (it skips every statement that mentions pg_stat_).
    const [settings] = await sql<{ maxConnections: number }[]>`
      select current_setting('max_connections')::int as "maxConnections" from pg_stat_activity where pid = pg_backend_pid()`
    return {
      source: redact(url),
      maxConnections: settings?.maxConnections ?? 0,
      total: groups.reduce((sum, group) => sum + group.connections, 0),
      groups: [...groups]
    }
  } finally {
    await closeSql(sql)
  }
}

// ---- 2. statements ----------------------------------------------------------------------------------------------

interface StatementTotals {
  id: string
  query: string
  calls: number
  totalMs: number
  rows: number
}

export interface Statement extends StatementTotals {
  meanMs: number
  callsPerS: number
  rowsPerCall: number
  /** Set when the statement looks like the "+1" of an N+1: see nPlusOneHints. */
  nPlusOne?: string
}

export interface StatementsSection {
  source: string
  database: string
  /** What calls and calls per second are counted over. */
  window: string
  seconds: number
  byCalls: Statement[]
  byTotalTime: Statement[]
  /** Every statement of the window; not printed, for matching the API's N+1 evidence. */
  all?: Statement[]
  hints: string[]
  /** Where the N+1 hints come from: the API's metrics, or 'none' when they could not be read. */
  evidence: string
}

async function statementTotals (sql: ReturnType<typeof diagnosticSql>): Promise<StatementTotals[]> {
  // Grouped by queryid: the view keeps one row per (user, database, queryid, toplevel). This database only, and
  // not monitoring queries (this script's own, or a scraper's).
  return [...await sql<StatementTotals[]>`
    select queryid::text as id, min(query) as query, sum(calls)::float8 as calls,
           sum(total_exec_time)::float8 as "totalMs", sum(rows)::float8 as rows
      from pg_stat_statements
     where dbid = (select oid from pg_database where datname = current_database())
       and position('pg_stat_' in query) = 0
     group by queryid`]
}

/** One N+1 the API saw: a statement its requests of `route` ran once per row of `rowsOf`, in `requests` requests. */
export interface NPlusOneEvidence {
  route: string
  statement: string
  rowsOf: string
  requests: number
}

const collapse = (query: string) => query.replace(/\s+/g, ' ').trim()

/**
 * N+1 hints from evidence only: the API counts, per request, which statement shapes it ran and how many rows each
 * returned, and exports `ledger_db_n_plus_one_total{route,statement,rows_of}` for a request that ran a statement
 * once per row of another of its statements (plugins/metrics.ts, nPlusOnes). Statements that merely ran as often
 * as each other across requests are never related. The matching pg_stat_statements rows are marked.
 */
export function nPlusOneHints (evidence: NPlusOneEvidence[], statements: Statement[]): string[] {
  const hints: string[] = []
  for (const e of [...evidence].sort((a, b) => b.requests - a.requests)) {
    const matches = statements.filter((s) => collapse(s.query).startsWith(e.statement))
    for (const s of matches) s.nPlusOne = `runs once per row of: ${shorten(e.rowsOf, 60)} (${e.route})`
    const calls = matches.reduce((sum, s) => sum + s.calls, 0)
    hints.push(`N+1? ${shorten(e.statement, 50)} ran once per row of ${shorten(e.rowsOf, 50)} in ${int(e.requests)} requests of ${e.route}` +
      (matches.length > 0 ? ` (${int(calls)} calls in pg_stat_statements)` : ''))
  }
  return hints
}

async function statements (url: string, windowS: number, top: number): Promise<StatementsSection> {
  const sql = diagnosticSql(url)
  try {
    const [info] = await sql<{ database: string }[]>`select current_database() as database`
    let totals: StatementTotals[]
    let seconds: number
    let window: string
    if (windowS > 0) {
      const first = new Map((await statementTotals(sql)).map((s) => [s.id, s]))
      const started = performance.now()
      await new Promise((resolve) => setTimeout(resolve, windowS * 1000))
      const last = await statementTotals(sql)
      seconds = (performance.now() - started) / 1000
      window = `the last ${seconds.toFixed(1)} s`
      totals = last.map((s) => {
        const before = first.get(s.id)
        return before === undefined ? s : { ...s, calls: s.calls - before.calls, totalMs: s.totalMs - before.totalMs, rows: s.rows - before.rows }
      }).filter((s) => s.calls > 0)
    } else {
      totals = await statementTotals(sql)
      // pg_stat_statements_info exists from PostgreSQL 14; older servers give totals without a rate.
      const [reset] = await sql<{ seconds: number, since: string }[]>`
        select extract(epoch from now() - stats_reset)::float8 as seconds, to_char(stats_reset, 'YYYY-MM-DD HH24:MI:SS TZ') as since
          from pg_stat_statements_info`.catch(() => [])
      seconds = reset?.seconds ?? 0
      window = reset === undefined ? 'since the statistics were last reset' : `since ${reset.since} (${int(seconds)} s)`
    }
    const all: Statement[] = totals.map((s) => ({
      ...s,
      meanMs: s.calls > 0 ? s.totalMs / s.calls : 0,
      callsPerS: seconds > 0 ? s.calls / seconds : 0,
      rowsPerCall: s.calls > 0 ? s.rows / s.calls : 0
    }))
    return {
      source: redact(url),
      database: info?.database ?? '',
      window,
      seconds,
      byCalls: [...all].sort((a, b) => b.calls - a.calls).slice(0, top),
      byTotalTime: [...all].sort((a, b) => b.totalMs - a.totalMs).slice(0, top),
      all,
      // Filled in by diagnose() from the API's N+1 evidence.
      hints: [],
      evidence: 'none'
    }
  } catch (error) {
    if ((error as { code?: string }).code === '42P01') {
      throw new Error('pg_stat_statements is not installed in this database (`npm run migrate` creates it: sql/005)')
    }
    if ((error as { code?: string }).code === '55000') {
      throw new Error('pg_stat_statements must be in shared_preload_libraries')
    }
    throw error
  } finally {
    await closeSql(sql)
  }
}

// ---- 3. PgBouncer -----------------------------------------------------------------------------------------------

export interface PoolRow {
  database: string
  user: string
  clActive: number
  clWaiting: number
  svActive: number
  svIdle: number
  svUsed: number
  maxwaitS: number
  poolMode: string
}

export interface StatsRow {
  database: string
  xacts: number
  queries: number
  avgXactMs: number
  avgQueryMs: number
  avgWaitMs: number
  xactsPerS: number
  queriesPerS: number
}

export interface PgBouncerSection {
  source: string
  version: string
  pools: PoolRow[]
  stats: StatsRow[]
}

type AdminRow = Record<string, string | number | null>
const num = (value: unknown) => Number(value ?? 0)

async function pgbouncer (url: string): Promise<PgBouncerSection> {
  // The admin console is the virtual database "pgbouncer" on the same port; it answers the simple protocol only.
  const sql = diagnosticSql(url, 'pgbouncer')
  try {
    const pools = await sql<AdminRow[]>`SHOW POOLS`.simple()
    const stats = await sql<AdminRow[]>`SHOW STATS`.simple()
    const [version] = await sql<AdminRow[]>`SHOW VERSION`.simple()
    const real = (row: AdminRow) => row.database !== 'pgbouncer'
    return {
      source: redact(new URL('/pgbouncer', url).toString()),
      version: String(version?.version ?? ''),
      pools: pools.filter(real).map((row) => ({
        database: String(row.database),
        user: String(row.user),
        clActive: num(row.cl_active),
        clWaiting: num(row.cl_waiting),
        svActive: num(row.sv_active),
        svIdle: num(row.sv_idle),
        svUsed: num(row.sv_used),
        maxwaitS: num(row.maxwait) + num(row.maxwait_us) / 1e6,
        poolMode: String(row.pool_mode ?? '')
      })),
      // PgBouncer reports times in microseconds and averages per second over its last stats period (60 s).
      stats: stats.filter(real).map((row) => ({
        database: String(row.database),
        xacts: num(row.total_xact_count),
        queries: num(row.total_query_count),
        avgXactMs: num(row.avg_xact_time) / 1000,
        avgQueryMs: num(row.avg_query_time) / 1000,
        avgWaitMs: num(row.avg_wait_time) / 1000,
        xactsPerS: num(row.avg_xact_count),
        queriesPerS: num(row.avg_query_count)
      }))
    }
  } catch (error) {
    if ((error as { code?: string }).code === '3D000' || /no such database|not allowed/i.test(reason(error))) {
      throw new Error(`${reason(error)}; is DATABASE_URL pointing at PgBouncer, and is its user in admin_users or stats_users?`)
    }
    throw error
  } finally {
    await closeSql(sql)
  }
}

// ---- 4. Redis ---------------------------------------------------------------------------------------------------

export interface RedisSection {
  source: string
  version: string
  keyspaceHits: number
  keyspaceMisses: number
  hitRatio: number | null
  usedMemoryHuman: string
  usedMemoryPeakHuman: string
  maxmemory: number
  maxmemoryHuman: string
  maxmemoryPolicy: string
  evictedKeys: number
  expiredKeys: number
  connectedClients: number
  opsPerS: number
  keys: Record<string, number>
}

function infoFields (text: string): Map<string, string> {
  const fields = new Map<string, string>()
  for (const line of text.split(/\r?\n/)) {
    const colon = line.indexOf(':')
    if (colon > 0 && !line.startsWith('#')) fields.set(line.slice(0, colon), line.slice(colon + 1))
  }
  return fields
}

async function redis (url: string): Promise<RedisSection> {
  // Fails fast instead of ioredis's default of retrying for ever while Redis is down.
  const client = new Redis(url, {
    lazyConnect: true,
    connectTimeout: 3000,
    commandTimeout: 3000,
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
    retryStrategy: () => null
  })
  // Without retries ioredis rejects with "Connection is closed."; the reason is in the last 'error' event.
  let lastError: unknown
  client.on('error', (error) => { lastError = error })
  try {
    await client.connect().catch((error: unknown) => { throw lastError ?? error })
    const info = infoFields(await client.info())
    const field = (name: string) => info.get(name) ?? ''
    const hits = Number(field('keyspace_hits'))
    const misses = Number(field('keyspace_misses'))
    const keys: Record<string, number> = {}
    for (const [name, value] of info) {
      if (/^db\d+$/.test(name)) keys[name] = Number(/keys=(\d+)/.exec(value)?.[1] ?? 0)
    }
    return {
      source: redact(url),
      version: field('redis_version'),
      keyspaceHits: hits,
      keyspaceMisses: misses,
      hitRatio: ratio(hits, hits + misses),
      usedMemoryHuman: field('used_memory_human'),
      usedMemoryPeakHuman: field('used_memory_peak_human'),
      maxmemory: Number(field('maxmemory')),
      maxmemoryHuman: field('maxmemory_human'),
      maxmemoryPolicy: field('maxmemory_policy'),
      evictedKeys: Number(field('evicted_keys')),
      expiredKeys: Number(field('expired_keys')),
      connectedClients: Number(field('connected_clients')),
      opsPerS: Number(field('instantaneous_ops_per_sec')),
      keys
    }
  } finally {
    client.disconnect()
  }
}

// ---- 5. the API's metrics ---------------------------------------------------------------------------------------

export interface RouteSummary {
  route: string
  requests: number
  errors5xx: number
  meanMs: number
}

export interface ApiSection {
  source: string
  requests: number
  status5xx: number
  status4xx: number
  status429: number
  rateLimitRejected: Record<string, number>
  caches: Record<string, CacheCounts>
  dependencyErrors: Record<string, number>
  nPlusOne: NPlusOneEvidence[]
  routes: RouteSummary[]
  httpInFlight: number
  dbStatementsInFlight: number
  dbPoolMax: number
  uptimeS: number | null
  residentMemoryMb: number | null
  eventLoopLagP99Ms: number | null
}

export function summarizeMetrics (metrics: MetricsSnapshot, source: string, top: number): ApiSection {
  const requests = metricSeries(metrics, 'ledger_http_request_duration_seconds_count')
  const sums = metricSeries(metrics, 'ledger_http_request_duration_seconds_sum')
  const routes = new Map<string, RouteSummary & { seconds: number }>()
  let total = 0
  let status5xx = 0
  let status4xx = 0
  let status429 = 0
  for (const { labels, value } of requests) {
    const code = labels.status_code ?? ''
    total += value
    if (code.startsWith('5')) status5xx += value
    if (code.startsWith('4')) status4xx += value
    if (code === '429') status429 += value
    const key = `${labels.method} ${labels.route}`
    const entry = routes.get(key) ?? { route: key, requests: 0, errors5xx: 0, meanMs: 0, seconds: 0 }
    entry.requests += value
    if (code.startsWith('5')) entry.errors5xx += value
    routes.set(key, entry)
  }
  for (const { labels, value } of sums) {
    const entry = routes.get(`${labels.method} ${labels.route}`)
    if (entry !== undefined) entry.seconds += value
  }
  const single = (name: string) => metrics.get(name) ?? null
  const startTime = single('process_start_time_seconds')
  const lag = single('nodejs_eventloop_lag_p99_seconds')
  const rss = single('process_resident_memory_bytes')
  return {
    source,
    requests: total,
    status5xx,
    status4xx,
    status429,
    rateLimitRejected: Object.fromEntries(sumBy(metrics, 'ledger_rate_limit_decisions_total', (l) => l.decision === 'rejected' ? l.tier : undefined)),
    caches: cacheCounts(metrics),
    dependencyErrors: Object.fromEntries(sumBy(metrics, 'ledger_dependency_errors_total', (l) => `${l.dependency} ${l.operation}`)),
    nPlusOne: metricSeries(metrics, 'ledger_db_n_plus_one_total')
      .filter((s) => s.value > 0)
      .map(({ labels, value }) => ({ route: labels.route ?? '', statement: labels.statement ?? '', rowsOf: labels.rows_of ?? '', requests: value })),
    routes: [...routes.values()]
      .map(({ seconds, ...route }) => ({ ...route, meanMs: route.requests > 0 ? seconds / route.requests * 1000 : 0 }))
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

async function api (apiUrl: string, token: string | undefined, top: number): Promise<ApiSection> {
  return summarizeMetrics(await fetchMetrics(apiUrl, token), new URL('/metrics', apiUrl).toString(), top)
}

// ---- running and printing ---------------------------------------------------------------------------------------

export interface Diagnosis {
  generatedAt: string
  connections: Section<ConnectionsSection>
  statements: Section<StatementsSection>
  pgbouncer: Section<PgBouncerSection>
  redis: Section<RedisSection>
  api: Section<ApiSection>
}

async function section<T> (url: string | undefined, missing: string, timeoutMs: number, read: (url: string) => Promise<T>): Promise<Section<T>> {
  if (url === undefined || url === '') return { ok: false, error: missing }
  try {
    return { ok: true, ...await withTimeout(read(url), timeoutMs, 'the server') }
  } catch (error) {
    return { ok: false, error: reason(error) }
  }
}

export async function diagnose (options: DiagnoseOptions): Promise<Diagnosis> {
  const pgUrl = options.directUrl ?? options.databaseUrl
  const noPg = 'no DATABASE_DIRECT_URL or DATABASE_URL'
  const [connectionsSection, statementsSection, pgbouncerSection, redisSection, apiSection] = await Promise.all([
    section(pgUrl, noPg, SECTION_TIMEOUT_MS, connections),
    section(pgUrl, noPg, SECTION_TIMEOUT_MS + options.windowS * 1000, (url) => statements(url, options.windowS, options.top)),
    // As the owner when the direct URL names one: the API's restricted role is not one of PgBouncer's stats_users.
    section(options.databaseUrl === undefined || options.directUrl === undefined ? options.databaseUrl : withUserOf(options.databaseUrl, options.directUrl),
      'no DATABASE_URL (PgBouncer)', SECTION_TIMEOUT_MS, pgbouncer),
    section(options.redisUrl, 'no REDIS_URL', SECTION_TIMEOUT_MS, redis),
    section(options.apiUrl, 'no API URL', SECTION_TIMEOUT_MS, (url) => api(url, options.metricsToken, options.top))
  ])
  if (statementsSection.ok) {
    const all = statementsSection.all ?? []
    delete statementsSection.all
    if (apiSection.ok) {
      statementsSection.hints = nPlusOneHints(apiSection.nPlusOne, all)
      statementsSection.evidence = `${apiSection.source} (ledger_db_n_plus_one_total, since the API process started)`
    }
  }
  return {
    generatedAt: new Date().toISOString(),
    connections: connectionsSection,
    statements: statementsSection,
    pgbouncer: pgbouncerSection,
    redis: redisSection,
    api: apiSection
  }
}

function shorten (query: string, width = QUERY_WIDTH): string {
  const flat = query.replace(/\s+/g, ' ').trim()
  return flat.length <= width ? flat : `${flat.slice(0, width - 1)}…`
}

const seconds = (s: number) => s >= 3600 ? `${(s / 3600).toFixed(1)} h` : s >= 60 ? `${(s / 60).toFixed(1)} min` : `${s.toFixed(1)} s`

function statementTable (rows: Statement[]): string {
  return table([
    { header: 'calls', right: true }, { header: 'calls/s', right: true }, { header: 'mean ms', right: true },
    { header: 'total ms', right: true }, { header: 'rows', right: true }, { header: 'rows/call', right: true },
    { header: 'hint' }, { header: 'query' }
  ], rows.map((s) => [
    int(s.calls), s.callsPerS.toFixed(s.callsPerS >= 10 ? 0 : 2), ms(s.meanMs), int(s.totalMs), int(s.rows),
    s.rowsPerCall.toFixed(1), s.nPlusOne === undefined ? '' : 'N+1?', shorten(s.query)
  ]))
}

export function render (d: Diagnosis): string {
  const out: string[] = [`ledger-api diagnose  ${d.generatedAt}`, '']
  const head = (title: string, s: Section<{ source: string }>) => {
    out.push(`== ${title}${s.ok ? `  (${s.source})` : ''}`)
    if (!s.ok) out.push(`  unavailable: ${s.error}`, '')
    return s.ok
  }

  if (head('1. PostgreSQL connections (pg_stat_activity, client backends)', d.connections) && d.connections.ok) {
    const c = d.connections
    out.push(`  ${int(c.total)} of max_connections ${int(c.maxConnections)} in use (diagnostics connections not counted)`)
    out.push(table([
      { header: 'database' }, { header: 'user' }, { header: 'state' }, { header: 'wait_event' },
      { header: 'conns', right: true }, { header: 'longest in state', right: true }, { header: 'oldest xact', right: true }
    ], c.groups.map((g) => [g.database, g.user, g.state || '-', g.wait || '-', int(g.connections), seconds(g.longestInStateS), g.oldestXactS > 0 ? seconds(g.oldestXactS) : '-'])))
    out.push('')
  }

  if (head('2. Top statements (pg_stat_statements)', d.statements) && d.statements.ok) {
    const s = d.statements
    out.push(`  database ${s.database}, counted ${s.window}`)
    out.push('  by calls:', statementTable(s.byCalls), '  by total time:', statementTable(s.byTotalTime))
    for (const hint of s.hints) out.push(`  ${hint}`)
    if (s.evidence === 'none') out.push('  N+1: no evidence (the API\'s /metrics could not be read; hints come only from its per-request counts)')
    else if (s.hints.length === 0) out.push(`  no request ran a statement once per row of another (no N+1 seen by ${s.evidence})`)
    out.push('')
  }

  if (head('3. PgBouncer (SHOW POOLS, SHOW STATS)', d.pgbouncer) && d.pgbouncer.ok) {
    const p = d.pgbouncer
    out.push(`  ${p.version}`)
    out.push(table([
      { header: 'database' }, { header: 'user' }, { header: 'cl_active', right: true }, { header: 'cl_waiting', right: true },
      { header: 'sv_active', right: true }, { header: 'sv_idle', right: true }, { header: 'sv_used', right: true },
      { header: 'maxwait s', right: true }, { header: 'mode' }
    ], p.pools.map((r) => [r.database, r.user, int(r.clActive), int(r.clWaiting), int(r.svActive), int(r.svIdle), int(r.svUsed), r.maxwaitS.toFixed(2), r.poolMode])))
    out.push(table([
      { header: 'database' }, { header: 'xacts', right: true }, { header: 'queries', right: true }, { header: 'xact/s', right: true },
      { header: 'query/s', right: true }, { header: 'avg xact ms', right: true }, { header: 'avg query ms', right: true }, { header: 'avg wait ms', right: true }
    ], p.stats.map((r) => [r.database, int(r.xacts), int(r.queries), int(r.xactsPerS), int(r.queriesPerS), ms(r.avgXactMs), ms(r.avgQueryMs), ms(r.avgWaitMs)])))
    const waiting = p.pools.filter((r) => r.clWaiting > 0)
    if (waiting.length > 0) out.push(`  clients are waiting for a server connection in: ${waiting.map((r) => r.database).join(', ')} (pool too small or transactions held open)`)
    out.push('')
  }

  if (head('4. Redis (INFO)', d.redis) && d.redis.ok) {
    const r = d.redis
    out.push(table([{ header: 'field' }, { header: 'value' }], [
      ['version', r.version],
      ['keyspace hit ratio', `${pct(r.hitRatio)} (${int(r.keyspaceHits)} hits, ${int(r.keyspaceMisses)} misses)`],
      ['used_memory_human', `${r.usedMemoryHuman} (peak ${r.usedMemoryPeakHuman})`],
      ['maxmemory', r.maxmemory === 0 ? '0 (no limit)' : `${r.maxmemoryHuman} (${r.maxmemoryPolicy})`],
      ['evicted / expired keys', `${int(r.evictedKeys)} / ${int(r.expiredKeys)}`],
      ['clients, ops/s', `${int(r.connectedClients)}, ${int(r.opsPerS)}`],
      ['keys', Object.entries(r.keys).map(([db, n]) => `${db}=${int(n)}`).join(' ') || 'none']
    ]))
    out.push('')
  }

  if (head('5. API metrics (GET /metrics)', d.api) && d.api.ok) {
    const a = d.api
    const caches = Object.entries(a.caches).sort(([x], [y]) => x.localeCompare(y))
      .map(([name, c]) => `${name} ${pct(c.hitRatio)} (${int(c.hits)}/${int(c.hits + c.misses)})`).join(', ') || 'no lookups yet'
    const counts = (record: Record<string, number>) => Object.entries(record).map(([k, v]) => `${k} ${int(v)}`).join(', ') || 'none'
    out.push(table([{ header: 'field' }, { header: 'value' }], [
      ['requests', `${int(a.requests)} (5xx ${int(a.status5xx)}, 4xx ${int(a.status4xx)}, 429 ${int(a.status429)})`],
      ['rate limit rejections', counts(a.rateLimitRejected)],
      ['cache hit ratio', caches],
      ['dependency errors', counts(a.dependencyErrors)],
      ['in flight', `${int(a.httpInFlight)} requests, ${int(a.dbStatementsInFlight)} SQL statements (pool max ${int(a.dbPoolMax)})`],
      ['process', [
        a.uptimeS === null ? undefined : `up ${seconds(a.uptimeS)}`,
        a.residentMemoryMb === null ? undefined : `RSS ${a.residentMemoryMb.toFixed(0)} MB`,
        a.eventLoopLagP99Ms === null ? undefined : `event loop lag p99 ${ms(a.eventLoopLagP99Ms)} ms`
      ].filter(Boolean).join(', ')]
    ]))
    if (a.routes.length > 0) {
      out.push(table([{ header: 'route' }, { header: 'requests', right: true }, { header: '5xx', right: true }, { header: 'mean ms', right: true }],
        a.routes.map((r) => [r.route, int(r.requests), int(r.errors5xx), ms(r.meanMs)])))
    }
    out.push('')
  }
  return out.join('\n')
}

/** DATABASE_URL / DATABASE_DIRECT_URL / REDIS_URL from the environment; what is unset comes from `stack.sh env`. */
export function resolveTargets (env: NodeJS.ProcessEnv, flags: Partial<Targets>): Omit<Targets, 'apiUrl' | 'metricsToken'> {
  const targets = {
    databaseUrl: flags.databaseUrl ?? (env.DATABASE_URL || undefined),
    directUrl: flags.directUrl ?? (env.DATABASE_DIRECT_URL || undefined),
    redisUrl: flags.redisUrl ?? (env.REDIS_URL || undefined)
  }
  if (targets.databaseUrl !== undefined && targets.redisUrl !== undefined) return targets
  let local: Record<string, string>
  try {
    local = readStackEnv()
  } catch {
    return targets
  }
  // The direct URL is only borrowed from the stack together with its PgBouncer URL, never mixed with another.
  const fromStack = targets.databaseUrl === undefined
  return {
    databaseUrl: targets.databaseUrl ?? local.DATABASE_URL,
    directUrl: targets.directUrl ?? (fromStack ? local.DATABASE_DIRECT_URL : undefined),
    redisUrl: targets.redisUrl ?? local.REDIS_URL
  }
}

const usage = `usage: npm run diagnose -- [--api URL] [--metrics-token T] [--json] [--window S] [--top N]
                               [--database-url URL] [--direct-url URL] [--redis-url URL]
  --api            the API's base URL (default http://127.0.0.1:$PORT, PORT defaulting to 3000)
  --metrics-token  bearer token for GET /metrics (default: $METRICS_TOKEN)
  --window S       count statement calls over the next S seconds instead of since the last reset (0-300)
  --top N          rows per statement and route table (default 10)
  --json           one JSON object instead of text
  database, direct and Redis URLs default to DATABASE_URL, DATABASE_DIRECT_URL and REDIS_URL, then to the local stack`

if (import.meta.main) {
  let values
  try {
    ({ values } = parseArgs({
      options: {
        api: { type: 'string' },
        'metrics-token': { type: 'string' },
        json: { type: 'boolean', default: false },
        window: { type: 'string', default: '0' },
        top: { type: 'string', default: '10' },
        'database-url': { type: 'string' },
        'direct-url': { type: 'string' },
        'redis-url': { type: 'string' },
        help: { type: 'boolean', default: false }
      }
    }))
  } catch (error) {
    console.error(`${reason(error)}\n${usage}`)
    process.exit(2)
  }
  const windowS = Number(values.window)
  const top = Number(values.top)
  const apiUrl = values.api ?? `http://127.0.0.1:${process.env.PORT || 3000}`
  if (values.help || !(windowS >= 0 && windowS <= 300) || !Number.isInteger(top) || top < 1 || !URL.canParse(apiUrl)) {
    console.error(usage)
    process.exit(values.help ? 0 : 2)
  }
  const targets = resolveTargets(process.env, { databaseUrl: values['database-url'], directUrl: values['direct-url'], redisUrl: values['redis-url'] })
  const result = await diagnose({ ...targets, apiUrl, metricsToken: values['metrics-token'] ?? (process.env.METRICS_TOKEN || undefined), windowS, top })
  process.stdout.write(values.json ? `${JSON.stringify(result, null, 2)}\n` : `${render(result)}\n`)
}
