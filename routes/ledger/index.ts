import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { balancesRoutes } from './balances.ts'
import currenciesPlugin from './currencies.ts'
import ledgerCheckPlugin from './ledger-check.ts'
import { purgeIdempotencyKeys } from './repository.ts'
import { transactionsRoutes } from './transactions.ts'

/**
 * The ledger: transactions (double entry, in sql/), balances, currencies and the background check of its
 * invariants. This file is the domain's public face: what other modules may use of it, and its two plugins.
 */
export { toTransaction, type TransactionRow } from './repository.ts'
export { TransactionKindSchema, type Transaction } from './schemas.ts'

/** What runs whether or not this process serves HTTP: the currency list, the ledger check, the key purge. */
async function ledgerServices (app: FastifyInstance) {
  const config = app.config
  await app.register(currenciesPlugin, { refreshMs: config.CURRENCIES_REFRESH_S * 1000 })
  await app.register(ledgerCheckPlugin, {
    intervalS: config.RECONCILE_INTERVAL_S,
    statementTimeoutMs: config.RECONCILE_STATEMENT_TIMEOUT_S * 1000
  })
  app.housekeeping.add({
    operation: 'idempotency_key_purge',
    done: 'purged expired idempotency keys',
    run: (batch) => purgeIdempotencyKeys(app.db, config.IDEMPOTENCY_KEY_TTL_H * 3600, batch)
  })
}

async function ledgerRoutes (app: FastifyInstance) {
  await app.register(transactionsRoutes)
  await app.register(balancesRoutes)
  // The warm-up's principals exist nowhere: reads come back empty, and a write stops at the session or client
  // check (401), before the ledger, so no money moves.
  app.warmUp.add((who) => ({ method: 'GET', url: '/transactions', authorization: who.user.authorization }))
  app.warmUp.add((who) => ({
    method: 'POST',
    url: '/transactions',
    authorization: who.user.authorization,
    headers: { 'idempotency-key': who.key() },
    body: { kind: 'transfer', amount: 1, currency: 'USD', toUserId: who.otherUserId }
  }))
  app.warmUp.add((who) => {
    const key = who.key()
    return {
      method: 'POST',
      url: '/transactions',
      authorization: who.client.authorization,
      headers: { 'idempotency-key': key },
      body: { kind: 'deposit', amount: 1, currency: 'USD', userId: who.user.id, reference: key }
    }
  })
}

export const ledger = {
  services: fp(ledgerServices, { name: 'ledger', dependencies: ['database', 'metrics', 'housekeeping'] }),
  routes: fp(ledgerRoutes, { name: 'ledger-routes', dependencies: ['warm-up'] })
}
