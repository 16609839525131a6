// `npm run explain`: shows how PostgreSQL runs the feed page query at a realistic size, and fails if it would
// scan the whole posts table. Uses DATABASE_DIRECT_URL or DATABASE_URL when set; otherwise brings up the
// project-local stack and uses a database of its own there (ledger_explain, recreated on every run, so the
// development database gets neither 200,000 seed rows nor migrations frozen while they are still being
// written). Either way it applies pending migrations, seeds a namespace of its own once (users
// `explain-<n>@example.test`; skipped when they are already there), refreshes statistics and prints
// EXPLAIN (ANALYZE, BUFFERS) of the first page and of a deep page of the largest feed.
//
// The statement explained is the one the API runs: feedPageQuery() from routes/social/repository.ts, embedded as a
// postgres.js fragment, so the text (and the parameter binding, prepare: false as behind PgBouncer) cannot drift.
import postgres from 'postgres'
import { feedPageQuery } from '../../routes/social/repository.ts'
import { FEED_DEFAULT_LIMIT, type FeedPosition } from '../../routes/social/schemas.ts'
import { localStackUp, recreateDatabase, withDatabase } from '../local-stack.ts'
import { migrate } from '../migrate.ts'

const USERS = 1000
const POSTS = 200_000
// A quarter of all posts land on one feed (explain-1), the rest spread evenly over the other 999 users (about
// 150 each). Real feeds are skewed like this, and only a big feed shows whether a deep page stays cheap.
const HEAVY_FEED_SHARE = 4
// The deep page starts this many posts before the oldest post of the big feed, about 40,000 posts deep: deep
// enough that OFFSET would read 40,000 rows, with enough rows after it that the planner still sees a big range.
const DEEP_PAGE_FROM_END = 10_000

const EMAIL_PATTERN = 'explain-%@example.test'
const LOCAL_DATABASE = 'ledger_explain'

type Sql = postgres.Sql

async function seed (sql: Sql, log: (line: string) => void) {
  await sql.begin(async (tx) => {
    // Seeding takes longer than the database's 5 s statement_timeout guard rail (sql/001); only here.
    await tx`set local statement_timeout = 0`
    // Two runs at once wait for each other instead of seeding twice.
    await tx`select pg_advisory_xact_lock(hashtext('ledger-api:explain-seed'))`
    const [existing] = await tx<{ users: number, posts: number }[]>`
      select (select count(*)::int from users where email like ${EMAIL_PATTERN}) as users,
             (select count(*)::int from feed_items f join users u on u.id = f.feed_user_id where u.email = 'explain-1@example.test') as posts`
    if (existing !== undefined && existing.users >= USERS && existing.posts > 0) {
      log(`seed: ${existing.users} explain users already present, skipped`)
      return
    }
    const started = performance.now()
    // '!' is not a password hash the API accepts, so these users can never log in.
    await tx`
      insert into users (email, name, password_hash)
      select 'explain-' || n || '@example.test', 'Explain User ' || n, '!'
        from generate_series(1, ${USERS}::int) n
      on conflict (email) do nothing`
    // Set-based: one INSERT ... SELECT over generate_series for the posts, one for their feed rows. Pairs of posts
    // share a created_at, so the id tie-break is exercised too; authors are spread over all users by a
    // multiplicative hash. Each post is on one feed (as if each feed owner followed its author).
    await tx`
      with seeded as (
        select array_agg(id order by substring(email from '^explain-([0-9]+)@')::int) as ids
          from users where email like ${EMAIL_PATTERN}
      ), planned as (
        select g, ids[case when g % ${HEAVY_FEED_SHARE}::int = 0 then 1 else 2 + g % (${USERS}::int - 1) end] as feed_user_id,
               ids[1 + (g * 7919) % ${USERS}::int] as author_id,
               timestamptz '2025-01-01 00:00:00+00' - (g / 2) * interval '7 seconds' - (g % 1000) * interval '1 microsecond' as created_at
          from generate_series(1, ${POSTS}::int) g, seeded
      ), inserted as (
        insert into posts (author_id, body, created_at)
        select author_id, 'explain post ' || g || ': ' || repeat('lorem ipsum ', 1 + g % 20), created_at from planned order by g
        returning id, created_at
      )
      insert into feed_items (feed_user_id, post_id, created_at)
      select p.feed_user_id, i.id, i.created_at
        from (select id, created_at, row_number() over (order by id) as g from inserted) i
        join planned p on p.g = i.g`
    log(`seed: ${USERS} users and ${POSTS} posts inserted in ${Math.round(performance.now() - started)} ms`)
  })
  // After the commit, so the statistics count the new rows as live.
  await sql.begin(async (tx) => {
    await tx`set local statement_timeout = 0`
    await tx`analyze users`
    await tx`analyze posts`
    await tx`analyze feed_items`
  })
}

async function explain (sql: Sql, title: string, userId: string, after?: FeedPosition): Promise<string> {
  // One plain run first: the plan printed is the steady state (warm buffers), not the first read after a seed.
  await feedPageQuery(sql, userId, FEED_DEFAULT_LIMIT, after)
  const rows = await sql<{ 'QUERY PLAN': string }[]>`explain (analyze, buffers) ${feedPageQuery(sql, userId, FEED_DEFAULT_LIMIT, after)}`
  const plan = rows.map((row) => row['QUERY PLAN']).join('\n')
  console.log(`\n== ${title}\n${plan}`)
  return plan
}

async function main (): Promise<number> {
  let url = process.env.DATABASE_DIRECT_URL || process.env.DATABASE_URL
  if (!url) {
    const stack = localStackUp()
    await recreateDatabase(stack.DATABASE_ADMIN_URL, LOCAL_DATABASE)
    url = withDatabase(stack.DATABASE_DIRECT_URL, LOCAL_DATABASE)
  }
  const migrated = await migrate(url)
  console.error(`migrations: ${migrated.applied.length} applied, ${migrated.skipped} already in place`)

  const sql = postgres(url, { max: 1, prepare: false, onnotice: () => {} })
  try {
    await seed(sql, (line) => console.error(line))
    const [feed] = await sql<{ id: string, posts: number }[]>`
      select u.id, (select count(*)::int from feed_items f where f.feed_user_id = u.id) as posts
        from users u where u.email = 'explain-1@example.test'`
    if (feed === undefined) throw new Error('the explain-1 user is missing after seeding')
    // The position DEEP_PAGE_FROM_END posts before the oldest one, read as the API's cursor would carry it.
    const oldest = await sql<{ t: string, i: string }[]>`
      select to_char(created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as t, post_id::text as i
        from feed_items where feed_user_id = ${feed.id}
       order by created_at, post_id
       limit ${DEEP_PAGE_FROM_END}`
    const deep = oldest.at(-1)
    if (deep === undefined) throw new Error('the explain-1 feed is empty')

    const plans = [
      await explain(sql, `first page of a ${feed.posts}-post feed (limit ${FEED_DEFAULT_LIMIT})`, feed.id),
      await explain(sql, `deep page: ${feed.posts - DEEP_PAGE_FROM_END} posts in, cursor (${deep.t}, ${deep.i})`, feed.id, deep)
    ]

    const problems: string[] = []
    if (plans.some((plan) => /Seq Scan on (posts|feed_items)/.test(plan))) problems.push('a plan scans a whole table (Seq Scan on posts or feed_items)')
    if (!plans.every((plan) => plan.includes('feed_items_page_idx'))) problems.push('a plan does not use feed_items_page_idx')
    if (problems.length > 0) {
      console.error(`\nexplain: FAILED: ${problems.join('; ')}`)
      return 1
    }
    console.error('\nexplain: ok, both pages are an index range scan of feed_items_page_idx')
    return 0
  } finally {
    await sql.end({ timeout: 5 })
  }
}

try {
  process.exitCode = await main()
} catch (error) {
  console.error('explain failed:', error instanceof Error ? error.message : error)
  process.exitCode = 1
}
