import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { Counter, Histogram, Registry, collectDefaultMetrics } from 'prom-client'

declare module 'fastify' {
  interface FastifyInstance {
    metrics: Metrics
  }
}

/** Every metric the service exports, on a registry of its own so two apps in one process do not collide. */
export function createMetrics () {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry })
  return {
    registry,
    cacheRequests: new Counter({
      name: 'ledger_cache_requests_total',
      help: 'Cache-aside lookups by cache name and result (hit, miss).',
      labelNames: ['cache', 'result'] as const,
      registers: [registry]
    }),
    dependencyErrors: new Counter({
      name: 'ledger_dependency_errors_total',
      help: 'Failed calls to a dependency (redis, postgres) by operation.',
      labelNames: ['dependency', 'operation'] as const,
      registers: [registry]
    }),
    rateLimitDecisions: new Counter({
      name: 'ledger_rate_limit_decisions_total',
      help: 'Rate-limit decisions by tier (standard, pro, public) and decision (admitted, rejected).',
      labelNames: ['tier', 'decision'] as const,
      registers: [registry]
    }),
    dbQueryDuration: new Histogram({
      name: 'ledger_db_query_duration_seconds',
      help: 'SQL statement duration by statement name (operation and first table).',
      labelNames: ['statement', 'outcome'] as const,
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5],
      registers: [registry]
    })
  }
}

export type Metrics = ReturnType<typeof createMetrics>

async function metricsPlugin (app: FastifyInstance, options: { metrics: Metrics }) {
  app.decorate('metrics', options.metrics)
}

export default fp(metricsPlugin, { name: 'metrics' })
