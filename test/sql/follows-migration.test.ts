// sql/012_follows.sql on a database that holds posts in the old shape (one row per feed entry, user_id = whose feed):
// every post stays on exactly the feed it was on, and the feed page query reads them back in the same order.
import { cp, mkdir, mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import postgres from 'postgres'
import t from 'tap'
import { feedPageQuery } from '../../routes/social/repository.ts'
import { dropDatabase, recreateDatabase, withDatabase } from '../../scripts/local-stack.ts'
import { migrate } from '../../scripts/migrate.ts'

const directUrl = process.env.DATABASE_DIRECT_URL ?? process.env.DATABASE_URL ?? ''
const scratch = `ledger_follows_migration_${process.pid}`
const url = withDatabase(directUrl, scratch)
const sqlDir = fileURLToPath(new URL('../../sql/', import.meta.url))

// Creating and dropping databases is the superuser's (the test runner sets DATABASE_ADMIN_URL for its stack).
const adminUrl = process.env.DATABASE_ADMIN_URL ?? directUrl
t.before(() => recreateDatabase(adminUrl, scratch))
t.teardown(() => dropDatabase(adminUrl, scratch))

t.test('existing posts stay on the feeds they are on', async (t) => {
  // The migrations as released before 012, then 012 on top of data written in the old shape.
  const dir = await mkdtemp(join(tmpdir(), 'ledger-follows-migration-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  // The function files that schema had; later ones may name tables only later migrations make.
  await mkdir(join(dir, 'functions'))
  for (const name of ['post_transaction.sql', 'purge_idempotency_keys.sql']) await cp(join(sqlDir, 'functions', name), join(dir, 'functions', name))
  const versioned = (await readdir(sqlDir)).filter((name) => /^\d{3}_.*\.sql$/.test(name)).sort()
  for (const name of versioned.filter((name) => name < '012')) await cp(join(sqlDir, name), join(dir, name))
  await migrate(url, () => {}, { dir })

  const sql = postgres(url, { max: 1, onnotice: () => {} })
  t.teardown(() => sql.end({ timeout: 5 }))
  const [ada, bob, cy] = await sql<{ id: string }[]>`
    insert into users (email, name, password_hash)
    values ('ada@migration.test', 'Ada', '!'), ('bob@migration.test', 'Bob', '!'), ('cy@migration.test', 'Cy', '!')
    returning id`
  // Ada's own posts, Bob's post on Ada's feed (the old POST /posts { userId }), Cy's on Bob's, two sharing a time.
  await sql`
    insert into posts (user_id, author_id, body, created_at) values
      (${ada!.id}, ${ada!.id}, 'ada 1', '2025-01-01 00:00:00.000001+00'),
      (${ada!.id}, ${bob!.id}, 'bob on ada', '2025-01-01 00:00:00.000002+00'),
      (${ada!.id}, ${ada!.id}, 'ada 2', '2025-01-01 00:00:00.000002+00'),
      (${bob!.id}, ${cy!.id}, 'cy on bob', '2025-01-02 00:00:00+00')`
  const before = await sql<{ id: string, user_id: string, author_id: string, body: string, created_at: Date }[]>`
    select id, user_id, author_id, body, created_at from posts order by id`

  for (const name of versioned.filter((name) => name >= '012')) await cp(join(sqlDir, name), join(dir, name))
  const result = await migrate(url, () => {}, { dir })
  t.ok(result.applied.includes('012_follows.sql'))

  const after = await sql<{ id: string, feed_user_id: string, author_id: string, body: string, created_at: Date }[]>`
    select p.id, f.feed_user_id, p.author_id, p.body, p.created_at
      from posts p join feed_items f on f.post_id = p.id and f.created_at = p.created_at
     order by p.id`
  t.same(after.map((row) => ({ ...row, user_id: row.feed_user_id, feed_user_id: undefined })), before.map((row) => ({ ...row, feed_user_id: undefined })),
    'each post once, on the feed it was on, with its author, body and time')
  const [{ count } = { count: -1 }] = await sql<{ count: number }[]>`select count(*)::int as count from feed_items`
  t.equal(count, 4, 'and on no other feed')
  const columns = (await sql<{ column_name: string }[]>`
    select column_name from information_schema.columns where table_name = 'posts' order by ordinal_position`).map((row) => row.column_name)
  t.same(columns, ['id', 'author_id', 'body', 'created_at', 'deleted_at'])

  const page = await feedPageQuery(sql, ada!.id, 20)
  t.same(page.map((row) => row.body), ['ada 2', 'bob on ada', 'ada 1'], "Ada's feed reads back newest first, ties by id")
  t.same((await feedPageQuery(sql, bob!.id, 20)).map((row) => [row.body, row.author_name]), [['cy on bob', 'Cy']])
  t.same(await feedPageQuery(sql, cy!.id, 20), [], "Cy's feed is as empty as before")
})
