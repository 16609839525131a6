// scripts/migrate.ts against a scratch database of its own on the test stack: versioned files once, function files
// again whenever they change, edited history refused (unless re-baselined), and a no-transaction file.
import { createHash } from 'node:crypto'
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import postgres from 'postgres'
import t, { type Test } from 'tap'
import { dropDatabase, recreateDatabase, withDatabase } from '../../scripts/local-stack.ts'
import { migrate } from '../../scripts/migrate.ts'

const directUrl = process.env.DATABASE_DIRECT_URL ?? process.env.DATABASE_URL ?? ''
const scratch = `ledger_migrate_${process.pid}`
const url = withDatabase(directUrl, scratch)
const sha256 = (text: string) => createHash('sha256').update(text).digest('hex')

// Creating and dropping databases is the superuser's (the test runner sets DATABASE_ADMIN_URL for its stack).
const adminUrl = process.env.DATABASE_ADMIN_URL ?? directUrl
t.before(() => recreateDatabase(adminUrl, scratch))
t.teardown(() => dropDatabase(adminUrl, scratch))

async function sqlFolder (t: Test, files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ledger-migrate-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  await mkdir(join(dir, 'functions'))
  for (const [name, text] of Object.entries(files)) await writeFile(join(dir, name), text)
  return dir
}

const answer = async (sql: postgres.Sql) => (await sql<{ answer: number }[]>`select answer() as answer`)[0]?.answer

t.test('versioned files run once, function files run again only when their text changes', async (t) => {
  const sql = postgres(url, { max: 1, onnotice: () => {} })
  t.teardown(() => sql.end({ timeout: 5 }))
  const dir = await sqlFolder(t, {
    '001_things.sql': 'create table things (id int primary key);',
    'functions/answer.sql': 'create or replace function answer() returns int language sql as $$ select 41 $$;'
  })

  t.same(await migrate(url, () => {}, { dir }), { applied: ['001_things.sql', 'functions/answer.sql'], skipped: 0 })
  t.equal(await answer(sql), 41)
  t.same(await migrate(url, () => {}, { dir }), { applied: [], skipped: 2 }, 'nothing changed, nothing runs')

  await writeFile(join(dir, 'functions/answer.sql'), 'create or replace function answer() returns int language sql as $$ select 42 $$;')
  t.same(await migrate(url, () => {}, { dir }), { applied: ['functions/answer.sql'], skipped: 1 })
  t.equal(await answer(sql), 42, 'the one definition in force is the file as it is now')
  const [row] = await sql<{ checksum: string }[]>`select checksum from schema_migrations where version = 'functions/answer.sql'`
  t.equal(row?.checksum, sha256('create or replace function answer() returns int language sql as $$ select 42 $$;'))

  await writeFile(join(dir, '001_things.sql'), 'create table things (id bigint primary key);')
  await t.rejects(migrate(url, () => {}, { dir }), /001_things\.sql was changed after it was applied/)
  t.same(await migrate(url, () => {}, { dir, rebaselined: { '001_things.sql': [sha256('create table things (id int primary key);')] } }),
    { applied: [], skipped: 2 }, 'a re-baselined edit is accepted without running again')
  const [rebased] = await sql<{ checksum: string }[]>`select checksum from schema_migrations where version = '001_things.sql'`
  t.equal(rebased?.checksum, sha256('create table things (id bigint primary key);'), 'and its new checksum is recorded')
})

t.test('a failing file leaves the schema as it was', async (t) => {
  const sql = postgres(url, { max: 1, onnotice: () => {} })
  t.teardown(() => sql.end({ timeout: 5 }))
  const dir = await sqlFolder(t, {
    '001_ok.sql': 'create table before_failure (id int);',
    '002_broken.sql': 'create table after_failure (id int); select 1/0;'
  })
  await t.rejects(migrate(url, () => {}, { dir }), /division by zero/)
  const [tables] = await sql<{ n: number }[]>`
    select count(*)::int as n from pg_tables where tablename in ('before_failure', 'after_failure')`
  t.equal(tables?.n, 0, 'neither table exists')
})

t.test('a no-transaction file runs on its own after the files before it commit', async (t) => {
  const sql = postgres(url, { max: 1, onnotice: () => {} })
  t.teardown(() => sql.end({ timeout: 5 }))
  const dir = await sqlFolder(t, {
    '001_rows.sql': 'create table rows_to_index (id int);',
    '002_index.sql': '-- migrate: no-transaction\ncreate index concurrently if not exists rows_to_index_id on rows_to_index (id);',
    '003_after.sql': 'create table after_index (id int);'
  })
  t.same(await migrate(url, () => {}, { dir }), { applied: ['001_rows.sql', '002_index.sql', '003_after.sql'], skipped: 0 })
  const [index] = await sql<{ valid: boolean }[]>`
    select i.indisvalid as valid from pg_index i join pg_class c on c.oid = i.indexrelid where c.relname = 'rows_to_index_id'`
  t.equal(index?.valid, true, 'the concurrent index exists and is valid')
  t.same(await migrate(url, () => {}, { dir }), { applied: [], skipped: 3 })

  const misplaced = await sqlFolder(t, { 'functions/bad.sql': '-- migrate: no-transaction\nselect 1;' })
  await t.rejects(migrate(url, () => {}, { dir: misplaced }), /always runs in the migration transaction/)
})

t.test('what a migration creates belongs to the owner role, and an unpinned SECURITY DEFINER function never commits', async (t) => {
  const sql = postgres(url, { max: 1, onnotice: () => {} })
  t.teardown(() => sql.end({ timeout: 5 }))
  const owned = await sqlFolder(t, {
    '001_owned.sql': 'create table owned_thing (id int);',
    'functions/pinned.sql': 'create or replace function pinned() returns int language sql security definer set search_path = pg_catalog, pg_temp as $$ select 1 $$;'
  })
  await migrate(url, () => {}, { dir: owned })
  const owners = await sql<{ name: string, owner: string }[]>`
    select 'owned_thing' as name, relowner::regrole::text as owner from pg_class where relname = 'owned_thing'
    union all select 'pinned', proowner::regrole::text from pg_proc where proname = 'pinned'`
  t.same(owners, [{ name: 'owned_thing', owner: 'ledger_owner' }, { name: 'pinned', owner: 'ledger_owner' }])

  const unpinned: Array<[label: string, setting: string]> = [['public before pg_temp', 'set search_path = pg_catalog, public'], ['no search_path at all', ''], ['an empty search_path', "set search_path = ''"]]
  for (const [label, setting] of unpinned) {
    const dir = await sqlFolder(t, {
      '001_table.sql': 'create table before_definer (id int);',
      'functions/unpinned.sql': `create or replace function unpinned() returns int language sql security definer ${setting} as $$ select 1 $$;`
    })
    await t.rejects(migrate(url, () => {}, { dir }), /SECURITY DEFINER functions refused: unpinned\(\) \(search_path not pinned with pg_temp last\)/, label)
    const [left] = await sql<{ n: number }[]>`
      select (select count(*) from pg_proc where proname = 'unpinned') + (select count(*) from pg_class where relname = 'before_definer') as n`
    t.equal(Number(left?.n), 0, `${label}: neither the function nor the batch's table was committed`)
  }
})
