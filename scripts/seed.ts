// `npm run seed -- --users 5000 --user-transactions 2000000`: set-based seeding (generate_series, one
// statement per table) so millions of rows take seconds, not hours. The balances it leaves satisfy the ledger
// invariant: every seeded transaction is a deposit and the balance is credited with exactly their sum. Money
// enters only through a service client, so the deposits name one (`seed settlement`) and a unique reference each.
import { parseArgs } from 'node:util'
import postgres from 'postgres'
import { localStackUp } from './local-stack.ts'
import { migrate } from './migrate.ts'
import { createServiceClient } from '../routes/identity/clients.ts'
import { hashPassword } from '../plugins/passwords/scrypt.ts'

type Sql = postgres.Sql

export const SEED_PASSWORD = 'seeded-user-password'

/** Creates `count` users `seed-<run>-<n>@example.test` sharing one password hash; returns their ids in order. */
export async function seedUsers (sql: Sql, count: number, run: string): Promise<string[]> {
  const hash = await hashPassword(SEED_PASSWORD, 16384)
  const rows = await sql<{ id: string }[]>`
    insert into users (email, name, password_hash)
    select 'seed-' || ${run} || '-' || g || '@example.test', 'Seed User ' || g, ${hash}
      from generate_series(1, ${count}::int) g
    returning id`
  return rows.map((row) => row.id)
}

/** The service client seeded deposits name; its secret is thrown away (nobody logs in as it). */
export async function seedClient (sql: Sql, name = 'seed settlement'): Promise<string> {
  return (await createServiceClient(sql, name, ['funds:write'])).client.id
}

/**
 * Gives `userId` `count` deposits of `amount` USD from `clientId`, with their entries and the matching balance,
 * in one transaction. Uses a session with no statement timeout: this is the one place allowed to run long.
 */
export async function seedUserTransactions (sql: Sql, clientId: string, userId: string, count: number, amount = 100): Promise<void> {
  await sql.begin(async (tx) => {
    await tx`set local statement_timeout = 0`
    await tx`
      with inserted as (
        insert into transactions (kind, amount, currency, to_user_id, description, created_at, client_id, reference)
        select 'deposit', ${amount}, 'USD', ${userId}, 'seed', now() - make_interval(secs => ${count}::int - g),
               ${clientId}, 'seed-' || ${userId} || '-' || g
          from generate_series(1, ${count}::int) g
        returning id
      )
      insert into entries (user_id, transaction_id, delta)
      select ${userId}, id, ${amount} from inserted`
    await tx`
      insert into balances (user_id, currency, balance) values (${userId}, 'USD', ${count * amount})
      on conflict (user_id, currency) do update set balance = balances.balance + excluded.balance`
  })
  await sql`analyze transactions`
  await sql`analyze entries`
}

if (import.meta.main) {
  const { values } = parseArgs({
    options: {
      users: { type: 'string', default: '10' },
      'user-transactions': { type: 'string', default: '0' }
    }
  })
  const users = Number(values.users)
  const transactions = Number(values['user-transactions'])
  if (!Number.isInteger(users) || users < 1 || !Number.isInteger(transactions) || transactions < 0) {
    console.error('usage: npm run seed -- [--users N>=1] [--user-transactions N>=0]')
    process.exit(2)
  }
  const url = process.env.DATABASE_DIRECT_URL || process.env.DATABASE_URL || (() => {
    const env = localStackUp()
    return env.DATABASE_DIRECT_URL
  })()
  await migrate(url)
  const sql = postgres(url, { max: 1, onnotice: () => {} })
  try {
    const run = Date.now().toString(36)
    let started = performance.now()
    const ids = await seedUsers(sql, users, run)
    console.log(`seeded ${users} users in ${((performance.now() - started) / 1000).toFixed(1)} s (password: ${SEED_PASSWORD})`)
    if (transactions > 0) {
      started = performance.now()
      await seedUserTransactions(sql, await seedClient(sql), ids[0]!, transactions)
      console.log(`seeded ${transactions} transactions for user ${ids[0]} in ${((performance.now() - started) / 1000).toFixed(1)} s`)
    }
    console.log(JSON.stringify({ run, firstUserId: ids[0], users: ids.length }))
  } finally {
    await sql.end()
  }
}
