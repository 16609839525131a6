// `npm run reconcile`: checks the ledger's invariants over the whole database and exits 0 only when all hold.
// Like `npm start` it uses the configured database (DATABASE_DIRECT_URL, else DATABASE_URL: read-only work, so the
// API's role will do) or else the project-local stack. The invariants are one SQL function, ledger_invariants()
// (sql/functions/ledger_invariants.sql), which the fault suite and the route tests run through ledgerInvariants().
import postgres from 'postgres'
import { localStackUp } from '../local-stack.ts'
import { migrate } from '../migrate.ts'

export interface ReconcileCheck {
  name: string
  ok: boolean
  /** What was compared, for the operator: row counts and totals. */
  checked: string
  /** Up to 20 offending rows, each naming its ids (user and currency, transaction id, client and reference). */
  offending: Array<Record<string, unknown>>
}

/**
 * ledger_invariants() over the whole ledger, or over `userIds` (users who trade only among themselves), which adds
 * the invariants that hold for such a set's rows (reading idempotency_keys: the owner's connection).
 */
export async function ledgerInvariants (sql: postgres.Sql | postgres.TransactionSql, userIds?: string[]): Promise<ReconcileCheck[]> {
  const rows = await sql<Array<{ invariant: string, checked: string, offending: Array<Record<string, unknown>> }>>`
    select invariant, checked, offending from ledger_invariants(${userIds ?? null}::uuid[])`
  return rows.map((row) => ({ name: row.invariant, ok: row.offending.length === 0, checked: row.checked, offending: row.offending }))
}

/** The whole ledger, read only and without the database's 5 s statement timeout: scans of millions of rows take longer. */
export async function reconcileLedger (sql: postgres.Sql): Promise<ReconcileCheck[]> {
  return sql.begin('read only', async (tx) => {
    await tx`select set_config('statement_timeout', '0', true)`
    return ledgerInvariants(tx)
  })
}

export function renderReconciliation (checks: ReconcileCheck[], seconds: number): string {
  const lines = checks.flatMap((check) => [
    `${check.ok ? 'OK  ' : 'FAIL'}  ${check.name}: ${check.checked}`,
    ...check.offending.map((row) => `      ${JSON.stringify(row)}`)
  ])
  lines.push(`reconcile: ${checks.filter((c) => c.ok).length} held, ${checks.filter((c) => !c.ok).length} failed, in ${seconds.toFixed(1)} s`)
  return lines.join('\n')
}

if (import.meta.main) {
  let url = process.env.DATABASE_DIRECT_URL || process.env.DATABASE_URL
  if (url === undefined || url === '') {
    url = localStackUp().DATABASE_DIRECT_URL
    await migrate(url, (line) => console.error(line))
  }
  const sql = postgres(url, { max: 1, prepare: false, onnotice: () => {}, connect_timeout: 10, connection: { application_name: 'ledger-reconcile' } })
  const started = performance.now()
  try {
    const checks = await reconcileLedger(sql)
    console.log(renderReconciliation(checks, (performance.now() - started) / 1000))
    process.exitCode = checks.every((check) => check.ok) ? 0 : 1
  } catch (error) {
    console.error('reconcile failed:', error instanceof Error ? error.message : error)
    process.exitCode = 2
  } finally {
    await sql.end({ timeout: 5 })
  }
}
