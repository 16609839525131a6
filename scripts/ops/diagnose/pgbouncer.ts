// 3. PgBouncer's admin console: SHOW POOLS and SHOW STATS.
import { closeSql, diagnosticSql } from '../diagnostic-sql.ts'
import { columns, int, ms, reason, redact, table } from '../format.ts'

export const title = '3. PgBouncer (SHOW POOLS, SHOW STATS)'

type AdminRow = Record<string, string | number | null>
const num = (value: unknown) => Number(value ?? 0)

export type Data = Awaited<ReturnType<typeof read>>

export async function read (url: string) {
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

export function render (p: Data): string[] {
  const waiting = p.pools.filter((r) => r.clWaiting > 0)
  return [
    `  ${p.version}`,
    table(columns('database', 'user', '>cl_active', '>cl_waiting', '>sv_active', '>sv_idle', '>sv_used', '>maxwait s', 'mode'), p.pools.map((r) =>
      [r.database, r.user, int(r.clActive), int(r.clWaiting), int(r.svActive), int(r.svIdle), int(r.svUsed), r.maxwaitS.toFixed(2), r.poolMode])),
    table(columns('database', '>xacts', '>queries', '>xact/s', '>query/s', '>avg xact ms', '>avg query ms', '>avg wait ms'), p.stats.map((r) =>
      [r.database, int(r.xacts), int(r.queries), int(r.xactsPerS), int(r.queriesPerS), ms(r.avgXactMs), ms(r.avgQueryMs), ms(r.avgWaitMs)])),
    ...waiting.length > 0 ? [`  clients are waiting for a server connection in: ${waiting.map((r) => r.database).join(', ')} (pool too small or transactions held open)`] : []
  ]
}
