// The ledger's invariants, read through their one definition: ledger_invariants() (sql/functions/ledger_invariants.sql).
// The operator's `npm run reconcile` (scripts/ops/reconcile.ts), the ledger check every API process takes part in
// (routes/ledger/ledger-check.ts), the fault suite and the route tests all run it, so a rule added there is checked
// everywhere at once.
import type postgres from 'postgres'

type Sql = postgres.Sql
type TransactionSql = postgres.TransactionSql

export interface ReconcileCheck {
  name: string
  ok: boolean
  /** What was compared, for the operator: row counts and totals. */
  checked: string
  /** Up to 20 offending rows, each naming its ids (user and currency, transaction id, client and reference). */
  offending: Array<Record<string, unknown>>
}

/** The options every caller of the snapshot uses: one consistent view, and no write can slip in. */
export const SNAPSHOT = 'isolation level repeatable read read only'

/**
 * ledger_invariants() over the whole ledger (four invariants), or over `userIds`, users who trade only among
 * themselves (a test's users), which adds three that hold for such a set (it reads idempotency_keys: the owner's
 * connection). The function is STABLE: its statements read one snapshot.
 */
export async function ledgerInvariants (sql: Sql | TransactionSql, userIds?: string[]): Promise<ReconcileCheck[]> {
  const rows = await sql<Array<{ invariant: string, checked: string, offending: Array<Record<string, unknown>> }>>`
    select invariant, checked, offending from ledger_invariants(${userIds ?? null}::uuid[])`
  return rows.map((row) => ({ name: row.invariant, ok: row.offending.length === 0, checked: row.checked, offending: row.offending }))
}

/**
 * The whole-ledger check inside `tx` (a SNAPSHOT transaction). `statementTimeoutMs` replaces the database's 5 s guard
 * rail for this transaction only: scans of millions of rows take longer (0: none, for the operator's command).
 */
export async function checkLedger (tx: TransactionSql, statementTimeoutMs: number): Promise<ReconcileCheck[]> {
  await tx`select set_config('statement_timeout', ${String(statementTimeoutMs)}, true)`
  return ledgerInvariants(tx)
}

/** The whole check in a snapshot of its own, without a statement timeout (the operator's command). */
export async function reconcileLedger (sql: Sql): Promise<ReconcileCheck[]> {
  return sql.begin(SNAPSHOT, (tx) => checkLedger(tx, 0))
}
