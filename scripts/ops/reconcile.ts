// `npm run reconcile`: checks the ledger's invariants over the whole database and exits 0 only when all hold.
// Like `npm start` it uses the configured database (DATABASE_DIRECT_URL, else DATABASE_URL: read-only work, so the
// API's role will do) or else the project-local stack. Every check is one aggregate statement and all of them read
// one snapshot (REPEATABLE READ), so writes landing meanwhile cannot make a correct ledger look broken.
//   1 per currency, the sum of balances equals deposits minus withdrawals
//   2 every balance equals the sum of its entries (and no entries exist without a balance row)
//   3 every transaction's entries match it: a transfer's two entries sum to zero (-amount, +amount), a deposit's
//     or withdrawal's single entry is +amount or -amount on the right user
//   4 no client's settlement reference is held by two transactions
import postgres from 'postgres'
import { localStackUp } from '../local-stack.ts'
import { migrate } from '../migrate.ts'

type Sql = postgres.Sql

export interface ReconcileCheck {
  name: string
  ok: boolean
  /** What was compared, for the operator: row counts and totals. */
  checked: string
  /** Up to 20 offending rows. */
  offending: Array<Record<string, unknown>>
}

const SAMPLE = 20

export async function reconcileLedger (sql: Sql): Promise<ReconcileCheck[]> {
  return sql.begin('isolation level repeatable read read only', async (tx) => {
    // Scans of millions of rows may take longer than the database's 5 s guard rail; only this transaction waives it.
    await tx`set local statement_timeout = 0`
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
