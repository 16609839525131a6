import { createHash } from 'node:crypto'
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import postgres from 'postgres'

const migrationsDir = fileURLToPath(new URL('../sql/', import.meta.url))
const migrationFile = /^(\d{3,})_[a-z0-9_]+\.sql$/

export interface MigrationResult {
  applied: string[]
  skipped: number
}

/**
 * Applies sql/NNN_name.sql files in order, each once. Everything runs in ONE transaction holding a
 * transaction-scoped advisory lock: two processes starting at once serialize instead of racing, a failure
 * leaves the schema as it was, and it works even through PgBouncer in transaction mode (where a session lock
 * would be lost). An applied file whose contents changed is refused: history is append-only.
 */
export async function migrate (url: string, log: (line: string) => void = () => {}): Promise<MigrationResult> {
  const files = (await readdir(migrationsDir)).filter((name) => migrationFile.test(name)).sort()
  const sql = postgres(url, { max: 1, prepare: false, onnotice: () => {}, connect_timeout: 10 })
  try {
    return await sql.begin(async (tx) => {
      await tx`select pg_advisory_xact_lock(hashtext('ledger-api:migrations'))`
      await tx`
        create table if not exists schema_migrations (
          version text primary key,
          checksum text not null,
          applied_at timestamptz not null default now()
        )`
      const done = new Map((await tx<{ version: string, checksum: string }[]>`select version, checksum from schema_migrations`)
        .map((row) => [row.version, row.checksum]))
      const applied: string[] = []
      for (const file of files) {
        const text = await readFile(join(migrationsDir, file), 'utf8')
        const checksum = createHash('sha256').update(text).digest('hex')
        const previous = done.get(file)
        if (previous !== undefined) {
          if (previous !== checksum) throw new Error(`migration ${file} was changed after it was applied; add a new migration instead`)
          continue
        }
        // Migration files are trusted project files, never request input: unsafe() runs their multi-statement text.
        await tx.unsafe(text)
        await tx`insert into schema_migrations (version, checksum) values (${file}, ${checksum})`
        applied.push(file)
        log(`applied ${file}`)
      }
      return { applied, skipped: files.length - applied.length }
    })
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
