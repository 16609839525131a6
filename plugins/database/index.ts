import { SpanKind, SpanStatusCode, trace, type Attributes } from '@opentelemetry/api'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import postgres from 'postgres'
import { CircuitBreaker, CircuitOpenError, type BreakerState } from './circuit-breaker.ts'
import { isConnectionError, isUnavailableError } from '../errors/index.ts'
import { childSpansRecord } from '../tracing/index.ts'
import { currentStatementTally, tallyStatement, type Metrics, type StatementTally } from '../metrics/index.ts'

declare module 'fastify' {
  interface FastifyInstance {
    /** The primary (through PgBouncer): every write, and every read that must see the latest commit. */
    db: Sql
    /** The read replica's pool, or null when DATABASE_REPLICA_URL is unset. */
    dbReplica: Sql | null
    /**
     * `select 1` on a connection of its own to the primary (through PgBouncer), outside the pool: the readiness
     * probe. Through the pool it would wait behind the requests' statements, and a busy process would report its
     * database down. Observed like every statement (span, statement metrics).
     */
    dbProbe: () => Promise<void>
  }
}

// int8 columns arrive as strings: ids stay strings in the API, and money columns are capped by CHECK
// constraints at Number.MAX_SAFE_INTEGER so mappers can turn them into exact numbers.
export type Sql = postgres.Sql
export type TransactionSql = postgres.TransactionSql

/** Hooks for metrics: called when a statement is sent and when it is answered. */
export interface QueryObserver {
  /** Runs in the caller's async context; what it returns comes back to finished() as `context`. */
  started: () => unknown
  finished: (event: { operation: string, table: string, text: string, rows: number, durationMs: number, error: unknown, context: unknown }) => void
  /** A statement the circuit breaker refused without sending it (it never started). */
  refused?: () => void
}

export interface CircuitOptions {
  /** Connection failures in a row that open the breaker. */
  failureThreshold: number
  /** How long it stays open before one probe statement goes through. */
  openMs: number
  /** Told when a pool's breaker changes state. */
  onStateChange?: (pool: 'primary' | 'replica', state: BreakerState, previous: BreakerState) => void
}

export interface DatabaseOptions {
  url: string
  /** A streaming replica for reads that tolerate a little lag; its pool has the same size and timeouts. */
  replicaUrl?: string | undefined
  max: number
  /**
   * Connections each pool opens while the app starts, before it is ready (at most `max`): the first requests then
   * find them open instead of waiting for connects. Unset or 0: every connection opens on demand.
   */
  warm?: number | undefined
  /** Seconds an idle connection is kept; 0 keeps it until its lifetime ends. */
  idleTimeoutS: number
  connectTimeoutS: number
  /** Told how many connections each pool opened at start, and how long that took. */
  onWarm?: (result: WarmResult & { pool: 'primary' | 'replica' }) => void
  observeQuery?: QueryObserver
  /** Fail fast while the database is unreachable (one breaker per pool); unset, every statement is sent. */
  circuit?: CircuitOptions
}

const tracer = trace.getTracer('ledger-api/database')

// The leading keyword and first table name make a low-cardinality span and metric name ("SELECT users").
const operationPattern = /^\s*(?:with\b[\s\S]*?\)\s*)?(select|insert|update|delete|with|begin|commit|rollback|set|show|do|explain)\b/i
const tablePattern = /\b(?:from|into|update|join)\s+("?[a-z_][a-z0-9_.]*"?)/i
// A statement that only calls a function (`select purge_idempotency_keys($1, $2)`) is named by the function, so
// background purges are not counted as the readiness probe's bare `select 1`.
const functionCallPattern = /^\s*select\s+\(?\s*("?[a-z_][a-z0-9_.]*"?)\s*\(/i

const summaries = new Map<string, { operation: string, table: string }>()

export function summarizeStatement (text: string): { operation: string, table: string } {
  const known = summaries.get(text)
  if (known !== undefined) return known
  const operation = (operationPattern.exec(text)?.[1] ?? 'QUERY').toUpperCase()
  const table = (tablePattern.exec(text) ?? functionCallPattern.exec(text))?.[1]?.replaceAll('"', '') ?? ''
  const summary = { operation, table }
  // Statement texts come from the code's templates (values are $n), so a few hundred at most; the bound is for
  // texts built at run time.
  if (summaries.size >= 1000) summaries.clear()
  summaries.set(text, summary)
  return summary
}

interface RunnableQuery {
  options?: { onexecute?: (connection: unknown) => unknown }
  handler: (query: RunnableQuery) => unknown
  resolve: (value: unknown) => unknown
  reject: (error: unknown) => unknown
  statement: { string: string } | null
  strings: readonly string[] | string
}

/**
 * Keeps the connection that runs this statement from taking another one behind it until it is answered.
 *
 * With every connection taken, postgres.js (3.4.9, src/index.js `handler`) sends a new statement down a "busy"
 * connection, pipelined behind the one in flight; a connection is busy (not "full") while it runs a statement
 * without parameters (`select 1`, the queue gauges). With `prepare: false`, a statement with parameters starts as
 * Parse+Describe+Flush, without Sync (connection.js `describeFirst`). PgBouncer in transaction mode (1.18) gives the
 * server connection back to its pool at the first statement's ReadyForQuery, so the answers to the second arrive
 * on an unlinked server and are dropped ("got packet '1' from server when not linked", "idle server got dirty"):
 * the second statement waits forever, with no error and no timeout, and holds its client connection. Through
 * PgBouncer, a statement must have the connection to itself.
 *
 * postgres.js asks a statement's `onexecute` whether the connection may take more (its `begin` uses it to keep the
 * transaction's connection); answering no leaves the connection "full" until the statement's ReadyForQuery, when
 * it takes the next statement from the pool's queue, exactly as after a statement with parameters.
 * `max_pipeline: 0` would do the same but also skips `begin`'s onexecute, which breaks every transaction.
 */
export function withoutPipelining<Q> (pending: Q): Q {
  const options = (pending as unknown as RunnableQuery).options
  if (options !== undefined && options.onexecute === undefined) options.onexecute = () => false
  return pending
}

/**
 * postgres.js has no completion hook and no official OpenTelemetry instrumentation, so each query object's
 * handler (called once, when the statement is actually sent) is wrapped: the span starts there, in the caller's
 * async context, and ends when the connection settles the query. Fragments that are never executed get no span.
 * The statement text carries $n placeholders only; parameter values never reach the span.
 *
 * The span, the in-flight count and the breaker's ticket are settled exactly once per started statement:
 * postgres.js can reject one query twice (a failed connect rejects both the connection's current query and its
 * initial one, which may be the same object), and a statement the breaker refuses never starts at all.
 */
function traceQuery<Q> (pending: Q, baseAttributes: Attributes, observe: QueryObserver | undefined, breaker: CircuitBreaker | undefined): Q {
  const query = pending as unknown as RunnableQuery
  const execute = query.handler
  // A Builder (sql(values), sql(identifier)) or a fragment is not a statement: it has no handler of its own.
  if (typeof execute !== 'function') return pending
  withoutPipelining(pending)
  query.handler = (q) => {
    const ticket = breaker?.admit()
    if (ticket === false) {
      observe?.refused?.()
      return q.reject(new CircuitOpenError())
    }
    const started = performance.now()
    const context = observe?.started()
    const span = childSpansRecord() ? tracer.startSpan('db.query', { kind: SpanKind.CLIENT, attributes: baseAttributes }) : undefined
    let settled = false
    const settle = (error: unknown, result?: unknown) => {
      if (settled) return
      settled = true
      ticket?.(error)
      const text = q.statement?.string ?? (typeof q.strings === 'string' ? q.strings : q.strings.join('$?'))
      const { operation, table } = summarizeStatement(text)
      if (span !== undefined) {
        span.updateName(table === '' ? operation : `${operation} ${table}`)
        span.setAttributes({ 'db.query.text': text, 'db.statement': text, 'db.operation.name': operation })
        if (error !== undefined) {
          const code = (error as { code?: unknown }).code
          span.setStatus({ code: SpanStatusCode.ERROR, message: typeof code === 'string' ? code : 'query failed' })
          if (typeof code === 'string') span.setAttribute('db.response.status_code', code)
        }
        span.end()
      }
      // Rows returned (or affected: postgres.js's count) by the statement.
      const rows = Array.isArray(result) ? result.length : Number((result as { count?: unknown } | undefined)?.count ?? 0)
      observe?.finished({ operation, table, text, rows, durationMs: performance.now() - started, error, context })
    }
    const resolve = q.resolve
    const reject = q.reject
    q.resolve = (value) => { settle(undefined, value); return resolve(value) }
    q.reject = (error) => { settle(error); return reject(error) }
    try {
      return execute(q)
    } catch (error) {
      // Not expected from postgres.js, but a throw here must not leave the statement counted forever.
      q.reject(error)
      return undefined
    }
  }
  return pending
}

/**
 * Returns a `sql` that behaves exactly like postgres.js's, with a span per executed statement. With a breaker,
 * statements (and `begin`/`reserve`, which take a connection) are refused while it is open; the statements of a
 * transaction already hold their connection and are never refused.
 */
export function instrumentSql<S extends Sql | TransactionSql> (sql: S, attributes: Attributes, observe?: QueryObserver, breaker?: CircuitBreaker): S {
  return new Proxy(sql, {
    apply (target, thisArg, args) {
      return traceQuery(Reflect.apply(target, thisArg, args), attributes, observe, breaker)
    },
    get (target, property, receiver) {
      const value: unknown = Reflect.get(target, property, receiver)
      if (typeof value !== 'function') return value
      if (property === 'unsafe') {
        return (...args: unknown[]) => traceQuery(Reflect.apply(value, target, args), attributes, observe, breaker)
      }
      if (property === 'begin' || property === 'savepoint') {
        return (...args: unknown[]) => {
          if (breaker?.refusing() === true) {
            observe?.refused?.()
            return Promise.reject(new CircuitOpenError())
          }
          const callback = args.pop() as (tx: TransactionSql) => unknown
          return Reflect.apply(value, target, [...args, (tx: TransactionSql) => callback(instrumentSql(tx, attributes, observe))])
        }
      }
      if (property === 'end' && breaker !== undefined) {
        return (...args: unknown[]) => {
          breaker.stop()
          return Reflect.apply(value, target, args)
        }
      }
      if (property === 'reserve' && breaker !== undefined) {
        return (...args: unknown[]) => {
          if (breaker.refusing()) {
            observe?.refused?.()
            return Promise.reject(new CircuitOpenError())
          }
          return Reflect.apply(value, target, args)
        }
      }
      return value
    }
  })
}

/** A postgres.js pool with the app's connection settings: `max` connections, the given idle timeout. */
function rawPool (options: DatabaseOptions, url: string, max: number, applicationName: string): Sql {
  return postgres(url, {
    // PgBouncer 1.18 in transaction mode cannot keep prepared statements across transactions.
    prepare: false,
    max,
    idle_timeout: options.idleTimeoutS,
    connect_timeout: options.connectTimeoutS,
    // max_lifetime is postgres.js's default: each connection lives 30 to 60 minutes, drawn per connection, so a
    // PgBouncer or PostgreSQL restart is absorbed gradually and the connections opened together by the warm-up do
    // not all close together.
    // The default reconnect backoff grows to 20 s and is shared by the whole pool, so after a short PgBouncer
    // outage queued queries would wait on a timer instead of failing fast (503) or recovering: keep it short.
    backoff: (attempt: number) => Math.min(0.05 * 2 ** attempt, 0.5),
    // The type catalog query postgres.js runs on each new connection drops its promise on failure, and during a
    // database restart that rejection is unhandled and takes the process down. The app uses no array or custom
    // types that would need it.
    fetch_types: false,
    onnotice: () => {},
    connection: { application_name: applicationName }
  })
}

/**
 * A pool to `url` with a span and the statement metrics per statement, and the circuit breaker; `probe` instead
 * makes the readiness probe's single connection, observed like any statement but with no breaker (it is what says
 * whether the database answers).
 */
export function createSql (options: DatabaseOptions, url = options.url, pool: 'primary' | 'replica' | 'probe' = 'primary'): Sql {
  const parsed = new URL(url)
  const sql = pool === 'probe' ? rawPool(options, url, 1, 'ledger-api readiness') : rawPool(options, url, options.max, 'ledger-api')
  const breaker = pool === 'probe' ? undefined : createBreaker(options, pool, sql)
  const instrumented = instrumentSql(sql, {
    'db.system': 'postgresql',
    'db.system.name': 'postgresql',
    'db.namespace': parsed.pathname.slice(1),
    'server.address': parsed.hostname,
    'server.port': Number(parsed.port || 5432)
  }, options.observeQuery, breaker)
  rawPools.set(instrumented, sql)
  return instrumented
}

export interface WarmResult {
  /** Connections that were open (or opened) at once. */
  opened: number
  /** Connections that could not be opened (the database or PgBouncer did not answer within the connect timeout). */
  failed: number
  ms: number
}

/** The uninstrumented pool behind each `sql` createSql returns: the warm-up's statements are not the app's. */
const rawPools = new WeakMap<Sql, Sql>()

/**
 * Opens `count` connections of a pool at once: postgres.js opens a connection only when a statement needs one, so
 * a process that has just started would make its first burst of requests wait for the connects (PgBouncer's, and
 * PostgreSQL's when PgBouncer has no idle server connection either), each with a queue of statements behind it.
 * `count` statements sent together while no connection is open each take a connection of their own (postgres.js
 * connects a closed slot before it queues a statement behind a busy one), and leave it open and idle. `reserve()`
 * cannot do this: with fetch_types off, a reservation that has to open its connection is never granted
 * (postgres.js 3.4.9). A connection that does not open in time is counted, not thrown: the readiness probe says
 * whether the database answers.
 */
export async function warmPool (sql: Sql, count: number, timeoutMs: number): Promise<WarmResult> {
  const pool = rawPools.get(sql) ?? sql
  const started = performance.now()
  let timer: NodeJS.Timeout | undefined
  const deadline = new Promise<'late'>((resolve) => { timer = setTimeout(() => resolve('late'), timeoutMs) })
  const attempts = Array.from({ length: count }, () => Promise.race([withoutPipelining(pool`select 1`).then(() => 'open' as const, () => 'failed' as const), deadline]))
  const outcomes = await Promise.all(attempts)
  clearTimeout(timer)
  const opened = outcomes.filter((outcome) => outcome === 'open').length
  return { opened, failed: count - opened, ms: performance.now() - started }
}

function createBreaker (options: DatabaseOptions, pool: 'primary' | 'replica', sql: Sql): CircuitBreaker | undefined {
  const circuit = options.circuit
  if (circuit === undefined) return undefined
  return new CircuitBreaker({
    failureThreshold: circuit.failureThreshold,
    openMs: circuit.openMs,
    // The probe is bounded by the connect timeout (and postgres.js's reconnect backoff, at most 0.5 s).
    probeTimeoutMs: options.connectTimeoutS * 1000 + 1000,
    isConnectionFailure: isConnectionError,
    // Through the pool itself but not through instrumentSql: no span, not a statement in flight, not refused.
    probe: () => withoutPipelining(sql`select 1`),
    onStateChange: (state, previous) => circuit.onStateChange?.(pool, state, previous)
  })
}

async function databasePlugin (app: FastifyInstance, options: DatabaseOptions) {
  const sql = createSql(options)
  const replica = options.replicaUrl === undefined ? null : createSql(options, options.replicaUrl, 'replica')
  const probe = createSql(options, options.url, 'probe')
  app.decorate('db', sql)
  app.decorate('dbReplica', replica)
  app.decorate('dbProbe', async () => { await probe`select 1` })
  app.addHook('onClose', async () => {
    await Promise.all([sql.end({ timeout: 5 }), replica?.end({ timeout: 5 }), probe.end({ timeout: 5 })])
  })
  // Before the app is ready (and so before it listens or reports ready): the first requests find the pools open.
  const warm = Math.min(options.warm ?? 0, options.max)
  if (warm > 0) {
    const pools = [['primary', sql] as const, ...(replica === null ? [] : [['replica', replica] as const])]
    // Bounded like a statement's connect: a database that is down delays the start by that long, not forever.
    const timeoutMs = options.connectTimeoutS * 1000 + 1000
    await Promise.all(pools.map(async ([pool, target]) => options.onWarm?.({ pool, ...await warmPool(target, warm, timeoutMs) })))
  }
}

const circuitStateValue = { closed: 0, half_open: 1, open: 2 } as const

/**
 * The plugin's options from the configuration, its statements observed into app.metrics (pool gauges, per-statement
 * durations, the request's statement tally for N+1 evidence) and its breaker's changes logged.
 */
export const autoConfig = (app: FastifyInstance): DatabaseOptions => {
  const config = app.config
  const metrics: Metrics = app.metrics
  metrics.dbPoolMax.set(config.DATABASE_POOL_MAX)
  metrics.dbCircuitState.set({ pool: 'primary' }, 0)
  if (config.DATABASE_REPLICA_URL !== undefined) metrics.dbCircuitState.set({ pool: 'replica' }, 0)
  return {
    url: config.DATABASE_URL,
    replicaUrl: config.DATABASE_REPLICA_URL,
    max: config.DATABASE_POOL_MAX,
    warm: config.DATABASE_POOL_WARM,
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
    onWarm: ({ pool, opened, failed, ms }) => {
      if (failed === 0) app.log.info({ pool, opened, ms: Math.round(ms) }, 'database pool warmed')
      else app.log.warn({ pool, opened, failed, ms: Math.round(ms) }, 'database pool warm-up: some connections did not open; they open on demand')
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
  }
}

export default fp(databasePlugin, { name: 'database' })
