import Fastify from 'fastify'
import fp from 'fastify-plugin'
import t from 'tap'
import currenciesPlugin, { isActiveCurrency } from '../../../routes/ledger/currencies.ts'
import { createMetrics } from '../../../plugins/metrics/index.ts'

/**
 * The plugin alone, over a stand-in for the database whose answer each test sets: what it does before the first
 * read, after a failed one, and on its timer. (The routes and the real table: test/routes/ledger/transactions.test.ts.)
 */
async function appWith (answer: () => Promise<{ code: string }[]>, refreshMs = 60_000) {
  const app = Fastify({ logger: false })
  const metrics = createMetrics()
  let reads = 0
  const db = () => { reads++; return answer() }
  await app.register(fp(async (app) => { app.decorate('db', db as never) }, { name: 'database' }))
  await app.register(fp(async (app) => { app.decorate('metrics', metrics) }, { name: 'metrics' }))
  await app.register(currenciesPlugin, { refreshMs })
  await app.ready()
  return { app, reads: () => reads }
}

t.test('before any read nothing is active and the app says it is not loaded; a failed read keeps the last list', async (t) => {
  t.notOk(isActiveCurrency('USD'), 'no code is active before the table was read')
  let answer: () => Promise<{ code: string }[]> = () => Promise.reject(new Error('connection refused'))
  const { app } = await appWith(() => answer())
  t.teardown(() => app.close())
  t.notOk(app.currencies.isLoaded(), 'a boot read that failed leaves the app not loaded (money routes answer 503)')
  t.notOk(isActiveCurrency('USD'))

  answer = () => Promise.resolve([{ code: 'USD' }, { code: 'EUR' }])
  await app.currencies.refresh()
  t.ok(app.currencies.isLoaded())
  t.ok(isActiveCurrency('USD') && isActiveCurrency('EUR'))
  t.notOk(isActiveCurrency('JPY'), 'only the codes the table lists as active')

  answer = () => Promise.reject(new Error('connection refused'))
  await t.rejects(app.currencies.refresh())
  t.ok(isActiveCurrency('USD'), 'a failed refresh keeps the last list in force')
  t.ok(app.currencies.isLoaded())

  answer = () => Promise.resolve([{ code: 'EUR' }])
  await app.currencies.refresh()
  t.notOk(isActiveCurrency('USD'), 'a retired code is refused after the next read')
  t.ok(isActiveCurrency('EUR'))
})

t.test('the timer re-reads the table, one read at a time, and stops when the app closes', async (t) => {
  let release: (() => void) | undefined
  let slow = false
  const { app, reads } = await appWith(() => slow
    ? new Promise((resolve) => { release = () => resolve([{ code: 'CHF' }]) })
    : Promise.resolve([{ code: 'GBP' }]), 50)
  t.ok(isActiveCurrency('GBP'), 'read at boot')
  slow = true
  const first = app.currencies.refresh()
  const second = app.currencies.refresh()
  t.equal(first, second, 'a refresh while one is in flight joins it')
  await new Promise((resolve) => setTimeout(resolve, 200))
  release?.()
  await first
  t.ok(isActiveCurrency('CHF'))
  slow = false
  const before = reads()
  await new Promise((resolve) => setTimeout(resolve, 300))
  t.ok(reads() > before, `the timer read again (${reads() - before} reads in 300 ms)`)
  await app.close()
  const closed = reads()
  await new Promise((resolve) => setTimeout(resolve, 200))
  t.ok(reads() - closed <= 1, 'and stops once the app is closed')
})
