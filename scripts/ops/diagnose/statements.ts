// 2. Top statements of pg_stat_statements by calls and by total time, with calls per second, and the N+1s the API
// itself counted (section 5) matched to them.
import { closeSql, diagnosticSql } from '../diagnostic-sql.ts'
import { columns, int, ms, redact, shorten, table } from '../format.ts'

export const title = '2. Top statements (pg_stat_statements)'
const QUERY_WIDTH = 72

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

export type Data = Awaited<ReturnType<typeof read>>

async function totals (sql: ReturnType<typeof diagnosticSql>): Promise<StatementTotals[]> {
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

/**
 * N+1 hints from evidence only: the API counts, per request, which statement shapes it ran and how many rows each
 * returned, and exports `ledger_db_n_plus_one_total{route,statement,rows_of}` for a request that ran a statement
 * once per row of another of its statements (plugins/metrics/index.ts, nPlusOnes). Statements that merely ran as often
 * as each other across requests are never related. The matching pg_stat_statements rows are marked.
 */
export function nPlusOneHints (evidence: NPlusOneEvidence[], statements: Statement[]): string[] {
  return [...evidence].sort((a, b) => b.requests - a.requests).map((e) => {
    const matches = statements.filter((s) => shorten(s.query, Infinity).startsWith(e.statement))
    for (const s of matches) s.nPlusOne = `runs once per row of: ${shorten(e.rowsOf, 60)} (${e.route})`
    const calls = matches.reduce((sum, s) => sum + s.calls, 0)
    return `N+1? ${shorten(e.statement, 50)} ran once per row of ${shorten(e.rowsOf, 50)} in ${int(e.requests)} requests of ${e.route}` +
      (matches.length > 0 ? ` (${int(calls)} calls in pg_stat_statements)` : '')
  })
}

/** `windowS` 0: calls per second since pg_stat_statements was last reset; else over a window of this many seconds. */
export async function read (url: string, { windowS, top }: { windowS: number, top: number }) {
  const sql = diagnosticSql(url)
  try {
    const [info] = await sql<{ database: string }[]>`select current_database() as database`
    let rows: StatementTotals[]
    let seconds: number
    let window: string
    if (windowS > 0) {
      const first = new Map((await totals(sql)).map((s) => [s.id, s]))
      const started = performance.now()
      await new Promise((resolve) => setTimeout(resolve, windowS * 1000))
      const last = await totals(sql)
      seconds = (performance.now() - started) / 1000
      window = `the last ${seconds.toFixed(1)} s`
      rows = last.map((s) => {
        const before = first.get(s.id)
        return before === undefined ? s : { ...s, calls: s.calls - before.calls, totalMs: s.totalMs - before.totalMs, rows: s.rows - before.rows }
      }).filter((s) => s.calls > 0)
    } else {
      rows = await totals(sql)
      // pg_stat_statements_info exists from PostgreSQL 14; older servers give totals without a rate.
      const [reset] = await sql<{ seconds: number, since: string }[]>`
        select extract(epoch from now() - stats_reset)::float8 as seconds, to_char(stats_reset, 'YYYY-MM-DD HH24:MI:SS TZ') as since
          from pg_stat_statements_info`.catch(() => [])
      seconds = reset?.seconds ?? 0
      window = reset === undefined ? 'since the statistics were last reset' : `since ${reset.since} (${int(seconds)} s)`
    }
    const all: Statement[] = rows.map((s) => ({
      ...s,
      meanMs: s.calls > 0 ? s.totalMs / s.calls : 0,
      callsPerS: seconds > 0 ? s.calls / seconds : 0,
      rowsPerCall: s.calls > 0 ? s.rows / s.calls : 0
    }))
    const topBy = (key: 'calls' | 'totalMs') => [...all].sort((a, b) => b[key] - a[key]).slice(0, top)
    return {
      source: redact(url),
      database: info?.database ?? '',
      /** What calls and calls per second are counted over. */
      window,
      seconds,
      byCalls: topBy('calls'),
      byTotalTime: topBy('totalMs'),
      /** Every statement of the window, for matching the API's N+1 evidence; diagnose() drops it from the output. */
      all: all as Statement[] | undefined,
      /** Filled in by diagnose() from the API's N+1 evidence. */
      hints: [] as string[],
      /** Where the N+1 hints come from: the API's metrics, or 'none' when they could not be read. */
      evidence: 'none'
    }
  } catch (error) {
    const code = (error as { code?: string }).code
    if (code === '42P01') throw new Error('pg_stat_statements is not installed in this database (`npm run migrate` creates it: sql/005)')
    if (code === '55000') throw new Error('pg_stat_statements must be in shared_preload_libraries')
    throw error
  } finally {
    await closeSql(sql)
  }
}

const statementTable = (rows: Statement[]) =>
  table(columns('>calls', '>calls/s', '>mean ms', '>total ms', '>rows', '>rows/call', 'hint', 'query'), rows.map((s) => [
    int(s.calls), s.callsPerS.toFixed(s.callsPerS >= 10 ? 0 : 2), ms(s.meanMs), int(s.totalMs), int(s.rows),
    s.rowsPerCall.toFixed(1), s.nPlusOne === undefined ? '' : 'N+1?', shorten(s.query, QUERY_WIDTH)
  ]))

export function render (s: Data): string[] {
  return [
    `  database ${s.database}, counted ${s.window}`,
    '  by calls:', statementTable(s.byCalls), '  by total time:', statementTable(s.byTotalTime),
    ...s.hints.map((hint) => `  ${hint}`),
    ...s.evidence === 'none'
      ? ['  N+1: no evidence (the API\'s /metrics could not be read; hints come only from its per-request counts)']
      : s.hints.length === 0 ? [`  no request ran a statement once per row of another (no N+1 seen by ${s.evidence})`] : []
  ]
}
