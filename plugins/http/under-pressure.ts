import underPressure from '@fastify/under-pressure'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { getHeapStatistics } from 'node:v8'
import { ProblemError } from '../errors/index.ts'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Liveness and metrics must answer even when the process sheds load. */
    pressureExempt?: boolean
  }
}

export interface UnderPressureOptions {
  /** Mean event-loop delay (ms) above which requests are shed; 0 turns the check off. */
  maxEventLoopDelayMs: number
  /** Heap use (MiB) above which requests are shed; 0 means 90 % of V8's heap limit. */
  maxHeapUsedMb: number
  retryAfterS: number
}

/**
 * Overload degrades into fast 503s with Retry-After (which load balancers and clients understand) instead of
 * requests that queue until they time out.
 */
async function underPressurePlugin (app: FastifyInstance, options: UnderPressureOptions) {
  const heapLimit = options.maxHeapUsedMb > 0
    ? options.maxHeapUsedMb * 1024 * 1024
    : Math.floor(getHeapStatistics().heap_size_limit * 0.9)
  await app.register(underPressure, {
    maxEventLoopDelay: options.maxEventLoopDelayMs,
    maxHeapUsedBytes: heapLimit,
    retryAfter: options.retryAfterS,
    pressureHandler: async (request, reply, type) => {
      if (request.routeOptions.config?.pressureExempt === true) return
      app.metrics.dependencyErrors.inc({ dependency: 'process', operation: `shed_${type}` })
      throw new ProblemError(503, 'overloaded', 'The service is overloaded; retry shortly.', {
        headers: { 'retry-after': String(options.retryAfterS) }
      })
    }
  })
}

/** The plugin's options from the configuration. */
export const autoConfig = (app: FastifyInstance): UnderPressureOptions => ({
  maxEventLoopDelayMs: app.config.PRESSURE_MAX_EVENT_LOOP_DELAY_MS,
  maxHeapUsedMb: app.config.PRESSURE_MAX_HEAP_USED_MB,
  retryAfterS: 5
})

export default fp(underPressurePlugin, { name: 'under-pressure', dependencies: ['errors', 'metrics'] })
