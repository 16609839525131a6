// `npm test` (after lint and type-check): brings up the project-local stack unless DATABASE_URL and REDIS_URL
// are set, gives the suite a fresh database of its own and a Redis database index of its own, migrates it,
// then runs tap. Arguments after `--` go to tap (for example a single test file).
import { spawnSync } from 'node:child_process'
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

const args = process.argv.slice(2)
await freshState()
const main = spawnSync('tap', args, { stdio: 'inherit', env })
if (main.status !== 0 || args.length > 0) process.exit(main.status ?? 1)
// Fault tests stop and restart shared processes, so they run after the main suite, one file at a time.
await freshState()
const faults = spawnSync('tap', ['--jobs=1', '--exclude=', '--include=test/faults/**/*.test.ts'], { stdio: 'inherit', env })
process.exit(faults.status ?? 1)
