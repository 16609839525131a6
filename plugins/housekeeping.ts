import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { Sql } from './database.ts'
import type { Metrics } from './metrics.ts'
import { purgeDeliveries } from '../routes/webhook-endpoints/queries.ts'

/**
 * Background upkeep every API process shares: purging idempotency keys past their window, in batches, so the table
 * stays the size of the window. Any number of processes may run it at once (the purge skips rows another holds);
 * the random start spreads them out. Failures are logged and counted, never thrown at a request. The same goes
 * for finished webhook deliveries past their retention: pending ones are never purged (their job still runs).
 */
export interface HousekeepingOptions {
  idempotencyKeyTtlS: number
  /** Finished webhook deliveries (delivered, failed) stay listed this long. */
  webhookDeliveryRetentionS: number
  everyMs: number
  batch: number
}

export function purgeIdempotencyKeys (sql: Sql, ttlS: number, batch: number): Promise<number> {
  return sql<{ purged: number }[]>`select purge_idempotency_keys(${ttlS}, ${batch}) as purged`.then(([row]) => row?.purged ?? 0)
}

async function housekeepingPlugin (app: FastifyInstance, options: HousekeepingOptions) {
  const metrics: Metrics = app.metrics
  let timer: NodeJS.Timeout | undefined
  const state = { closing: false }

  const run = async () => {
    try {
      // A full batch means more are due: keep going (bounded) instead of waiting a whole period.
      for (let round = 0; round < 10 && !state.closing; round++) {
        const purged = await purgeIdempotencyKeys(app.db, options.idempotencyKeyTtlS, options.batch)
        if (purged > 0) app.log.info({ purged }, 'purged expired idempotency keys')
        if (purged < options.batch) break
      }
    } catch (error) {
      metrics.dependencyErrors.inc({ dependency: 'postgres', operation: 'idempotency_key_purge' })
      app.log.warn({ err: error }, 'idempotency key purge failed')
    }
    try {
      for (let round = 0; round < 10 && !state.closing; round++) {
        const purged = await purgeDeliveries(app.db, options.webhookDeliveryRetentionS, options.batch)
        if (purged > 0) app.log.info({ purged }, 'purged finished webhook deliveries past retention')
        if (purged < options.batch) break
      }
    } catch (error) {
      metrics.dependencyErrors.inc({ dependency: 'postgres', operation: 'webhook_delivery_purge' })
      app.log.warn({ err: error }, 'webhook delivery purge failed')
    }
  }
  const schedule = (delayMs: number) => {
    if (state.closing) return
    timer = setTimeout(() => { run().finally(() => schedule(options.everyMs)) }, delayMs)
    timer.unref()
  }

  app.addHook('onReady', async () => schedule(Math.floor(Math.random() * options.everyMs)))
  app.addHook('onClose', async () => {
    state.closing = true
    clearTimeout(timer)
  })
}

export default fp(housekeepingPlugin, { name: 'housekeeping', dependencies: ['database', 'metrics'] })
