// `npm run image:test`: the real image in a real container engine. Brings up the project-local stack, gives the
// image a fresh database (ledger_image) and Redis database (4) of its own, and runs test/image/*.test.ts, which starts
// a private dockerd (scripts/engine.sh), builds the stand-in base once and the project's Dockerfile, migrates from the
// image, serves from an API and a worker container, and stops everything it started. Whatever happens in the test,
// the engine is stopped on the way out. Arguments go to tap.
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { Redis } from 'ioredis'
import { localStackUp, recreateDatabase, withDatabase } from './local-stack.ts'

const IMAGE_DATABASE = 'ledger_image'
const IMAGE_REDIS_DB = '4'
const engineScript = fileURLToPath(new URL('./engine.sh', import.meta.url))

const stack = localStackUp()
await recreateDatabase(stack.DATABASE_ADMIN_URL, IMAGE_DATABASE)
const redisUrl = new URL(stack.REDIS_URL)
redisUrl.pathname = `/${IMAGE_REDIS_DB}`
const redis = new Redis(redisUrl.toString())
await redis.flushdb()
redis.disconnect()

const env: NodeJS.ProcessEnv = {
  ...process.env,
  NODE_ENV: 'test',
  // Unmigrated: the image's own migration command is the first thing the test runs.
  DATABASE_URL: withDatabase(stack.DATABASE_URL, IMAGE_DATABASE),
  DATABASE_DIRECT_URL: withDatabase(stack.DATABASE_DIRECT_URL, IMAGE_DATABASE),
  REDIS_URL: redisUrl.toString()
}

// One file, with a timeout that covers a first run on a fresh machine (packages, debootstrap, npm ci in the build).
const run = spawnSync('tap', ['--jobs=1', '--timeout=1500', '--disable-coverage', '--exclude=', '--include=test/image/**/*.test.ts', ...process.argv.slice(2)], { stdio: 'inherit', env })
const down = spawnSync('bash', [engineScript, 'down'], { stdio: 'inherit', timeout: 120_000 })
if (down.status !== 0) console.error('image:test: scripts/engine.sh down failed; see above')
process.exit(run.status === 0 && down.status === 0 ? 0 : 1)
