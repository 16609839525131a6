import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { Sql } from './database.ts'
import { purgeSessions } from '../routes/auth/sessions.ts'
import type { Metrics } from './metrics.ts'
import { purgeDeliveries } from '../routes/webhook-endpoints/queries.ts'

/**
 * Background upkeep every API process shares: purging what has outlived its window, in batches, so each table stays
 * the size of its window: idempotency keys, sessions that are over with their refresh tokens and old revocations
 * (routes/auth/sessions.ts), finished webhook deliveries past their retention (pending ones are never purged: their
 * job still runs). Any number of processes may run it at once (each purge skips rows another holds); the random
 * start spreads them out. Failures are logged and counted, never thrown at a request.
 */
export interface HousekeepingOptions {
  idempotencyKeyTtlS: number
  refreshTokenTtlS: number
  revocationTtlS: number
  /** Finished webhook deliveries (delivered, failed) stay listed this long. */
  webhookDeliveryRetentionS: number
  everyMs: number
  batch: number
}

export function purgeIdempotencyKeys (sql: Sql, ttlS: number, batch: number): Promise<number> {
  return sql<{ purged: number }[]>`select purge_idempotency_keys(${ttlS}, ${batch}) as purged`.then(([row]) => row?.purged ?? 0)
}

interface Purge {
  /** The `operation` label of the dependency-error metric. */
  operation: string
  done: string
  /** One batch: returns how many rows went. */
  run: () => Promise<number>
}

async function housekeepingPlugin (app: FastifyInstance, options: HousekeepingOptions) {
  const metrics: Metrics = app.metrics
  let timer: NodeJS.Timeout | undefined
  const state = { closing: false }
  const { batch } = options

  const purges: Purge[] = [
    {
      operation: 'idempotency_key_purge',
      done: 'purged expired idempotency keys',
      run: () => purgeIdempotencyKeys(app.db, options.idempotencyKeyTtlS, batch)
    },
    {
      operation: 'session_purge',
      done: 'purged ended sessions, used refresh tokens and old revocations',
      run: () => purgeSessions(app.db, { refreshTokenTtlS: options.refreshTokenTtlS, maxTokenAgeS: options.revocationTtlS, batch })
    },
    {
      operation: 'webhook_delivery_purge',
      done: 'purged finished webhook deliveries past retention',
      run: () => purgeDeliveries(app.db, options.webhookDeliveryRetentionS, batch)
    }
  ]

  const run = async () => {
    for (const purge of purges) {
      try {
        // A full batch means more are due: keep going (bounded) instead of waiting a whole period.
        for (let round = 0; round < 10 && !state.closing; round++) {
          const purged = await purge.run()
          if (purged > 0) app.log.info({ purged }, purge.done)
          if (purged < batch) break
        }
      } catch (error) {
        metrics.dependencyErrors.inc({ dependency: 'postgres', operation: purge.operation })
        app.log.warn({ err: error }, `${purge.operation.replaceAll('_', ' ')} failed`)
      }
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
