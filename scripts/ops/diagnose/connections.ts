// 1. PostgreSQL connections: client backends of pg_stat_activity grouped by database, user, state and wait event.
import { closeSql, DIAGNOSTICS_APPLICATION_NAME, diagnosticSql } from '../diagnostic-sql.ts'
import { columns, int, redact, seconds, table } from '../format.ts'

export const title = '1. PostgreSQL connections (pg_stat_activity, client backends)'

export interface ConnectionGroup {
  database: string
  user: string
  state: string
  wait: string
  connections: number
  longestInStateS: number
  oldestXactS: number
}

export type Data = Awaited<ReturnType<typeof read>>

export async function read (url: string) {
  const sql = diagnosticSql(url)
  try {
    // Client backends only (not autovacuum, walwriter...), and not this script's own connections.
    const groups = await sql<ConnectionGroup[]>`
      select coalesce(datname, '') as database, coalesce(usename, '') as user, coalesce(state, '') as state,
             coalesce(wait_event_type || ':' || wait_event, '') as wait, count(*)::int as connections,
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

export function render (c: Data): string[] {
  return [
    `  ${int(c.total)} of max_connections ${int(c.maxConnections)} in use (diagnostics connections not counted)`,
    table(columns('database', 'user', 'state', 'wait_event', '>conns', '>longest in state', '>oldest xact'), c.groups.map((g) =>
      [g.database, g.user, g.state || '-', g.wait || '-', int(g.connections), seconds(g.longestInStateS), g.oldestXactS > 0 ? seconds(g.oldestXactS) : '-']))
  ]
}
