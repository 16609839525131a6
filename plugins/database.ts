import { SpanKind, SpanStatusCode, trace, type Attributes } from '@opentelemetry/api'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import postgres from 'postgres'

declare module 'fastify' {
  interface FastifyInstance {
    /** The primary (through PgBouncer): every write, and every read that must see the latest commit. */
    db: Sql
    /** The read replica's pool, or null when DATABASE_REPLICA_URL is unset. */
    dbReplica: Sql | null
  }
}

// int8 columns arrive as strings: ids stay strings in the API, and money columns are capped by CHECK
// constraints at Number.MAX_SAFE_INTEGER so mappers can turn them into exact numbers.
export type Sql = postgres.Sql
export type TransactionSql = postgres.TransactionSql

/** Hooks for metrics: called when a statement is sent and when it is answered. */
export interface QueryObserver {
  started: () => void
  finished: (event: { operation: string, table: string, durationMs: number, error: unknown }) => void
}

export interface DatabaseOptions {
  url: string
  /** A streaming replica for reads that tolerate a little lag; its pool has the same size and timeouts. */
  replicaUrl?: string | undefined
  max: number
  idleTimeoutS: number
  connectTimeoutS: number
  observeQuery?: QueryObserver
}

const tracer = trace.getTracer('ledger-api/database')

// The leading keyword and first table name make a low-cardinality span and metric name ("SELECT users").
const operationPattern = /^\s*(?:with\b[\s\S]*?\)\s*)?(select|insert|update|delete|with|begin|commit|rollback|set|show|do|explain)\b/i
const tablePattern = /\b(?:from|into|update|join)\s+("?[a-z_][a-z0-9_.]*"?)/i

export function summarizeStatement (text: string): { operation: string, table: string } {
  const operation = (operationPattern.exec(text)?.[1] ?? 'QUERY').toUpperCase()
  const table = tablePattern.exec(text)?.[1]?.replaceAll('"', '') ?? ''
  return { operation, table }
}

interface RunnableQuery {
  handler: (query: RunnableQuery) => unknown
  resolve: (value: unknown) => unknown
  reject: (error: unknown) => unknown
  statement: { string: string } | null
  strings: readonly string[] | string
}

/**
 * postgres.js has no completion hook and no official OpenTelemetry instrumentation, so each query object's
 * handler (called once, when the statement is actually sent) is wrapped: the span starts there, in the caller's
 * async context, and ends when the connection settles the query. Fragments that are never executed get no span.
 * The statement text carries $n placeholders only; parameter values never reach the span.
 */
function traceQuery<Q> (pending: Q, baseAttributes: Attributes, observe: QueryObserver | undefined): Q {
  const query = pending as unknown as RunnableQuery
  const execute = query.handler
  query.handler = (q) => {
    const started = performance.now()
    observe?.started()
    const span = tracer.startSpan('db.query', { kind: SpanKind.CLIENT, attributes: baseAttributes })
    const settle = (error: unknown) => {
      const text = q.statement?.string ?? (typeof q.strings === 'string' ? q.strings : q.strings.join('$?'))
      const { operation, table } = summarizeStatement(text)
      span.updateName(table === '' ? operation : `${operation} ${table}`)
      span.setAttributes({ 'db.query.text': text, 'db.statement': text, 'db.operation.name': operation })
      if (error !== undefined) {
        const code = (error as { code?: unknown }).code
        span.setStatus({ code: SpanStatusCode.ERROR, message: typeof code === 'string' ? code : 'query failed' })
        if (typeof code === 'string') span.setAttribute('db.response.status_code', code)
      }
      span.end()
      observe?.finished({ operation, table, durationMs: performance.now() - started, error })
    }
    const resolve = q.resolve
    const reject = q.reject
    q.resolve = (value) => { settle(undefined); return resolve(value) }
    q.reject = (error) => { settle(error); return reject(error) }
    return execute(q)
  }
  return pending
}

/** Returns a `sql` that behaves exactly like postgres.js's, with a span per executed statement. */
export function instrumentSql<S extends Sql | TransactionSql> (sql: S, attributes: Attributes, observe?: QueryObserver): S {
  return new Proxy(sql, {
    apply (target, thisArg, args) {
      return traceQuery(Reflect.apply(target, thisArg, args), attributes, observe)
    },
    get (target, property, receiver) {
      const value: unknown = Reflect.get(target, property, receiver)
      if (typeof value !== 'function') return value
      if (property === 'unsafe') {
        return (...args: unknown[]) => traceQuery(Reflect.apply(value, target, args), attributes, observe)
      }
      if (property === 'begin' || property === 'savepoint') {
        return (...args: unknown[]) => {
          const callback = args.pop() as (tx: TransactionSql) => unknown
          return Reflect.apply(value, target, [...args, (tx: TransactionSql) => callback(instrumentSql(tx, attributes, observe))])
        }
      }
      return value
    }
  })
}

export function createSql (options: DatabaseOptions, url = options.url): Sql {
  const parsed = new URL(url)
  const sql = postgres(url, {
    // PgBouncer 1.18 in transaction mode cannot keep prepared statements across transactions.
    prepare: false,
    max: options.max,
    idle_timeout: options.idleTimeoutS,
    connect_timeout: options.connectTimeoutS,
    // A connection lives at most this long so that a PgBouncer or PostgreSQL restart is absorbed gradually.
    max_lifetime: 60 * 30,
    // The default reconnect backoff grows to 20 s and is shared by the whole pool, so after a short PgBouncer
    // outage queued queries would wait on a timer instead of failing fast (503) or recovering: keep it short.
    backoff: (attempt: number) => Math.min(0.05 * 2 ** attempt, 0.5),
    // The type catalog query postgres.js runs on each new connection drops its promise on failure, and during a
    // database restart that rejection is unhandled and takes the process down. The app uses no array or custom
    // types that would need it.
    fetch_types: false,
    onnotice: () => {},
    connection: { application_name: 'ledger-api' }
  })
  return instrumentSql(sql, {
    'db.system': 'postgresql',
    'db.system.name': 'postgresql',
    'db.namespace': parsed.pathname.slice(1),
    'server.address': parsed.hostname,
    'server.port': Number(parsed.port || 5432)
  }, options.observeQuery)
}

async function databasePlugin (app: FastifyInstance, options: DatabaseOptions) {
  const sql = createSql(options)
  const replica = options.replicaUrl === undefined ? null : createSql(options, options.replicaUrl)
  app.decorate('db', sql)
  app.decorate('dbReplica', replica)
  app.addHook('onClose', async () => {
    await Promise.all([sql.end({ timeout: 5 }), replica?.end({ timeout: 5 })])
  })
}

export default fp(databasePlugin, { name: 'database' })
