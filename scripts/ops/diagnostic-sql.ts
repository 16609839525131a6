import postgres from 'postgres'

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
