import { context, propagation, SpanKind, SpanStatusCode, trace, type Span } from '@opentelemetry/api'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { statementTallyKey } from '../metrics/index.ts'

declare module 'fastify' {
  interface FastifyRequest {
    span: Span | undefined
  }
}

const tracer = trace.getTracer('ledger-api/http')
const redisTracer = trace.getTracer('ledger-api/redis')

/** A synchronous throw as the rejection an async function would have returned. */
async function rejectedWith (error: unknown): Promise<never> {
  throw error
}

/**
 * A client span around one Redis command group (cache read, cache write, rate-limit script), named and
 * attributed per the database semantic conventions. Keys and values stay out of it: they carry user ids and data.
 */
export function traceRedis<T> (operation: string, summary: string, run: () => Promise<T>): Promise<T> {
  // Without a span to make, the command's own promise is handed back rather than wrapped in an async function's.
  if (!childSpansRecord()) {
    try {
      return run()
    } catch (error) {
      return rejectedWith(error)
    }
  }
  return redisTracer.startActiveSpan(summary, {
    kind: SpanKind.CLIENT,
    attributes: { 'db.system': 'redis', 'db.system.name': 'redis', 'db.operation.name': operation }
  }, async (span) => {
    try {
      return await run()
    } catch (error) {
      span.setStatus({ code: SpanStatusCode.ERROR, message: (error as Error).message })
      throw error
    } finally {
      span.end()
    }
  })
}

/**
 * Whether a span started here could be recorded. Under a request whose span is not recorded (no exporter configured,
 * or sampled out) a child span is not recorded either with the standard parent-based samplers, so it is not made:
 * creating and ending one per statement and per Redis command was CPU spent on nothing. Outside any request (the
 * worker, pollers) spans are always made, for the sampler to decide.
 */
export function childSpansRecord (): boolean {
  return trace.getActiveSpan()?.isRecording() ?? true
}

/**
 * The server span of each request, by its logger: what traceLogFields puts on every line the request logs. Keyed by
 * the request's logger (Fastify makes one per request) rather than found in the async context, because hooks such
 * as onResponse run outside the span's context.
 */
const spansByLogger = new WeakMap<object, Span>()

/**
 * The pino mixin that puts the trace and span ids on every log line (plugins/http, serverOptions): the line's request's server span, else
 * the span active where it was logged. It runs only for lines actually written, where a child logger per request
 * cost every request a logger (about 4 % of the API's CPU with request logging off).
 */
export function traceLogFields (_fields: object, _level: number, logger: object): { trace_id?: string, span_id?: string } {
  const span = spansByLogger.get(logger) ?? trace.getActiveSpan()
  if (span === undefined) return {}
  const { traceId, spanId } = span.spanContext()
  return { trace_id: traceId, span_id: spanId }
}

async function tracingPlugin (app: FastifyInstance) {
  app.decorateRequest('span', undefined)
  // Decided once: building the request and response log objects is wasted work when info lines are dropped.
  const logsRequests = ['trace', 'debug', 'info'].includes(app.log.level)

  // A callback hook, so the rest of the request lifecycle (later hooks, handler, the SQL it sends) runs inside
  // the server span's context and every database span becomes its child.
  app.addHook('onRequest', (request, reply, done) => {
    const route = request.routeOptions.url ?? 'unknown route'
    const url = request.url
    const query = url.indexOf('?')
    const parent = propagation.extract(context.active(), request.headers)
    const span = tracer.startSpan(`${request.method} ${route}`, {
      kind: SpanKind.SERVER,
      attributes: {
        'http.request.method': request.method,
        'http.route': route,
        'url.scheme': request.protocol,
        'url.path': query === -1 ? url : url.slice(0, query),
        'client.address': request.ip
      }
    }, parent)
    request.span = span
    // 'close' fires once on every path; after a finished response onResponse ends the span instead.
    // (Not writableFinished: app.inject's response never sets it.)
    let finished = false
    reply.raw.once('finish', () => { finished = true })
    reply.raw.once('close', () => { if (!finished) aborted(request) })
    spansByLogger.set(request.log, span)
    if (logsRequests) request.log.info({ req: request }, 'incoming request')
    const active = trace.setSpan(parent, span)
    // The metrics plugin's per-request statement tally rides in the same context to every statement sent.
    context.with(request.statementTally === undefined ? active : active.setValue(statementTallyKey, request.statementTally), done)
  })

  // The server span ends exactly once: in onResponse for a response that was sent, otherwise when the connection
  // closes without one (the client went away, the request timed out), which also logs one line saying so.
  // A callback hook: its work is synchronous, and an async hook costs every request a promise and a microtask turn.
  app.addHook('onResponse', (request, reply, next) => {
    if (logsRequests) request.log.info({ res: reply, responseTime: reply.elapsedTime }, 'request completed')
    const span = request.span
    if (span !== undefined) {
      request.span = undefined
      span.setAttribute('http.response.status_code', reply.statusCode)
      if (reply.statusCode >= 500) span.setStatus({ code: SpanStatusCode.ERROR })
      span.end()
    }
    next()
  })

  app.addHook('onRequestAbort', async (request) => { aborted(request) })
}

function aborted (request: FastifyRequest) {
  const span = request.span
  if (span === undefined) return
  request.span = undefined
  span.setStatus({ code: SpanStatusCode.ERROR, message: 'client aborted' })
  span.setAttribute('error.type', 'client_aborted')
  span.end()
  request.log.info({ route: request.routeOptions.url, method: request.method }, 'request aborted: the connection closed before the response was sent')
}

export default fp(tracingPlugin, { name: 'tracing' })
