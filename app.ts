import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import type { ZodTypeProvider } from 'fastify-type-provider-zod'
import type { Config } from './settings.ts'
import authPlugin, { autoConfig as authConfig } from './plugins/auth/index.ts'
import credentialResponsesPlugin from './plugins/auth/credential-responses.ts'
import cursorsPlugin, { autoConfig as cursorsConfig } from './plugins/auth/cursors.ts'
import revocationsPlugin, { autoConfig as revocationsConfig } from './plugins/auth/revocations.ts'
import cachePlugin, { autoConfig as cacheConfig } from './plugins/cache/index.ts'
import databasePlugin, { autoConfig as databaseConfig } from './plugins/database/index.ts'
import readsPlugin, { autoConfig as readsConfig } from './plugins/database/reads.ts'
import errorsPlugin from './plugins/errors/index.ts'
import housekeepingPlugin, { autoConfig as housekeepingConfig } from './plugins/housekeeping/index.ts'
import httpPlugin, { serverOptions } from './plugins/http/index.ts'
import gracefulClosePlugin from './plugins/http/graceful-close.ts'
import publicPortPlugin from './plugins/http/public-port.ts'
import readinessPlugin, { autoConfig as readinessConfig } from './plugins/http/readiness.ts'
import underPressurePlugin, { autoConfig as underPressureConfig } from './plugins/http/under-pressure.ts'
import warmUpPlugin from './plugins/http/warm-up.ts'
import workerPlugin, { autoConfig as workerConfig } from './plugins/jobs/index.ts'
import metricsPlugin, { autoConfig as metricsConfig, type Metrics } from './plugins/metrics/index.ts'
import openapiPlugin from './plugins/openapi/index.ts'
import passwordsPlugin, { autoConfig as passwordsConfig } from './plugins/passwords/index.ts'
import rateLimitPlugin, { autoConfig as rateLimitConfig } from './plugins/rate-limit/index.ts'
import redisPlugin, { autoConfig as redisConfig } from './plugins/redis/index.ts'
import tracingPlugin from './plugins/tracing/index.ts'
import { healthRoutes } from './routes/health/index.ts'
import { identity } from './routes/identity/index.ts'
import { ledger } from './routes/ledger/index.ts'
import { social } from './routes/social/index.ts'
import { webhooks } from './routes/webhooks/index.ts'

export interface BuildOptions {
  /** Overrides Fastify's logger (tests pass a stream to capture lines, or false). */
  logger?: FastifyServerOptions['logger']
  /** Metrics registry to use; each app gets its own by default so tests can read exact counts. */
  metrics?: Metrics
  /**
   * Whether this app serves the HTTP API (true by default). The standalone worker (worker.ts) passes false: the
   * same infrastructure and the same domain services (job lanes, purges), no routes and no listener.
   */
  routes?: boolean
  /**
   * Runs after every infrastructure plugin and before the first route, so hooks it adds apply to every route and
   * run after the app's own (the tests check every response against openapi.json there).
   */
  beforeRoutes?: (app: FastifyInstance) => void
}

/** The domains, in the order their routes are registered (the order of openapi.json's paths). */
const domains = [identity, social, ledger, webhooks]

/**
 * The one composition of the service, used by server.ts, worker.ts and the tests. Order matters and reads top to
 * bottom: cross-cutting concerns, then data, then the domains' services, then routes. Each plugin reads its own
 * options from the configuration (its autoConfig).
 */
export async function buildApp (config: Config, options: BuildOptions = {}) {
  const serveRoutes = options.routes ?? true
  const app = Fastify(serverOptions(config, options.logger)).withTypeProvider<ZodTypeProvider>()
  app.decorate('config', config)

  await app.register(httpPlugin)
  await app.register(errorsPlugin)
  await app.register(gracefulClosePlugin)
  await app.register(publicPortPlugin)
  await app.register(credentialResponsesPlugin)
  await app.register(metricsPlugin, metricsConfig(app, options.metrics))
  await app.register(tracingPlugin)
  await app.register(underPressurePlugin, underPressureConfig(app))
  await app.register(openapiPlugin)
  await app.register(databasePlugin, databaseConfig(app))
  await app.register(redisPlugin, redisConfig(app))
  await app.register(readinessPlugin, readinessConfig())
  await app.register(readsPlugin, readsConfig(app))
  await app.register(revocationsPlugin, revocationsConfig(app))
  await app.register(authPlugin, authConfig(app))
  await app.register(passwordsPlugin, passwordsConfig(app))
  await app.register(warmUpPlugin)
  await app.register(cachePlugin, cacheConfig(app, serveRoutes))
  await app.register(housekeepingPlugin, housekeepingConfig())
  // Job delivery (webhooks, feed fan-out) in this process unless WORKER_ENABLED=false; off, app.jobs.runDue()
  // still runs due jobs on demand (tests).
  await app.register(workerPlugin, workerConfig(app))
  await app.register(cursorsPlugin, cursorsConfig(app))

  for (const domain of domains) await app.register(domain.services)
  if (!serveRoutes) return app

  options.beforeRoutes?.(app)
  // Registered before the rate limiter, so operations endpoints are never limited (docs and openapi.json too).
  await app.register(healthRoutes)
  await app.register(rateLimitPlugin, rateLimitConfig(app))
  for (const domain of domains) await app.register(domain.routes)
  return app
}

export type App = Awaited<ReturnType<typeof buildApp>>
