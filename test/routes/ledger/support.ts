// Shared pieces of the ledger's route tests: what the database holds for a user, and the ledger's invariants for a
// set of users.
import type { Test } from 'tap'
import { ledgerInvariants } from '../../../scripts/ops/reconcile.ts'
import type { testSql } from '../../helper.ts'

type Sql = ReturnType<typeof testSql>

/** A user's balance in a currency, or null when they have no balance row in it. */
export async function balance (sql: Sql, userId: string, currency = 'USD'): Promise<number | null> {
  const [row] = await sql`select balance from balances where user_id = ${userId} and currency = ${currency}`
  return row === undefined ? null : Number(row.balance)
}

/** How many transactions move money from or to a user. */
export async function transactionCount (sql: Sql, userId: string): Promise<number> {
  const [row] = await sql`select count(*)::int as n from transactions where from_user_id = ${userId} or to_user_id = ${userId}`
  return row?.n as number
}

/** The ledger's invariants (sql/functions/ledger_invariants.sql) for a set of users who only trade among themselves. */
export async function assertLedgerBalanced (t: Pick<Test, 'same'>, sql: Sql, userIds: string[]) {
  for (const check of await ledgerInvariants(sql, userIds)) t.same(check.offending, [], `${check.name} (${check.checked})`)
}
