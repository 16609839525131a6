import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { ConfigError, loadConfig } from '../config.ts'

function thrown (fn: () => unknown): Error | undefined {
  try {
    fn()
  } catch (error) {
    return error as Error
  }
  return undefined
}

const base = { DATABASE_URL: 'postgres://u@127.0.0.1:1/db', REDIS_URL: 'redis://127.0.0.1:1' }

t.test('defaults are applied to a minimal environment', async (t) => {
  const config = loadConfig(base)
  t.equal(config.PORT, 3000)
  t.equal(config.DATABASE_POOL_MAX, 10)
  t.equal(config.JWT_TTL_S, 900)
  t.same(config.TRUST_PROXY, [])
})

t.test('a bad value stops boot with a message naming the variable', async (t) => {
  for (const [name, value] of [['PORT', 'eighty'], ['DATABASE_POOL_MAX', '0'], ['JWT_TTL_S', '7200'], ['REDIS_URL', 'http://x'], ['LOG_LEVEL', 'loud']] as const) {
    const error = thrown(() => loadConfig({ ...base, [name]: value }))
    t.ok(error instanceof ConfigError, `${name}=${value} is refused`)
    t.match(error?.message, name, 'the message names the variable')
  }
})

t.test('required URLs are named when missing', async (t) => {
  const error = thrown(() => loadConfig({}))
  t.ok(error instanceof ConfigError)
  t.match(error?.message, /DATABASE_URL[\s\S]*REDIS_URL/)
})

t.test('production refuses to start without its own JWT secret', async (t) => {
  t.throws(() => loadConfig({ ...base, NODE_ENV: 'production' }), /JWT_SECRET/)
  t.throws(() => loadConfig({ ...base, JWT_SECRET: 'short' }), /JWT_SECRET/)
  t.equal(loadConfig({ ...base, NODE_ENV: 'production', JWT_SECRET: 'x'.repeat(32) }).JWT_SECRET, 'x'.repeat(32))
})

t.test('PASSWORD_HASH_COST must be a power of two: a clear boot error, not a 500 per login', async (t) => {
  t.equal(loadConfig(base).PASSWORD_HASH_COST, 131072, 'OWASP\'s N = 2^17 by default')
  for (const value of ['1000', '100000', '131073', '512', `${2 ** 21}`]) {
    const error = thrown(() => loadConfig({ ...base, PASSWORD_HASH_COST: value }))
    t.ok(error instanceof ConfigError, `PASSWORD_HASH_COST=${value} is refused`)
    t.match(error?.message, /PASSWORD_HASH_COST: must be a power of two/)
  }
  t.equal(loadConfig({ ...base, PASSWORD_HASH_COST: '65536', PASSWORD_HASH_PARALLELISM: '2' }).PASSWORD_HASH_PARALLELISM, 2)
  t.throws(() => loadConfig({ ...base, PASSWORD_HASH_CONCURRENCY: '0' }), /PASSWORD_HASH_CONCURRENCY/)
  t.throws(() => loadConfig({ ...base, REFRESH_TOKEN_TTL_S: '10' }), /REFRESH_TOKEN_TTL_S/)

  // The server itself: it exits 1 with one line naming the variable, before touching any dependency.
  const server = spawnSync(process.execPath, [fileURLToPath(new URL('../server.ts', import.meta.url))], {
    env: { ...process.env, ...base, PASSWORD_HASH_COST: '1000' }, encoding: 'utf8', timeout: 30_000
  })
  t.equal(server.status, 1, 'the server refuses to boot')
  t.match(server.stderr, /invalid configuration:\s+PASSWORD_HASH_COST: must be a power of two/)
  t.notMatch(server.stderr, /\n\s+at /, 'a message, not a stack trace')
})
