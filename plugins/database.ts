import { SpanKind, SpanStatusCode, trace, type Attributes } from '@opentelemetry/api'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import postgres from 'postgres'

declare module 'fastify' {
  interface FastifyInstance {
    db: Sql
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

export function createSql (options: DatabaseOptions): Sql {
  const url = new URL(options.url)
  const sql = postgres(options.url, {
    // PgBouncer 1.18 in transaction mode cannot keep prepared statements across transactions.
    prepare: false,
    max: options.max,
    idle_timeout: options.idleTimeoutS,
    connect_timeout: options.connectTimeoutS,
    // A connection lives at most this long so that a PgBouncer or PostgreSQL restart is absorbed gradually.
    max_lifetime: 60 * 30,
    onnotice: () => {},
    connection: { application_name: 'ledger-api' }
  })
  return instrumentSql(sql, {
    'db.system': 'postgresql',
    'db.system.name': 'postgresql',
    'db.namespace': url.pathname.slice(1),
    'server.address': url.hostname,
    'server.port': Number(url.port || 5432)
  }, options.observeQuery)
}

async function databasePlugin (app: FastifyInstance, options: DatabaseOptions) {
  const sql = createSql(options)
  app.decorate('db', sql)
  app.addHook('onClose', async () => {
    await sql.end({ timeout: 5 })
  })
}

export default fp(databasePlugin, { name: 'database' })
