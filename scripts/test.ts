// `npm test` (after lint and type-check): brings up the project-local stack unless DATABASE_URL and REDIS_URL
// are set, gives the suite a fresh database of its own and a Redis database index of its own, migrates it,
// then runs tap. Arguments after `--` go to tap (for example a single test file).
import { spawnSync } from 'node:child_process'
import { readdirSync, readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { Redis } from 'ioredis'
import { localStackUp, recreateDatabase, withDatabase } from './local-stack.ts'
import { migrate } from './migrate.ts'

// Overridable so two suites can run side by side on one stack (for example two checkouts).
const TEST_DATABASE = process.env.LEDGER_TEST_DATABASE ?? 'ledger_test'
const TEST_REDIS_DB = process.env.LEDGER_TEST_REDIS_DB ?? '1'
if (!/^[a-z_][a-z0-9_]{0,62}$/.test(TEST_DATABASE) || !/^\d{1,2}$/.test(TEST_REDIS_DB)) {
  console.error('LEDGER_TEST_DATABASE must be a plain lower-case identifier and LEDGER_TEST_REDIS_DB a database number')
  process.exit(2)
}
// Server processes the tests spawn (server.ts) run no job worker: webhook tests run their jobs themselves
// (app.jobs.runDue()) or spawn `node worker.ts`, and a stray worker loop would take their jobs. Nor the ledger check:
// test files corrupt and check the shared ledger on purpose (its own tests turn it on).
const env: NodeJS.ProcessEnv = { WORKER_ENABLED: 'false', RECONCILE_INTERVAL_S: '0', ...process.env, NODE_ENV: 'test' }

let adminUrl: string | undefined
if (!process.env.DATABASE_URL || !process.env.REDIS_URL) {
  const stack = localStackUp()
  adminUrl = stack.DATABASE_ADMIN_URL
  env.DATABASE_ADMIN_URL = adminUrl
  env.DATABASE_URL = withDatabase(stack.DATABASE_URL, TEST_DATABASE)
  env.DATABASE_DIRECT_URL = withDatabase(stack.DATABASE_DIRECT_URL, TEST_DATABASE)
  const redisUrl = new URL(stack.REDIS_URL)
  redisUrl.pathname = `/${TEST_REDIS_DB}`
  env.REDIS_URL = redisUrl.toString()
  // The stack's generated secret (never a committed one); tests that need another make their own at runtime.
  env.JWT_SECRET ||= stack.JWT_SECRET
  // Fault tests stop and start these processes; they only run against a stack this script controls.
  env.LEDGER_LOCAL_STACK = '1'
}

/**
 * A fresh, migrated test database and an empty Redis database, so no phase depends on what an earlier run or
 * phase left behind (the fault phase's whole-ledger checks must not scan the main phase's 2M-row test data).
 */
async function freshState () {
  if (adminUrl !== undefined) await recreateDatabase(adminUrl, TEST_DATABASE)
  await migrate(env.DATABASE_DIRECT_URL || env.DATABASE_URL || '')
  const redis = new Redis(env.REDIS_URL ?? '')
  await redis.flushdb()
  redis.disconnect()
}

const TAP_RESULTS = '.tap/test-results'

/**
 * Exits with tap's status; on a failure it first repeats which assertions failed, last, so a log that keeps only
 * its tail (CI's) still names them: tap prints them before its long coverage table.
 */
function finish (status: number | null): never {
  if (status !== 0) {
    const failures = failedAssertions()
    if (failures.length > 0) console.error(`\n# failed assertions (${failures.length}):\n${failures.slice(0, 40).join('\n')}`)
  }
  process.exit(status ?? 1)
}

/** The `not ok` lines of the last run's per-file TAP output (.tap/test-results), with their file and subtest path. */
function failedAssertions (): string[] {
  let files: string[]
  try { files = readdirSync(TAP_RESULTS, { recursive: true, encoding: 'utf8' }).filter((file) => file.endsWith('.tap')) } catch { return [] }
  const failures: string[] = []
  for (const file of files) {
    const path: string[] = []
    for (const line of readFileSync(join(TAP_RESULTS, file), 'utf8').split('\n')) {
      const subtest = /^(\s*)# Subtest: (.*)$/.exec(line)
      if (subtest?.[1] !== undefined && subtest[2] !== undefined) path.splice(subtest[1].length / 4, Infinity, subtest[2])
      const failed = /^(\s*)not ok \d+ - (.*?)(?: # time=\S+)?(\s+# (?:TODO|SKIP).*)?$/i.exec(line)
      if (failed?.[1] !== undefined && failed[2] !== undefined && failed[3] === undefined) {
        const depth = failed[1].length / 4
        // A failing subtest repeats as a `not ok` in its parent; its own assertions were listed already.
        if (path[depth] !== failed[2]) failures.push(`${file.replace(/\.tap$/, '')}: ${[...path.slice(0, depth), failed[2]].join(' > ')}`)
      }
    }
  }
  return failures
}

/** Runs tap; the per-file results it leaves are this run's alone (tap keeps those of files it did not run). */
function runTap (tapArgs: string[]) {
  rmSync(TAP_RESULTS, { recursive: true, force: true })
  return spawnSync('tap', tapArgs, { stdio: 'inherit', env })
}

const args = process.argv.slice(2)
await freshState()
const main = runTap(args)
if (main.status !== 0 || args.length > 0) finish(main.status)
// Fault tests stop and restart shared processes, so they run after the main suite, one file at a time.
await freshState()
const faults = runTap(['--jobs=1', '--exclude=', '--include=test/faults/**/*.test.ts'])
finish(faults.status)
