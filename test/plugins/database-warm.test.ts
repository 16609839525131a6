// The pool warm-up: connections opened while the app starts, before it is ready, without counting as the app's
// statements; and the settings that drive it.
import { randomUUID } from 'node:crypto'
import postgres from 'postgres'
import t from 'tap'
import { createSql, warmPool } from '../../plugins/database/index.ts'
import { buildTestApp, ownerSql, testConfig } from '../helper.ts'

const backendsNamed = async (name: string) => {
  const [row] = await ownerSql()<{ n: number }[]>`select count(*)::int as n from pg_stat_activity where application_name = ${name}`
  return row?.n ?? 0
}

t.test('warmPool opens that many connections at once and leaves them open', async (t) => {
  const name = `warm-test-${randomUUID()}`
  const config = testConfig()
  const sql = postgres(config.DATABASE_DIRECT_URL ?? config.DATABASE_URL, { max: 5, prepare: false, fetch_types: false, onnotice: () => {}, connection: { application_name: name } })
  t.teardown(() => sql.end({ timeout: 5 }))
  t.equal(await backendsNamed(name), 0, 'a new pool has no connection')
  const result = await warmPool(sql, 3, 5000)
  t.match(result, { opened: 3, failed: 0 })
  t.equal(await backendsNamed(name), 3, 'three backends, idle and open')
  const again = await warmPool(sql, 3, 5000)
  t.match(again, { opened: 3, failed: 0 }, 'warming an open pool reuses its connections')
  t.equal(await backendsNamed(name), 3, 'and opens none')
})

t.test('the warm-up statements are not observed as the app\'s statements', async (t) => {
  let observed = 0
  const config = testConfig()
  const sql = createSql({ url: config.DATABASE_URL, max: 4, idleTimeoutS: 0, connectTimeoutS: 5, observeQuery: { started: () => { observed++ }, finished: () => {} } })
  t.teardown(() => sql.end({ timeout: 5 }))
  t.match(await warmPool(sql, 4, 5000), { opened: 4, failed: 0 })
  t.equal(observed, 0, 'no span, no statement metric, no in-flight count')
  await sql`select 1`
  t.equal(observed, 1, 'the app\'s own statements still are')
})

t.test('a database that does not answer delays the warm-up by its timeout, not longer, and fails nothing', async (t) => {
  // A port nothing listens on: each connect is refused.
  const sql = postgres('postgres://ledger_api@127.0.0.1:9/ledger', { max: 2, fetch_types: false, connect_timeout: 1, onnotice: () => {}, backoff: () => 0.05 })
  t.teardown(() => sql.end({ timeout: 1 }))
  const started = performance.now()
  const result = await warmPool(sql, 2, 1500)
  t.ok(performance.now() - started < 3000, 'bounded')
  t.match(result, { opened: 0, failed: 2 })
})

t.test('the app opens DATABASE_POOL_WARM connections before it is ready, and says so', async (t) => {
  const lines: Array<Record<string, unknown>> = []
  const app = await buildTestApp(t, { DATABASE_POOL_WARM: '3', DATABASE_POOL_MAX: '4' }, { logger: { level: 'info', stream: { write: (line: string) => { lines.push(JSON.parse(line) as Record<string, unknown>) } } } })
  const warmed = lines.find((line) => line.msg === 'database pool warmed')
  t.match(warmed, { pool: 'primary', opened: 3 }, 'logged while the app was being built')
  await app.ready()
  const ready = lines.findIndex((line) => line.msg === 'ready')
  t.ok(ready === -1 || ready > lines.indexOf(warmed!), 'before readiness reports ready')
  t.equal(app.readiness.current().ok, true, 'ready afterwards')
})

t.test('warm-up settings: unset is the whole pool, 0 turns it off, the idle timeout keeps connections by default', async (t) => {
  const defaults = testConfig({ DATABASE_POOL_MAX: '6' })
  t.equal(defaults.DATABASE_POOL_WARM, 6, 'unset: the whole pool (DATABASE_POOL_MAX)')
  t.equal(testConfig({ DATABASE_POOL_MAX: '4', DATABASE_POOL_WARM: '9' }).DATABASE_POOL_WARM, 4, 'never more than the pool holds')
  t.equal(defaults.DATABASE_IDLE_TIMEOUT_S, 0, 'idle connections are kept')
  t.equal(testConfig({ DATABASE_POOL_WARM: '0' }).DATABASE_POOL_WARM, 0)
  t.throws(() => testConfig({ DATABASE_POOL_WARM: '-1' }), /DATABASE_POOL_WARM/)
  t.throws(() => testConfig({ DATABASE_POOL_WARM: '101' }), /DATABASE_POOL_WARM/)

  const lines: Array<Record<string, unknown>> = []
  await buildTestApp(t, { DATABASE_POOL_WARM: '0' }, { logger: { level: 'info', stream: { write: (line: string) => { lines.push(JSON.parse(line) as Record<string, unknown>) } } } })
  t.notOk(lines.some((line) => line.msg === 'database pool warmed'), 'DATABASE_POOL_WARM=0: no warm-up')
})
