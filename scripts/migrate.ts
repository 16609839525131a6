import { createHash } from 'node:crypto'
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import postgres from 'postgres'

const sqlDir = fileURLToPath(new URL('../sql/', import.meta.url))
const versionedFile = /^(\d{3,})_[a-z0-9_]+\.sql$/
const repeatableFile = /^[a-z0-9_]+\.sql$/
/** First line of a versioned file whose statement cannot run in a transaction (CREATE INDEX CONCURRENTLY). */
const NO_TRANSACTION = /^--\s*migrate:\s*no-transaction\b/

/**
 * Versioned files whose text changed after release without changing what they leave in a database that applied
 * them; the old checksum is accepted and replaced by the new one. 003 lost post_transaction(), which moved to
 * sql/functions/ (the function file re-creates the same function in such a database).
 */
const REBASELINED: Record<string, string[]> = {
  '003_ledger.sql': ['fb5eeb3d3999f4500598142f80f48f6859d75fd135e8e9e0d3f01acc60560fb8']
}

export interface MigrationResult {
  applied: string[]
  skipped: number
}

export interface MigrateOptions {
  /** The folder holding NNN_name.sql files and functions/ (tests point it elsewhere). */
  dir?: string
  /** Accepted old checksums of edited versioned files (see REBASELINED). */
  rebaselined?: Record<string, string[]>
}

interface MigrationFile {
  /** `NNN_name.sql` for versioned files, `functions/name.sql` for repeatable ones. */
  version: string
  text: string
  checksum: string
  repeatable: boolean
  transactional: boolean
}

async function readMigrationFiles (sqlDir: string): Promise<MigrationFile[]> {
  const load = async (version: string, repeatable: boolean): Promise<MigrationFile> => {
    const text = await readFile(join(sqlDir, version), 'utf8')
    return {
      version,
      text,
      checksum: createHash('sha256').update(text).digest('hex'),
      repeatable,
      transactional: !NO_TRANSACTION.test(text)
    }
  }
  const versioned = (await readdir(sqlDir)).filter((name) => versionedFile.test(name)).sort()
  const functions = (await readdir(join(sqlDir, 'functions'))).filter((name) => repeatableFile.test(name)).sort()
  const files = [
    ...await Promise.all(versioned.map((name) => load(name, false))),
    ...await Promise.all(functions.map((name) => load(`functions/${name}`, true)))
  ]
  const misplaced = files.find((file) => file.repeatable && !file.transactional)
  if (misplaced !== undefined) throw new Error(`${misplaced.version}: a database function file always runs in the migration transaction`)
  return files
}

/** The role that owns the schema (sql/bootstrap.sql); the migrator is a login that may act as it. */
const SCHEMA_OWNER = 'ledger_owner'

/**
 * Everything a migration creates belongs to the schema owner, whichever login runs it. A database that was never
 * bootstrapped (no owner role, or a login that may not act as it) is refused before anything runs.
 */
async function actAsOwner (tx: postgres.TransactionSql) {
  const [row] = await tx<{ exists: boolean, member: boolean | null }[]>`
    select exists (select 1 from pg_roles where rolname = ${SCHEMA_OWNER}) as exists,
           (select pg_has_role(current_user, oid, 'member') from pg_roles where rolname = ${SCHEMA_OWNER}) as member`
  if (row?.exists !== true || row.member !== true) {
    throw new Error(`this database has no ${SCHEMA_OWNER} role that the migrating login may act as: run sql/bootstrap.sql in it as a superuser first`)
  }
  await tx`select set_config('role', ${SCHEMA_OWNER}, true)`
}

/**
 * PostgreSQL's guidance for SECURITY DEFINER functions, enforced for every such function the migrations leave,
 * present and future: its search_path is pinned and names pg_temp last, and its owner is no superuser (so a hole in
 * it cannot reach past the schema). pg_temp last, not an empty path: a schema the path does not list is searched
 * first for relations and types, so with an empty path a caller's temporary table (or its row type) would still
 * come before anything the function names without a schema.
 * Runs in the migration's transaction: a function that breaks the rule is never committed.
 */
async function refuseUnsafeDefinerFunctions (tx: postgres.TransactionSql) {
  const unsafe = await tx<{ fn: string, problem: string }[]>`
    select p.oid::regprocedure::text as fn,
           case when r.rolsuper then 'owned by a superuser' else 'search_path not pinned with pg_temp last' end as problem
      from pg_proc p
      join pg_roles r on r.oid = p.proowner
     where p.prosecdef
       and p.pronamespace not in ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
       and not exists (select 1 from pg_depend d where d.classid = 'pg_proc'::regclass and d.objid = p.oid and d.deptype = 'e')
       and (r.rolsuper or not exists (
             select 1 from unnest(p.proconfig) as setting
              where setting like 'search_path=%' and (setting = 'search_path=pg_temp' or setting like '%, pg_temp')))
     order by 1`
  if (unsafe.length > 0) {
    throw new Error(`SECURITY DEFINER functions refused: ${unsafe.map((row) => `${row.fn} (${row.problem})`).join(', ')}`)
  }
}

/**
 * Applies sql/NNN_name.sql files in order, each once, then re-applies every sql/functions/NAME.sql whose text
 * changed since it was last applied (one file per database function, each a `create or replace`, so a function
 * has exactly one definition to edit). Everything runs in transactions holding a transaction-scoped advisory
 * lock: two processes starting at once serialize instead of racing, a failure leaves the schema as it was, and it
 * works even through PgBouncer in transaction mode (where a session lock would be lost). An applied versioned file
 * whose contents changed is refused: history is append-only.
 *
 * A versioned file whose first line is `-- migrate: no-transaction` holds one statement that PostgreSQL refuses
 * inside a transaction (CREATE INDEX CONCURRENTLY): the files before it commit first, it runs on its own, and it is
 * recorded afterwards. Write it to be safe to run twice (`if not exists`), since it runs outside the lock.
 */
export async function migrate (url: string, log: (line: string) => void = () => {}, options: MigrateOptions = {}): Promise<MigrationResult> {
  const rebaselined = options.rebaselined ?? REBASELINED
  const files = await readMigrationFiles(options.dir ?? sqlDir)
  const sql = postgres(url, { max: 1, prepare: false, onnotice: () => {}, connect_timeout: 10 })
  const applied: string[] = []

  // One locked transaction that applies `batch` (whatever of it is still due); returns the first file left that
  // must run outside a transaction, if any.
  const runBatch = (batch: MigrationFile[]) => sql.begin(async (tx) => {
    await tx`select pg_advisory_xact_lock(hashtext('ledger-api:migrations'))`
    await actAsOwner(tx)
    await tx`
      create table if not exists schema_migrations (
        version text primary key,
        checksum text not null,
        applied_at timestamptz not null default now()
      )`
    const done = new Map((await tx<{ version: string, checksum: string }[]>`select version, checksum from schema_migrations`)
      .map((row) => [row.version, row.checksum]))
    for (const file of batch) {
      const previous = done.get(file.version)
      if (previous === file.checksum) continue
      if (previous !== undefined && !file.repeatable) {
        if (!rebaselined[file.version]?.includes(previous)) {
          throw new Error(`migration ${file.version} was changed after it was applied; add a new migration instead`)
        }
        await tx`update schema_migrations set checksum = ${file.checksum} where version = ${file.version}`
        continue
      }
      if (!file.transactional) return file
      // Migration files are trusted project files, never request input: unsafe() runs their multi-statement text.
      await tx.unsafe(file.text)
      await tx`
        insert into schema_migrations (version, checksum) values (${file.version}, ${file.checksum})
        on conflict (version) do update set checksum = excluded.checksum, applied_at = now()`
      applied.push(file.version)
      log(`applied ${file.version}`)
    }
    await refuseUnsafeDefinerFunctions(tx)
    return undefined
  })

  try {
    let remaining = files
    for (;;) {
      const outside = await runBatch(remaining)
      if (outside === undefined) break
      await sql.unsafe(outside.text)
      await sql`insert into schema_migrations (version, checksum) values (${outside.version}, ${outside.checksum}) on conflict do nothing`
      applied.push(outside.version)
      log(`applied ${outside.version} (outside a transaction)`)
      remaining = remaining.slice(remaining.indexOf(outside) + 1)
    }
    return { applied, skipped: files.length - applied.length }
  } finally {
    await sql.end({ timeout: 5 })
  }
}

if (import.meta.main) {
  const url = process.env.DATABASE_DIRECT_URL ?? process.env.DATABASE_URL
  if (url === undefined || url === '') {
    console.error('migrate: set DATABASE_DIRECT_URL or DATABASE_URL (npm start sets them for the local stack)')
    process.exit(1)
  }
  try {
    const result = await migrate(url, (line) => console.log(line))
    console.log(`migrations: ${result.applied.length} applied, ${result.skipped} already in place`)
  } catch (error) {
    console.error('migrate failed:', error instanceof Error ? error.message : error)
    process.exit(1)
  }
}
