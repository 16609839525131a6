// Where the bench runs and what it runs on: the stack (from the environment, or the project-local one brought up
// like `npm start` does), a dedicated database recreated on every run, and set-based seed data.
import postgres from 'postgres'
import { localStackUp, pidFile, readPid, recreateDatabase as recreateDatabaseOn, withDatabase } from '../../scripts/local-stack.ts'
import { migrate } from '../../scripts/migrate.ts'
import { seedClient, seedUsers, seedUserTransactions } from '../../scripts/seed.ts'

export interface BenchEnv {
  /** Through PgBouncer, to the bench database: what the API uses. */
  databaseUrl: string
  /** Straight to PostgreSQL, bench database: seeding, cursors. */
  directUrl: string
  /** Straight to PostgreSQL as a superuser (DATABASE_ADMIN_URL), maintenance database: drop/create and bootstrap, sampling pg_stat_activity. */
  adminUrl: string
  redisUrl: string
  database: string
  /** Set when the project-local stack is used: lets the bench read process ids for CPU accounting. */
  stackDir: string | undefined
}

export function resolveEnv (database: string, redisDb: number, log: (line: string) => void): BenchEnv {
  let databaseUrl = process.env.DATABASE_URL
  let directUrl = process.env.DATABASE_DIRECT_URL
  let adminUrl = process.env.DATABASE_ADMIN_URL
  let redisUrl = process.env.REDIS_URL
  let stackDir: string | undefined
  if (!databaseUrl || !redisUrl) {
    log('DATABASE_URL/REDIS_URL not set: bringing up the project-local stack (npm run stack -- up)')
    const stack = localStackUp()
    databaseUrl = stack.DATABASE_URL
    directUrl = stack.DATABASE_DIRECT_URL
    adminUrl = stack.DATABASE_ADMIN_URL
    redisUrl = stack.REDIS_URL
    stackDir = stack.STACK_DIR
  }
  if (!directUrl) {
    log('DATABASE_DIRECT_URL not set: using DATABASE_URL for administration (drop/create may fail through a pooler)')
    directUrl = databaseUrl
  }
  const redis = new URL(redisUrl)
  redis.pathname = `/${redisDb}`
  return {
    databaseUrl: withDatabase(databaseUrl, database),
    directUrl: withDatabase(directUrl, database),
    adminUrl: withDatabase(adminUrl || directUrl, 'postgres'),
    redisUrl: redis.toString(),
    database,
    stackDir
  }
}

export function stackPids (stackDir: string | undefined) {
  if (stackDir === undefined) return {}
  return {
    postmasterPid: readPid(pidFile('postgres', stackDir)),
    pgbouncerPid: readPid(pidFile('pgbouncer', stackDir))
  }
}

export async function recreateDatabase (env: BenchEnv) {
  await recreateDatabaseOn(env.adminUrl, env.database)
  await migrate(env.directUrl)
}

export interface SeedSizes {
  users: number
  bigUserTransactions: number
  smallUserTransactions: number
  posts: number
  /** Users that exist only to be read once each (cache misses). */
  profileUsers: number
}

export interface SeedResult {
  pool: string[]
  abuserId: string
  bigUserId: string
  smallUserId: string
  profileIds: string[]
  depositPerUser: number
  /** The settlement client the seeded deposits name; the bench posts its deposits and withdrawals as it. */
  clientId: string
  seconds: Record<string, number>
}

const DEPOSIT_PER_USER = 1_000_000_000_000

/**
 * Seeds with set-based statements (scripts/seed.ts helpers where they fit). Every seeded transaction is a deposit
 * whose entries and balance are written with it, so the ledger invariant holds from the start.
 */
export async function seed (env: BenchEnv, sizes: SeedSizes, log: (line: string) => void): Promise<SeedResult> {
  const sql = postgres(env.directUrl, { max: 1, onnotice: () => {} })
  const seconds: Record<string, number> = {}
  const timed = async <T>(label: string, run: () => Promise<T>): Promise<T> => {
    const started = performance.now()
    const value = await run()
    seconds[label] = (performance.now() - started) / 1000
    log(`seed: ${label} in ${seconds[label].toFixed(1)} s`)
    return value
  }
  try {
    await timed(`${sizes.users} users`, () => seedUsers(sql, sizes.users, 'pool'))
    const [abuserId] = await seedUsers(sql, 1, 'abuser')
    const [bigUserId] = await seedUsers(sql, 1, 'big')
    const [smallUserId] = await seedUsers(sql, 1, 'small')
    const profileIds = await timed(`${sizes.profileUsers} profile-only users`, () => seedUsers(sql, sizes.profileUsers, 'profile'))
    if (abuserId === undefined || bigUserId === undefined || smallUserId === undefined) throw new Error('seedUsers returned no id')
    const clientId = await seedClient(sql, 'bench settlement')

    await timed(`deposits for ${sizes.users} users`, () => sql.begin(async (tx) => {
      await tx`set local statement_timeout = 0`
      await tx`
        with deposits as (
          insert into transactions (kind, amount, currency, to_user_id, description, client_id, reference)
          select 'deposit', ${DEPOSIT_PER_USER}, 'USD', id, 'bench seed', ${clientId}, 'bench-' || id
            from users where email like 'seed-pool-%'
          returning id, to_user_id
        )
        insert into entries (user_id, transaction_id, delta)
        select to_user_id, id, ${DEPOSIT_PER_USER} from deposits`
      await tx`
        insert into balances (user_id, currency, balance)
        select id, 'USD', ${DEPOSIT_PER_USER} from users where email like 'seed-pool-%'
        on conflict (user_id, currency) do update set balance = balances.balance + excluded.balance`
    }))

    await timed(`${sizes.bigUserTransactions} transactions for one user`, () => seedUserTransactions(sql, clientId, bigUserId, sizes.bigUserTransactions))
    await seedUserTransactions(sql, clientId, smallUserId, sizes.smallUserTransactions)

    // Feeds: each pool user's feed gets posts/users posts, written by other pool users, spread over time.
    await timed(`${sizes.posts} posts`, () => sql.begin(async (tx) => {
      await tx`set local statement_timeout = 0`
      // Each post is written once and placed on one pool user's feed (feed_items), as fan-out leaves it.
      await tx`
        with pool as (select array_agg(id order by id) as ids, count(*)::int as n from users where email like 'seed-pool-%'),
        planned as (
          select g, pool.ids[1 + g % pool.n] as feed_user_id, pool.ids[1 + ((g::bigint * 7919 + 13) % pool.n)::int] as author_id,
                 now() - make_interval(secs => ${sizes.posts}::int - g) as created_at
            from pool, generate_series(1, ${sizes.posts}::int) g
        ), inserted as (
          insert into posts (author_id, body, created_at)
          select author_id, 'Bench post ' || g || ': ' || repeat('lorem ipsum ', 1 + g % 8), created_at from planned order by g
          returning id, created_at
        )
        insert into feed_items (feed_user_id, post_id, created_at)
        select p.feed_user_id, i.id, i.created_at
          from (select id, created_at, row_number() over (order by id) as g from inserted) i
          join planned p on p.g = i.g`
    }))

    // pgbench picks users by number: this maps 1..N to the pool's ids.
    await sql`create table bench_users (n int primary key, id uuid not null unique)`
    await sql`insert into bench_users (n, id) select row_number() over (order by id), id from users where email like 'seed-pool-%'`
    // pgbench connects as the API's role, which reads only what it is granted (sql/013).
    await sql`grant select on bench_users to ledger_api`

    // Freshly written rows would otherwise get their hint bits and visibility map set during the first
    // measured reads, and autovacuum would wake up mid-run.
    await timed('vacuum analyze + checkpoint', async () => {
      await sql`vacuum analyze users, transactions, entries, balances, posts, feed_items, idempotency_keys, bench_users`
      // CHECKPOINT needs a superuser (or pg_checkpoint): the seed's WAL would otherwise start one during the runs.
      const admin = postgres(env.adminUrl, { max: 1, onnotice: () => {} })
      try {
        await admin`checkpoint`
      } catch (error) {
        log(`seed: no checkpoint (${error instanceof Error ? error.message : String(error)}): one may start during the runs`)
      } finally {
        await admin.end()
      }
    })
    const ordered = await sql<{ id: string }[]>`select id from bench_users order by n`
    return { pool: ordered.map((r) => r.id), abuserId, bigUserId, smallUserId, profileIds, depositPerUser: DEPOSIT_PER_USER, clientId, seconds }
  } finally {
    await sql.end()
  }
}

/** Transaction ids at the given depths of a user's list (newest first): positions for deep cursors. */
export async function idsAtDepths (env: BenchEnv, userId: string, depths: number[]): Promise<Array<{ depth: number, id: string }>> {
  const sql = postgres(env.directUrl, { max: 1, onnotice: () => {} })
  try {
    const out = []
    for (const depth of depths) {
      const [row] = await sql<{ id: string }[]>`
        select transaction_id::text as id from entries where user_id = ${userId}
         order by transaction_id desc offset ${depth} limit 1`
      if (row !== undefined) out.push({ depth, id: row.id })
    }
    return out
  } finally {
    await sql.end()
  }
}
