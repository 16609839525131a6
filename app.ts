import { randomUUID } from 'node:crypto'
import Fastify, { LogController, type FastifyInstance, type FastifyServerOptions } from 'fastify'
import { serializerCompiler, validatorCompiler, type ZodTypeProvider } from 'fastify-type-provider-zod'
import { isDevelopmentEnv } from './config.ts'
import type { Config } from './settings.ts'
import authPlugin, { MAX_ACCESS_TOKEN_AGE_S } from './plugins/auth.ts'
import cacheAsidePlugin from './plugins/cache-aside.ts'
import credentialResponsesPlugin from './plugins/credential-responses.ts'
import currenciesPlugin from './plugins/currencies.ts'
import cursorsPlugin from './plugins/cursors.ts'
import databasePlugin from './plugins/database.ts'
import errorsPlugin, { isUnavailableError, logSerializers, ProblemError, sendProblem } from './plugins/errors.ts'
import gracefulClosePlugin from './plugins/graceful-close.ts'
import housekeepingPlugin from './plugins/housekeeping.ts'
import { parseJsonBody } from './plugins/json-body.ts'
import ledgerCheckPlugin from './plugins/ledger-check.ts'
import metricsPlugin, { createMetrics, currentStatementTally, tallyStatement, type Metrics, type StatementTally } from './plugins/metrics.ts'
import openapiPlugin from './plugins/openapi.ts'
import passwordsPlugin from './plugins/passwords.ts'
import rateLimitPlugin from './plugins/rate-limit.ts'
import readinessPlugin from './plugins/readiness.ts'
import readRouterPlugin from './plugins/read-router.ts'
import redisPlugin from './plugins/redis.ts'
import revocationsPlugin from './plugins/revocations.ts'
import tracingPlugin, { traceLogFields } from './plugins/tracing.ts'
import underPressurePlugin from './plugins/under-pressure.ts'
import workerPlugin from './plugins/worker.ts'
import { workerOptions } from './job-handlers.ts'
import { authRoutes } from './routes/auth/index.ts'
import { balancesRoutes } from './routes/balances/index.ts'
import { feedRoutes } from './routes/feed/index.ts'
import { followsRoutes } from './routes/follows/index.ts'
import { healthRoutes } from './routes/health/index.ts'
import { transactionsRoutes } from './routes/transactions/index.ts'
import { usersRoutes } from './routes/users/index.ts'
import { webhookEndpointsRoutes } from './routes/webhook-endpoints/index.ts'

declare module 'fastify' {
  interface FastifyInstance {
    config: Config
  }
}

export interface BuildOptions {
  /** Overrides Fastify's logger (tests pass a stream to capture lines, or false). */
  logger?: FastifyServerOptions['logger']
  /** Metrics registry to use; each app gets its own by default so tests can read exact counts. */
  metrics?: Metrics
  /**
   * Runs after every infrastructure plugin and before the first route, so hooks it adds apply to every route and
   * run after the app's own (the tests check every response against openapi.json there).
   */
  beforeRoutes?: (app: FastifyInstance) => void
}

/**
 * Whether /metrics is served on the public port: not when the operations listener (OPS_PORT) serves it; with
 * METRICS_TOKEN, to its bearer only; without a token only in development and test. Anywhere else it is absent
 * (404) rather than open: the metrics name routes, pools and error rates an attacker would like to watch.
 */
export function publicMetricsRoute (config: Config): 'token' | 'open' | 'off' {
  if (config.OPS_PORT > 0) return 'off'
  if (config.METRICS_TOKEN !== undefined) return 'token'
  return isDevelopmentEnv(config.NODE_ENV) ? 'open' : 'off'
}

const circuitStateValue = { closed: 0, half_open: 1, open: 2 } as const

const safeRequestId = /^[A-Za-z0-9._:-]{1,128}$/

export async function buildApp (config: Config, options: BuildOptions = {}) {
  const logger = options.logger ?? {
    level: config.LOG_LEVEL,
    redact: ['req.headers.authorization', 'req.headers.cookie']
  }
  const app = Fastify({
    // Every line carries the trace and span ids of the request (or work) it belongs to (plugins/tracing.ts), and
    // errors are serialized without the data they carry (plugins/errors.ts), whoever supplied the logger options.
    logger: typeof logger === 'object' ? { ...logger, mixin: traceLogFields, serializers: { ...logger.serializers, ...logSerializers } } : logger,
    bodyLimit: config.BODY_LIMIT_BYTES,
    trustProxy: config.TRUST_PROXY.length > 0 ? config.TRUST_PROXY : false,
    // Slow clients (slowloris) are cut: Node only enforces these when it checks its connections, every 30 s by
    // default, and its header timeout is 60 s unless set when the server is created, so all three are set here.
    requestTimeout: config.REQUEST_TIMEOUT_MS,
    http: {
      requestTimeout: config.REQUEST_TIMEOUT_MS,
      headersTimeout: Math.min(config.REQUEST_TIMEOUT_MS, 10_000),
      connectionsCheckingInterval: Math.min(1000, Math.ceil(config.REQUEST_TIMEOUT_MS / 4))
    },
    // Errors raised by the router before any hook (bad percent-encoding, an over-long path parameter) get the
    // same problem+json as everything else, without echoing the path.
    frameworkErrors: (error, request, reply) => {
      const status = error.statusCode === 414 ? 414 : 400
      return sendProblem(request, reply, new ProblemError(status, 'malformed_url', status === 414 ? 'A path parameter is too long.' : 'The URL is malformed.', { cause: error }))
    },
    // plugins/tracing.ts logs each request itself, with its trace and span ids on every line.
    logController: new LogController({ disableRequestLogging: true }),
    // The caller's request id is kept when it is safe to log and echo; anything else gets a fresh one.
    requestIdHeader: false,
    genReqId: (request) => {
      const header = request.headers['x-request-id']
      return typeof header === 'string' && safeRequestId.test(header) ? header : randomUUID()
    },
    routerOptions: { maxParamLength: 200 },
    // plugins/graceful-close.ts answers while closing, in problem+json with Retry-After.
    return503OnClosing: false
  }).withTypeProvider<ZodTypeProvider>()

  app.setValidatorCompiler(validatorCompiler)
  app.setSerializerCompiler(serializerCompiler)
  app.decorate('config', config)
  // Only JSON is accepted; without this a text/plain body would reach validation instead of getting 415.
  app.removeContentTypeParser('text/plain')
  // Fastify's JSON parser with its protections, plus number literals with a fraction or an exponent kept apart
  // from integers so the money schema refuses them instead of seeing a rounded value (plugins/json-body.ts).
  app.removeContentTypeParser('application/json')
  app.addContentTypeParser('application/json', { parseAs: 'string' }, parseJsonBody)
  app.addHook('onSend', async (request, reply) => {
    reply.header('x-request-id', request.id)
  })

  // Order matters and is meant to be read top to bottom: cross-cutting concerns, then data, then routes.
  const metrics = options.metrics ?? createMetrics()
  await app.register(errorsPlugin)
  await app.register(gracefulClosePlugin)
  await app.register(credentialResponsesPlugin)
  metrics.dbPoolMax.set(config.DATABASE_POOL_MAX)
  metrics.dbCircuitState.set({ pool: 'primary' }, 0)
  if (config.DATABASE_REPLICA_URL !== undefined) metrics.dbCircuitState.set({ pool: 'replica' }, 0)
  await app.register(metricsPlugin, { metrics, token: config.METRICS_TOKEN, publicRoute: publicMetricsRoute(config) })
  await app.register(tracingPlugin)
  await app.register(underPressurePlugin, {
    maxEventLoopDelayMs: config.PRESSURE_MAX_EVENT_LOOP_DELAY_MS,
    maxHeapUsedMb: config.PRESSURE_MAX_HEAP_USED_MB,
    retryAfterS: 5
  })
  await app.register(openapiPlugin)
  await app.register(databasePlugin, {
    url: config.DATABASE_URL,
    replicaUrl: config.DATABASE_REPLICA_URL,
    max: config.DATABASE_POOL_MAX,
    idleTimeoutS: config.DATABASE_IDLE_TIMEOUT_S,
    connectTimeoutS: config.DATABASE_CONNECT_TIMEOUT_S,
    circuit: {
      failureThreshold: config.DATABASE_CIRCUIT_FAILURES,
      openMs: config.DATABASE_CIRCUIT_OPEN_MS,
      onStateChange: (pool, state, previous) => {
        metrics.dbCircuitState.set({ pool }, circuitStateValue[state])
        // One warning when it opens and one line when it closes; the probes in between (every openMs) at debug.
        if (state === 'open' && previous === 'closed') app.log.warn({ pool }, 'database circuit breaker open: statements are refused until a probe succeeds')
        else if (state === 'closed') app.log.info({ pool }, 'database circuit breaker closed: the database answers again')
        else app.log.debug({ pool, state }, `database circuit breaker ${state.replace('_', '-')}`)
      }
    },
    observeQuery: {
      refused: () => metrics.dbCircuitRefused.inc(),
      started: () => {
        metrics.dbStatementsInFlight.inc()
        // The request's statement tally (N+1 evidence), taken while still in the caller's async context.
        return currentStatementTally()
      },
      finished: ({ operation, table, text, rows, durationMs, error, context }) => {
        metrics.dbStatementsInFlight.dec()
        tallyStatement(context as StatementTally | undefined, text, rows)
        metrics.dbQueryDuration.observe({ statement: table === '' ? operation : `${operation} ${table}`, outcome: error === undefined ? 'ok' : 'error' }, durationMs / 1000)
        if (isUnavailableError(error)) metrics.dependencyErrors.inc({ dependency: 'postgres', operation })
      }
    }
  })
  await app.register(redisPlugin, { url: config.REDIS_URL, commandTimeoutMs: config.REDIS_COMMAND_TIMEOUT_MS, clusterNodes: config.REDIS_CLUSTER_NODES })
  // A round at most every second, each probe bounded, so a dependency gone is seen within about 2 s.
  await app.register(readinessPlugin, { intervalMs: 1000, timeoutMs: 900 })
  await app.register(readRouterPlugin, { windowS: config.READ_YOUR_WRITES_S })
  await app.register(revocationsPlugin, {
    pollMs: config.REVOCATION_POLL_MS,
    maxStalenessMs: config.REVOCATION_MAX_STALENESS_S * 1000,
    maxTokenAgeS: MAX_ACCESS_TOKEN_AGE_S
  })
  await app.register(currenciesPlugin, { refreshMs: config.CURRENCIES_REFRESH_S * 1000 })
  await app.register(authPlugin, {
    secret: config.JWT_SECRET,
    issuer: config.JWT_ISSUER,
    audience: config.JWT_AUDIENCE,
    ttlSeconds: config.JWT_TTL_S
  })

  await app.register(passwordsPlugin, {
    cost: config.PASSWORD_HASH_COST,
    parallelism: config.PASSWORD_HASH_PARALLELISM,
    concurrency: config.PASSWORD_HASH_CONCURRENCY,
    queue: config.PASSWORD_HASH_QUEUE
  })

  await app.register(cacheAsidePlugin, {
    jitter: config.CACHE_JITTER,
    near: { maxEntries: config.CACHE_NEAR_MAX_ENTRIES, maxAgeMs: config.CACHE_NEAR_MAX_AGE_MS }
  })
  await app.register(housekeepingPlugin, {
    idempotencyKeyTtlS: config.IDEMPOTENCY_KEY_TTL_H * 3600,
    refreshTokenTtlS: config.REFRESH_TOKEN_TTL_S,
    // Revocations are kept a little past the longest access token life (one hour), for clock differences.
    revocationTtlS: MAX_ACCESS_TOKEN_AGE_S + 300,
    webhookDeliveryRetentionS: config.WEBHOOK_DELIVERY_RETENTION_H * 3600,
    everyMs: 60_000,
    batch: 1000
  })
  await app.register(ledgerCheckPlugin, {
    intervalS: config.RECONCILE_INTERVAL_S,
    statementTimeoutMs: config.RECONCILE_STATEMENT_TIMEOUT_S * 1000
  })
  // Job delivery (webhooks, feed fan-out) in this process unless WORKER_ENABLED=false; off, app.worker.runDue()
  // still runs due jobs on demand (tests).
  await app.register(workerPlugin, workerOptions(config, metrics, app.cache, config.WORKER_ENABLED))
  await app.register(cursorsPlugin, { secret: config.JWT_SECRET })

  options.beforeRoutes?.(app)
  // Registered before the rate limiter, so operations endpoints are never limited (docs and openapi.json too).
  await app.register(healthRoutes)
  await app.register(rateLimitPlugin, {
    tiers: {
      standard: { capacity: config.RATE_LIMIT_STANDARD_CAPACITY, refillPerSecond: config.RATE_LIMIT_STANDARD_REFILL_PER_S },
      pro: { capacity: config.RATE_LIMIT_PRO_CAPACITY, refillPerSecond: config.RATE_LIMIT_PRO_REFILL_PER_S },
      service: { capacity: config.RATE_LIMIT_SERVICE_CAPACITY, refillPerSecond: config.RATE_LIMIT_SERVICE_REFILL_PER_S }
    },
    publicTier: { capacity: config.RATE_LIMIT_PUBLIC_CAPACITY, refillPerSecond: config.RATE_LIMIT_PUBLIC_REFILL_PER_S },
    failOpen: config.RATE_LIMIT_FAIL_OPEN
  })

  await app.register(authRoutes)
  await app.register(usersRoutes)
  await app.register(followsRoutes)
  await app.register(feedRoutes)
  await app.register(transactionsRoutes)
  await app.register(balancesRoutes)
  await app.register(webhookEndpointsRoutes)

  return app
}

export type App = Awaited<ReturnType<typeof buildApp>>
