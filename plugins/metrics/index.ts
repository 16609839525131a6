import { timingSafeEqual } from 'node:crypto'
import { context, createContextKey } from '@opentelemetry/api'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import { unauthorized } from '../errors/index.ts'
import { isDevelopmentEnv, type InfrastructureConfig } from '../../config.ts'

declare module 'fastify' {
  interface FastifyInstance {
    metrics: Metrics
  }
  interface FastifyRequest {
    inFlightCounted: boolean
    statementTally: StatementTally | undefined
  }
}

/** One statement shape within one request: when it first ran, how often, and the rows of each run. */
interface ShapeTally {
  order: number
  count: number
  rows: number
}

/** The statements one request ran, by shape (the SQL text with $n placeholders). */
export interface StatementTally {
  shapes: Map<string, ShapeTally>
}

/**
 * Where a request's tally travels: in the OpenTelemetry context that plugins/tracing/index.ts already carries through
 * the request's lifecycle (no second async-context store per request).
 */
export const statementTallyKey = createContextKey('ledger-api statement tally')

/**
 * The tally of the request whose async context this runs in: call it when a statement is sent (postgres.js
 * settles statements in its connection's context, not the caller's). Outside any request (startup, pollers): none.
 */
export const currentStatementTally = (): StatementTally | undefined => context.active().getValue(statementTallyKey) as StatementTally | undefined

/** Records a finished statement in the tally of the request that sent it. */
export function tallyStatement (tally: StatementTally | undefined, text: string, rows: number) {
  if (tally === undefined) return
  const { shapes } = tally
  const shape = shapes.get(text)
  if (shape === undefined) shapes.set(text, { order: shapes.size, count: 1, rows })
  else {
    shape.count++
    shape.rows += rows
  }
}

const shapeLabel = (text: string) => text.replace(/\s+/g, ' ').trim().slice(0, 200)

/**
 * N+1 evidence from one request: a statement shape S that ran at least 3 times, after another shape L whose rows
 * add up to S's runs (allowing one look-ahead row per run of L, as the keyset pages fetch): S ran once per row of
 * L. Statements that merely ran as often as each other across requests are never related here.
 */
export function nPlusOnes (tally: StatementTally): Array<{ statement: string, rowsOf: string }> {
  const found: Array<{ statement: string, rowsOf: string }> = []
  for (const [text, shape] of tally.shapes) {
    if (shape.count < 3) continue
    for (const [listText, list] of tally.shapes) {
      if (list === shape || list.order > shape.order) continue
      if (list.rows >= shape.count && list.rows <= shape.count + list.count) {
        found.push({ statement: shapeLabel(text), rowsOf: shapeLabel(listText) })
        break
      }
    }
  }
  return found
}

/** Every metric the service exports, on a registry of its own so two apps in one process do not collide. */
export function createMetrics () {
  const registry = new Registry()
  // Process metrics: event loop lag, heap, RSS, GC, handles.
  collectDefaultMetrics({ register: registry })
  // Values read when scraped, from the plugin that owns them (it sets its reader when it registers).
  const readAtScrape: { revocationListAgeS?: () => number } = {}
  return {
    registry,
    readAtScrape,
    httpRequestDuration: new Histogram({
      name: 'ledger_http_request_duration_seconds',
      help: 'HTTP request duration by method, route template and status code.',
      labelNames: ['method', 'route', 'status_code'] as const,
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10],
      registers: [registry]
    }),
    httpInFlight: new Gauge({
      name: 'ledger_http_requests_in_flight',
      help: 'Requests received and not yet answered.',
      registers: [registry]
    }),
    httpAborted: new Counter({
      name: 'ledger_http_requests_aborted_total',
      help: 'Requests whose connection closed before their response was sent (client gone, request timeout).',
      labelNames: ['method', 'route'] as const,
      registers: [registry]
    }),
    dbNPlusOne: new Counter({
      name: 'ledger_db_n_plus_one_total',
      help: 'Requests in which a statement ran once per row returned by an earlier statement of the same request (N+1), by route and statement text.',
      labelNames: ['route', 'statement', 'rows_of'] as const,
      registers: [registry]
    }),
    cacheRequests: new Counter({
      name: 'ledger_cache_requests_total',
      help: 'Cache-aside lookups by cache name and result (hit, miss).',
      labelNames: ['cache', 'result'] as const,
      registers: [registry]
    }),
    cacheNearHits: new Counter({
      name: 'ledger_cache_near_hits_total',
      help: 'Cache hits served from the process itself (near cache, no Redis round trip), by cache name; also counted in ledger_cache_requests_total.',
      labelNames: ['cache'] as const,
      registers: [registry]
    }),
    rateLimitDecisions: new Counter({
      name: 'ledger_rate_limit_decisions_total',
      help: 'Rate-limit decisions by tier (standard, pro, public) and decision (admitted, rejected).',
      labelNames: ['tier', 'decision'] as const,
      registers: [registry]
    }),
    dependencyErrors: new Counter({
      name: 'ledger_dependency_errors_total',
      help: 'Failed calls to a dependency (redis, postgres) by operation.',
      labelNames: ['dependency', 'operation'] as const,
      registers: [registry]
    }),
    dbQueryDuration: new Histogram({
      name: 'ledger_db_query_duration_seconds',
      help: 'SQL statement duration (including time queued for a pooled connection) by statement name.',
      labelNames: ['statement', 'outcome'] as const,
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5],
      registers: [registry]
    }),
    // postgres.js exposes no pool statistics, so the pool is observed from the statements sent through it:
    // in use = min(in flight, max), waiting = the rest. A transaction holds its connection between statements.
    dbStatementsInFlight: new Gauge({
      name: 'ledger_db_statements_in_flight',
      help: 'SQL statements sent and not yet answered (running or queued for a pooled connection).',
      registers: [registry]
    }),
    dbCircuitState: new Gauge({
      name: 'ledger_db_circuit_state',
      help: 'The database circuit breaker of each pool: 0 closed (statements sent), 1 half-open (one probe), 2 open (refusing).',
      labelNames: ['pool'] as const,
      // With several workers (cluster.ts sums their metrics) the worst worker's state, not a sum of states.
      aggregator: 'max',
      registers: [registry]
    }),
    dbCircuitRefused: new Counter({
      name: 'ledger_db_circuit_refused_total',
      help: 'SQL statements refused without being sent because the pool\'s circuit breaker was open.',
      registers: [registry]
    }),
    jobAttempts: new Counter({
      name: 'ledger_job_attempts_total',
      help: 'Job attempts run by the worker, by kind and outcome (done, continue, retry, failed: given up, deferred: endpoint busy, error: not recorded).',
      labelNames: ['kind', 'outcome'] as const,
      registers: [registry]
    }),
    webhookDeliveries: new Counter({
      name: 'ledger_webhook_deliveries_total',
      help: 'Webhook delivery attempts by outcome (delivered, retry, failed: given up) and reason of a failure (timeout, status, connect, refused_address ...).',
      labelNames: ['outcome', 'reason'] as const,
      registers: [registry]
    }),
    webhookDeliveryDuration: new Histogram({
      name: 'ledger_webhook_delivery_duration_seconds',
      help: 'Webhook attempt duration, connect to last byte, by outcome.',
      labelNames: ['outcome'] as const,
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry]
    }),
    // Per lane (feed, webhooks: config.ts's WORKER_*_CONCURRENCY), so a backlog in one lane shows as that lane's.
    jobsDue: new Gauge({
      name: 'ledger_jobs_due',
      help: 'Outbox depth per lane: jobs due now and not claimed (refreshed by the worker every few seconds).',
      labelNames: ['lane'] as const,
      aggregator: 'max',
      registers: [registry]
    }),
    jobsOldestDueAge: new Gauge({
      name: 'ledger_jobs_oldest_due_age_seconds',
      help: 'Per lane: how long the oldest due job has waited past its run time (0 when none is due).',
      labelNames: ['lane'] as const,
      aggregator: 'max',
      registers: [registry]
    }),
    jobsFailed: new Gauge({
      name: 'ledger_jobs_failed',
      help: 'Jobs the worker gave up on (kept for an operator, never claimed again).',
      aggregator: 'max',
      registers: [registry]
    }),
    workerLag: new Histogram({
      name: 'ledger_worker_lag_seconds',
      help: 'Worker lag per lane: from a job\'s run time to its claim.',
      labelNames: ['lane'] as const,
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 300],
      registers: [registry]
    }),
    jobFirstAttemptLag: new Histogram({
      name: 'ledger_job_first_attempt_lag_seconds',
      help: 'Per lane: from the commit that queued a job to the start of its first attempt (the contract holds webhooks and feed delivery to 5 s).',
      labelNames: ['lane'] as const,
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
      registers: [registry]
    }),
    webhookEndpointsDisabled: new Counter({
      name: 'ledger_webhook_endpoints_disabled_total',
      help: 'Webhook endpoints the worker disabled because every attempt had failed for WEBHOOK_DISABLE_AFTER_H.',
      registers: [registry]
    }),
    dbPoolMax: new Gauge({
      name: 'ledger_db_pool_max_connections',
      help: 'The most connections this process opens to PgBouncer.',
      registers: [registry]
    }),
    moneyWrites: new Counter({
      name: 'ledger_money_writes_total',
      help: 'POST /transactions that reached the ledger, by kind and outcome (created, replayed: an Idempotency-Key answered with its first transaction, refused: see ledger_money_refusals_total, error: not answered by the ledger).',
      labelNames: ['kind', 'outcome'] as const,
      registers: [registry]
    }),
    ledgerWriteBatchSize: new Histogram({
      name: 'ledger_write_batch_size',
      help: 'Money writes per database call (group commit): 1 is a write that went alone, more are writes that queued while every call slot was busy and committed together.',
      buckets: [1, 2, 4, 8, 16, 32],
      registers: [registry]
    }),
    ledgerWriteQueue: new Gauge({
      name: 'ledger_write_queue_length',
      help: 'Money writes waiting in this process for their database call (one is in flight and fewer than a full batch wait, or LEDGER_BATCHES_IN_FLIGHT are); they leave together as the next batch.',
      registers: [registry]
    }),
    moneyRefusals: new Counter({
      name: 'ledger_money_refusals_total',
      help: 'Money writes the ledger refused, nothing written, by kind and reason (insufficient_funds, reference_used, idempotency_key_reused ...).',
      labelNames: ['kind', 'reason'] as const,
      registers: [registry]
    }),
    revocationListAge: new Gauge({
      name: 'ledger_revocation_list_age_seconds',
      help: 'Seconds since this process last read the token revocation list (past REVOCATION_MAX_STALENESS_S it answers tokens with 503).',
      // With several workers (cluster.ts) the stalest worker's list.
      aggregator: 'max',
      collect () {
        const age = readAtScrape.revocationListAgeS?.()
        if (age !== undefined) this.set(age)
      },
      registers: [registry]
    }),
    ledgerCheckHeld: new Gauge({
      name: 'ledger_check_held',
      help: 'Whether every ledger invariant held in the last ledger check that finished, whichever process ran it (1 held, 0 failed; 0 too before any check finished, with ledger_check_last_run_timestamp_seconds 0).',
      // Every worker reads the same last run; max keeps a worker that has not read it yet from looking like a failure.
      aggregator: 'max',
      registers: [registry]
    }),
    ledgerCheckLastRun: new Gauge({
      name: 'ledger_check_last_run_timestamp_seconds',
      help: 'When the last ledger check that finished (held or failed) ended, Unix time; 0 when none has.',
      aggregator: 'max',
      registers: [registry]
    }),
    ledgerCheckDuration: new Gauge({
      name: 'ledger_check_duration_seconds',
      help: 'How long the last finished ledger check took.',
      aggregator: 'max',
      registers: [registry]
    }),
    ledgerCheckInterval: new Gauge({
      name: 'ledger_check_interval_seconds',
      help: 'RECONCILE_INTERVAL_S: one ledger check per interval among all processes (0: this process never runs it).',
      aggregator: 'max',
      registers: [registry]
    }),
    ledgerCheckRuns: new Counter({
      name: 'ledger_check_runs_total',
      help: 'Ledger checks this process ran, by outcome (held, failed: an invariant broke, error: the check could not finish).',
      labelNames: ['outcome'] as const,
      registers: [registry]
    })
  }
}

/** Money write kinds, outcomes and refusal reasons: every series exists from the start at 0 (rate() and alerts see the first one). */
export const MONEY_KINDS = ['deposit', 'withdrawal', 'transfer'] as const
export const MONEY_OUTCOMES = ['created', 'replayed', 'refused', 'error'] as const
export const MONEY_REFUSALS = [
  'insufficient_funds', 'user_not_found', 'balance_limit_exceeded', 'caller_not_found', 'transfer_to_self', 'client_revoked',
  'reference_used', 'idempotency_key_reused'
] as const
export type MoneyKind = typeof MONEY_KINDS[number]
export type MoneyRefusal = typeof MONEY_REFUSALS[number]

export type Metrics = ReturnType<typeof createMetrics>

/**
 * Series that must exist before their first event: a counter born at 1 shows no increase to rate() or increase(),
 * so the first refusal, or the first Redis failure the limiter fails open on, would be invisible to an alert.
 */
function initialiseSeries (metrics: Metrics) {
  for (const kind of MONEY_KINDS) {
    for (const outcome of MONEY_OUTCOMES) metrics.moneyWrites.inc({ kind, outcome }, 0)
    for (const reason of MONEY_REFUSALS) metrics.moneyRefusals.inc({ kind, reason }, 0)
  }
  for (const outcome of ['held', 'failed', 'error']) metrics.ledgerCheckRuns.inc({ outcome }, 0)
  metrics.dependencyErrors.inc({ dependency: 'redis', operation: 'rate_limit' }, 0)
}

export interface MetricsOptions {
  metrics: Metrics
  /** When set, GET /metrics requires `Authorization: Bearer <token>`. */
  token?: string | undefined
  /** Whether GET /metrics exists on this (the public) port: off, open, or with the token (publicMetricsRoute decides). */
  publicRoute?: 'token' | 'open' | 'off'
}

/** Constant-time check of `Authorization: Bearer <token>` (also used by the operations listener). */
export function bearerMatches (authorization: string | undefined, token: string): boolean {
  const given = Buffer.from(authorization ?? '')
  const expected = Buffer.from(`Bearer ${token}`)
  return given.length === expected.length && timingSafeEqual(given, expected)
}

async function metricsPlugin (app: FastifyInstance, options: MetricsOptions) {
  const { metrics } = options
  initialiseSeries(metrics)
  app.decorate('metrics', metrics)
  app.decorateRequest('inFlightCounted', false)
  app.decorateRequest('statementTally', undefined)

  // In flight from onRequest until the response is finished or its connection is gone, counted down exactly once.
  // Fastify runs onResponse only for a response that finished; when the client goes away after sending its whole
  // body (a load generator closing its sockets), neither onResponse nor onRequestAbort (which needs an incomplete
  // request) runs. The raw response's 'close' event fires once on every path: finished, client gone, request
  // timeout, server closing the socket. onResponse and onRequestAbort stay as earlier exits; the flag makes the
  // three one.
  // Callback hooks, here and below: their work is synchronous, and an async hook costs every request a promise
  // and a microtask turn for nothing.
  app.addHook('onRequest', (request, reply, next) => {
    request.inFlightCounted = true
    metrics.httpInFlight.inc()
    // Not writableFinished: app.inject's response never sets it. 'finish' comes before 'close' on every transport.
    let finished = false
    reply.raw.once('finish', () => { finished = true })
    reply.raw.once('close', () => {
      if (!finished && request.inFlightCounted) {
        metrics.httpAborted.inc({ method: request.method, route: request.routeOptions.url ?? 'unmatched' })
      }
      done(request)
    })
    // The request's statements (N+1 evidence); plugins/tracing/index.ts puts it into the request's context.
    request.statementTally = { shapes: new Map() }
    next()
  })
  const done = (request: FastifyRequest) => {
    if (!request.inFlightCounted) return
    request.inFlightCounted = false
    metrics.httpInFlight.dec()
    const tally = request.statementTally
    if (tally === undefined || tally.shapes.size < 2) return
    request.statementTally = undefined
    const route = request.routeOptions.url ?? 'unmatched'
    for (const { statement, rowsOf } of nPlusOnes(tally)) metrics.dbNPlusOne.inc({ route, statement, rows_of: rowsOf })
  }
  app.addHook('onResponse', (request, reply, next) => {
    done(request)
    // The route template, never the raw URL: ids in paths would make a label per user.
    const route = request.routeOptions.url ?? 'unmatched'
    metrics.httpRequestDuration.observe({ method: request.method, route, status_code: reply.statusCode }, reply.elapsedTime / 1000)
    next()
  })
  app.addHook('onRequestAbort', async (request) => {
    if (request.inFlightCounted) metrics.httpAborted.inc({ method: request.method, route: request.routeOptions.url ?? 'unmatched' })
    done(request)
  })

  const publicRoute = options.publicRoute ?? (options.token === undefined ? 'open' : 'token')
  if (publicRoute === 'off') {
    app.log.info('GET /metrics is not served on the public port (OPS_PORT serves it, or set METRICS_TOKEN)')
    return
  }
  app.get('/metrics', {
    config: { public: true, pressureExempt: true },
    schema: { hide: true }
  }, async (request, reply) => {
    if (options.token !== undefined && !bearerMatches(request.headers.authorization, options.token)) throw unauthorized('Send the metrics token.')
    return reply.type(metrics.registry.contentType).send(await metrics.registry.metrics())
  })
}

/**
 * Whether /metrics is served on the public port: not when the operations listener (OPS_PORT) serves it; with
 * METRICS_TOKEN, to its bearer only; without a token only in development and test. Anywhere else it is absent
 * (404) rather than open: the metrics name routes, pools and error rates an attacker would like to watch.
 */
export function publicMetricsRoute (config: InfrastructureConfig): 'token' | 'open' | 'off' {
  if (config.OPS_PORT > 0) return 'off'
  if (config.METRICS_TOKEN !== undefined) return 'token'
  return isDevelopmentEnv(config.NODE_ENV) ? 'open' : 'off'
}

/** The plugin's options from the configuration, with the registry to fill (each app its own by default). */
export const autoConfig = (app: FastifyInstance, metrics: Metrics = createMetrics()): MetricsOptions =>
  ({ metrics, token: app.config.METRICS_TOKEN, publicRoute: publicMetricsRoute(app.config) })

export default fp(metricsPlugin, { name: 'metrics', dependencies: ['errors'] })
