import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
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

// A secret of this run only: none is committed anywhere.
const base = { DATABASE_URL: 'postgres://u@127.0.0.1:1/db', REDIS_URL: 'redis://127.0.0.1:1', JWT_SECRET: randomBytes(32).toString('base64url') }
const { JWT_SECRET: _secret, ...noSecret } = base

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

t.test('anything but development and test refuses to start without its own JWT secret', async (t) => {
  for (const nodeEnv of ['production', 'staging', 'prod', undefined]) {
    const error = thrown(() => loadConfig(nodeEnv === undefined ? noSecret : { ...noSecret, NODE_ENV: nodeEnv }))
    t.ok(error instanceof ConfigError, `NODE_ENV=${nodeEnv ?? '(unset)'} is refused`)
    t.match(error?.message, /JWT_SECRET: is required/)
  }
  t.throws(() => loadConfig({ ...base, JWT_SECRET: 'short' }), /JWT_SECRET/)
  t.equal(loadConfig({ ...base, NODE_ENV: 'production', JWT_SECRET: 'x'.repeat(32) }).JWT_SECRET, 'x'.repeat(32))
})

t.test('development and test without JWT_SECRET share the local stack secret file, created once with mode 0600', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ledger-secret-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const stackDir = join(dir, '.stack')
  const first = loadConfig({ ...noSecret, NODE_ENV: 'development', LEDGER_STACK_DIR: stackDir }).JWT_SECRET
  const second = loadConfig({ ...noSecret, NODE_ENV: 'test', LEDGER_STACK_DIR: stackDir }).JWT_SECRET
  t.ok(first.length >= 32, 'a secret long enough for HS256')
  t.equal(second, first, 'every process of the checkout (and every worker) signs with the same key')
  t.equal(statSync(join(stackDir, 'jwt-secret')).mode & 0o777, 0o600)
  const elsewhere = loadConfig({ ...noSecret, NODE_ENV: 'development', LEDGER_STACK_DIR: join(dir, 'other') }).JWT_SECRET
  t.not(elsewhere, first, 'random per checkout, not a constant')
  t.equal(loadConfig({ ...base, NODE_ENV: 'development' }).JWT_SECRET, base.JWT_SECRET, 'JWT_SECRET, when set, wins')
})
