// The ledger's invariants, checked over the whole database: one implementation for the operator's
// `npm run reconcile` (scripts/ops/reconcile.ts) and the ledger check every API process takes part in
// (routes/ledger/ledger-check.ts). Every check is one aggregate statement, and all of them read one snapshot
// (REPEATABLE READ, read only), so writes landing meanwhile cannot make a correct ledger look broken.
//   1 per currency, the sum of balances equals deposits minus withdrawals
//   2 every balance equals the sum of its entries (and no entries exist without a balance row)
//   3 every transaction's entries match it: a transfer's two entries sum to zero (-amount, +amount), a deposit's
//     or withdrawal's single entry is +amount or -amount on the right user
//   4 no client's settlement reference is held by two transactions
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

const SAMPLE = 20

/** The options every caller of the snapshot uses: one consistent view, and no write can slip in. */
export const SNAPSHOT = 'isolation level repeatable read read only'

/**
 * Runs the four checks inside `tx`, which must be a REPEATABLE READ transaction (see SNAPSHOT) so that they all
 * read one snapshot. `statementTimeoutMs` replaces the database's 5 s guard rail for this transaction only: scans
 * of millions of rows take longer (0: none, for the operator's command).
 */
export async function checkLedger (tx: TransactionSql, statementTimeoutMs: number): Promise<ReconcileCheck[]> {
  await tx`select set_config('statement_timeout', ${String(statementTimeoutMs)}, true)`
  const totals = await tx<Array<{ currency: string, balances: string, net: string }>>`
    with b as (select currency, sum(balance) as balances from balances group by currency),
         t as (select currency, sum(case kind when 'deposit' then amount when 'withdrawal' then -amount else 0 end) as net
                 from transactions group by currency)
    select coalesce(b.currency, t.currency) as currency, coalesce(b.balances, 0)::text as balances, coalesce(t.net, 0)::text as net
      from b full join t on t.currency = b.currency
     order by 1`
  const badTotals = totals.filter((row) => row.balances !== row.net)

  const [balanceCount] = await tx<Array<{ n: string }>>`select count(*)::text as n from balances`
  const badBalances = await tx<Array<Record<string, unknown>>>`
    with sums as (
      select e.user_id, t.currency, sum(e.delta) as entries
        from entries e join transactions t on t.id = e.transaction_id
       group by e.user_id, t.currency
    )
    select coalesce(b.user_id, s.user_id) as user_id, coalesce(b.currency, s.currency) as currency,
           b.balance::text as balance, s.entries::text as entries
      from balances b full join sums s on s.user_id = b.user_id and s.currency = b.currency
     where coalesce(b.balance, 0) <> coalesce(s.entries, 0)
     limit ${SAMPLE}`

  const [transactionCount] = await tx<Array<{ n: string }>>`select count(*)::text as n from transactions`
  const badTransactions = await tx<Array<Record<string, unknown>>>`
    select t.id::text, t.kind, t.amount::text, count(e.user_id)::int as entries, coalesce(sum(e.delta), 0)::text as delta_sum
      from transactions t left join entries e on e.transaction_id = t.id
     group by t.id
    having case t.kind
      when 'transfer' then count(e.user_id) <> 2 or coalesce(sum(e.delta), 0) <> 0
        or count(*) filter (where e.user_id = t.from_user_id and e.delta = -t.amount) <> 1
        or count(*) filter (where e.user_id = t.to_user_id and e.delta = t.amount) <> 1
      when 'deposit' then count(e.user_id) <> 1 or count(*) filter (where e.user_id = t.to_user_id and e.delta = t.amount) <> 1
      else count(e.user_id) <> 1 or count(*) filter (where e.user_id = t.from_user_id and e.delta = -t.amount) <> 1
    end
     limit ${SAMPLE}`

  const [referenceCount] = await tx<Array<{ n: string }>>`select count(*)::text as n from transactions where reference is not null`
  const reused = await tx<Array<Record<string, unknown>>>`
    select client_id, reference, count(*)::int as transactions
      from transactions where reference is not null
     group by client_id, reference having count(*) > 1
     limit ${SAMPLE}`

  return [
    {
      name: 'balances per currency = deposits - withdrawals',
      ok: badTotals.length === 0,
      checked: totals.map((row) => `${row.currency.trim()} ${row.balances} = ${row.net}`).join(', ') || 'no money yet',
      offending: badTotals.map((row) => ({ currency: row.currency.trim(), balances: row.balances, depositsMinusWithdrawals: row.net }))
    },
    { name: 'every balance = sum of its entries', ok: badBalances.length === 0, checked: `${balanceCount?.n ?? 0} balances`, offending: badBalances },
    { name: 'every transaction\'s entries match it', ok: badTransactions.length === 0, checked: `${transactionCount?.n ?? 0} transactions`, offending: badTransactions },
    { name: 'no reference used twice', ok: reused.length === 0, checked: `${referenceCount?.n ?? 0} references`, offending: reused }
  ]
}

/** The whole check in a snapshot of its own, without a statement timeout (the operator's command). */
export async function reconcileLedger (sql: Sql): Promise<ReconcileCheck[]> {
  return sql.begin(SNAPSHOT, (tx) => checkLedger(tx, 0))
}
