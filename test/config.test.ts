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
