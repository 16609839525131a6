import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { Sql } from './database.ts'
import { purgeSessions } from '../routes/auth/sessions.ts'
import type { Metrics } from './metrics.ts'

/**
 * Background upkeep every API process shares: purging idempotency keys past their window, and sessions that are
 * over with their refresh tokens and old revocations (routes/auth/sessions.ts), in batches, so the tables stay
 * the size of their windows. Any number of processes may run it at once (the purge skips rows another holds);
 * the random start spreads them out. Failures are logged and counted, never thrown at a request.
 */
export interface HousekeepingOptions {
  idempotencyKeyTtlS: number
  refreshTokenTtlS: number
  revocationTtlS: number
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
        const purged = await purgeSessions(app.db, { refreshTokenTtlS: options.refreshTokenTtlS, maxTokenAgeS: options.revocationTtlS, batch: options.batch })
        if (purged > 0) app.log.info({ purged }, 'purged ended sessions, used refresh tokens and old revocations')
        if (purged < options.batch) break
      }
    } catch (error) {
      metrics.dependencyErrors.inc({ dependency: 'postgres', operation: 'session_purge' })
      app.log.warn({ err: error }, 'session purge failed')
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
