import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { ConfigError } from '../config.ts'
import { loadConfig } from '../settings.ts'

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

t.test('the worker\'s lanes: one concurrency each, and the single pool they replace is refused by name', async (t) => {
  const config = loadConfig(base)
  t.match(config, { WORKER_FEED_CONCURRENCY: 8, WORKER_WEBHOOK_CONCURRENCY: 64, WEBHOOK_ENDPOINT_CONCURRENCY: 4, WEBHOOK_TIMEOUT_MS: 10_000, WEBHOOK_CONNECT_TIMEOUT_MS: 3000, WEBHOOK_DISABLE_AFTER_H: 72 })
  t.notOk('WORKER_CONCURRENCY' in config)
  t.ok(config.WEBHOOK_CONNECT_TIMEOUT_MS < config.WEBHOOK_TIMEOUT_MS, 'connecting is bounded inside the whole attempt')
  t.ok(config.WORKER_WEBHOOK_CONCURRENCY > 10 * config.WEBHOOK_ENDPOINT_CONCURRENCY, 'one principal (10 endpoints) cannot fill a worker by default')
  const error = thrown(() => loadConfig({ ...base, WORKER_CONCURRENCY: '8' }))
  t.ok(error instanceof ConfigError)
  t.match(error?.message, /WORKER_CONCURRENCY: is replaced by .*WORKER_FEED_CONCURRENCY.*WORKER_WEBHOOK_CONCURRENCY/)
  for (const [name, value] of [['WORKER_WEBHOOK_CONCURRENCY', '0'], ['WORKER_FEED_CONCURRENCY', 'many'], ['WEBHOOK_CONNECT_TIMEOUT_MS', '20000'], ['WEBHOOK_DISABLE_AFTER_H', '0']] as const) {
    t.match(thrown(() => loadConfig({ ...base, [name]: value }))?.message, name, `${name}=${value} is refused`)
  }
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

t.test('WEBHOOK_DNS_SERVERS: the system resolvers unless set, and only IP addresses with optional ports', async (t) => {
  t.same(loadConfig(base).WEBHOOK_DNS_SERVERS, [], 'unset: the system resolvers')
  t.equal(loadConfig(base).WEBHOOK_DNS_TIMEOUT_MS, 3000)
  t.same(loadConfig({ ...base, WEBHOOK_DNS_SERVERS: '10.0.0.2, 1.1.1.1:53,[2606:4700:4700::1111]:53,::1' }).WEBHOOK_DNS_SERVERS,
    ['10.0.0.2', '1.1.1.1:53', '[2606:4700:4700::1111]:53', '::1'])
  for (const value of ['dns.google', '1.1.1.1:99999', '1.2.3', '[1.1.1.1]:53', 'https://1.1.1.1/dns-query']) {
    const error = thrown(() => loadConfig({ ...base, WEBHOOK_DNS_SERVERS: value }))
    t.ok(error instanceof ConfigError, `WEBHOOK_DNS_SERVERS=${value} is refused`)
    t.match(error?.message, /WEBHOOK_DNS_SERVERS\.0: must be IP addresses/)
  }
  t.throws(() => loadConfig({ ...base, WEBHOOK_DNS_TIMEOUT_MS: '20' }), /WEBHOOK_DNS_TIMEOUT_MS/)
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

t.test('OAUTH_ISSUER must be an origin; a value that is not a URL is a boot message too, not a TypeError', async (t) => {
  t.equal(loadConfig({ ...base, OAUTH_ISSUER: 'https://api.example.test' }).OAUTH_ISSUER, 'https://api.example.test')
  for (const value of ['not a url', 'ftp://api.example.test', 'https://api.example.test/', 'https://api.example.test/v1']) {
    const error = thrown(() => loadConfig({ ...base, OAUTH_ISSUER: value }))
    t.ok(error instanceof ConfigError, `OAUTH_ISSUER=${value} is refused`)
    t.match(error?.message, /OAUTH_ISSUER: must be/)
    t.equal(error?.message.split('\n').length, 2, 'one line for it')
  }
})
