import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { Metrics } from '../metrics/index.ts'

declare module 'fastify' {
  interface FastifyInstance {
    housekeeping: Housekeeping
  }
}

/**
 * Background upkeep every process of the app shares (API and worker): purging what has outlived its window, in batches, so each table stays
 * the size of its window. The domains add their purges (sessions, webhook deliveries, idempotency keys); this plugin
 * only schedules them. Any number of processes may run it at once (each purge skips rows another holds); the random
 * start spreads them out. Failures are logged and counted, never thrown at a request.
 */
export interface HousekeepingOptions {
  everyMs: number
  /** Rows one purge statement removes at most. */
  batch: number
}

export interface Purge {
  /** The `operation` label of the dependency-error metric. */
  operation: string
  /** The log line when rows went. */
  done: string
  /** One batch of at most `batch` rows: returns how many went. */
  run: (batch: number) => Promise<number>
}

export interface Housekeeping {
  /** Adds a purge to every round, after those added before it. */
  add: (purge: Purge) => void
}

async function housekeepingPlugin (app: FastifyInstance, options: HousekeepingOptions) {
  const metrics: Metrics = app.metrics
  let timer: NodeJS.Timeout | undefined
  const state = { closing: false }
  const { batch } = options

  const purges: Purge[] = []
  app.decorate('housekeeping', { add: (purge: Purge) => { purges.push(purge) } } satisfies Housekeeping)

  const run = async () => {
    for (const purge of purges) {
      try {
        // A full batch means more are due: keep going (bounded) instead of waiting a whole period.
        for (let round = 0; round < 10 && !state.closing; round++) {
          const purged = await purge.run(batch)
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

/** A round a minute, 1000 rows a statement. */
export const autoConfig = (): HousekeepingOptions => ({ everyMs: 60_000, batch: 1000 })

export default fp(housekeepingPlugin, { name: 'housekeeping', dependencies: ['database', 'metrics'] })
