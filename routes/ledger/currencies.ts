import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { Metrics } from '../../plugins/metrics/index.ts'

declare module 'fastify' {
  interface FastifyInstance {
    currencies: CurrencyList
  }
}

/**
 * The currencies the API accepts are the active rows of the `currencies` table (sql/008_currencies.sql), not the
 * runtime's ICU data. Each process keeps the active codes in memory, loads them at boot and re-reads them every
 * `refreshMs`, so checking a code (CurrencySchema in routes/ledger/money.ts) is a Set lookup and costs no round
 * trip per request; a currency enabled or retired in the table reaches every process within one refresh. The
 * foreign keys from transactions and balances keep any code the table lacks out of the ledger in any case.
 *
 * The set is per process (Zod schemas are module constants): every app built in a process refreshes the same one.
 */
let activeCodes: ReadonlySet<string> | undefined

/** Whether a code is an active currency, as of the last refresh; false before any refresh succeeded. */
export const isActiveCurrency = (code: string) => activeCodes?.has(code) === true

export interface CurrencyList {
  /** Whether this app has read the table at least once; until then money routes answer 503, never a false 400. */
  isLoaded: () => boolean
  /** Re-reads the active codes now (the timer calls it; tests and operators' tools may too). */
  refresh: () => Promise<void>
}

export interface CurrenciesPluginOptions {
  refreshMs: number
}

async function currenciesPlugin (app: FastifyInstance, options: CurrenciesPluginOptions) {
  const metrics: Metrics = app.metrics
  let loaded = false
  let inFlight: Promise<void> | undefined
  let timer: NodeJS.Timeout | undefined
  let lastLogged = 0

  async function load () {
    const rows = await app.db<{ code: string }[]>`select code from currencies where active`
    activeCodes = new Set(rows.map((row) => row.code))
    loaded = true
  }

  const list: CurrencyList = {
    isLoaded: () => loaded,
    refresh () {
      // One refresh at a time: a slow database must not pile up reads.
      inFlight ??= load().finally(() => { inFlight = undefined })
      return inFlight
    }
  }

  const onError = (error: unknown) => {
    metrics.dependencyErrors.inc({ dependency: 'postgres', operation: 'currencies_refresh' })
    const now = Date.now()
    if (now - lastLogged > 10_000) {
      lastLogged = now
      app.log.warn({ err: error }, 'cannot refresh the active currencies; the last list read stays in force')
    }
  }
  let closed = false
  const schedule = () => {
    timer = setTimeout(() => {
      list.refresh().catch(onError).finally(() => { if (!closed) schedule() })
    }, options.refreshMs)
    timer.unref()
  }

  app.decorate('currencies', list)
  app.addHook('onClose', async () => {
    closed = true
    clearTimeout(timer)
  })
  // A process that cannot read the table at boot still starts; money routes answer 503 until a refresh works.
  await list.refresh().catch((error: unknown) => app.log.warn({ err: error }, 'active currencies not loaded at boot'))
  schedule()
}

export default fp(currenciesPlugin, { name: 'currencies', dependencies: ['database', 'metrics'] })
