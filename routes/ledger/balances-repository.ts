import type { Sql } from '../../plugins/database/index.ts'
import { toMinorUnits } from './money.ts'

export async function listBalances (sql: Sql, userId: string) {
  const rows = await sql<{ currency: string, balance: string }[]>`
    select currency, balance from balances where user_id = ${userId} order by currency`
  return rows.map((row) => ({ currency: row.currency, balance: toMinorUnits(row.balance) }))
}
