import { context, propagation, SpanKind, SpanStatusCode, trace, type Span } from '@opentelemetry/api'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'

declare module 'fastify' {
  interface FastifyRequest {
    span: Span | undefined
  }
}

const tracer = trace.getTracer('ledger-api/http')

/** Pino mixin: every log line written inside a traced request carries its trace and span ids. */
export function traceLogFields () {
  const spanContext = trace.getActiveSpan()?.spanContext()
  if (spanContext === undefined || !trace.isSpanContextValid(spanContext)) return {}
  return { trace_id: spanContext.traceId, span_id: spanContext.spanId }
}

async function tracingPlugin (app: FastifyInstance) {
  app.decorateRequest('span', undefined)

  // A callback hook, so the rest of the request lifecycle (later hooks, handler, the SQL it sends) runs inside
  // the server span's context and every database span becomes its child.
  app.addHook('onRequest', (request, reply, done) => {
    const route = request.routeOptions.url ?? 'unknown route'
    const parent = propagation.extract(context.active(), request.headers)
    const span = tracer.startSpan(`${request.method} ${route}`, {
      kind: SpanKind.SERVER,
      attributes: {
        'http.request.method': request.method,
        'http.route': route,
        'url.scheme': request.protocol,
        'url.path': request.url.split('?')[0],
        'client.address': request.ip
      }
    }, parent)
    request.span = span
    context.with(trace.setSpan(parent, span), done)
  })

  app.addHook('onResponse', async (request, reply) => {
    const span = request.span
    if (span === undefined) return
    span.setAttribute('http.response.status_code', reply.statusCode)
    if (reply.statusCode >= 500) span.setStatus({ code: SpanStatusCode.ERROR })
    span.end()
  })

  app.addHook('onRequestAbort', async (request) => {
    request.span?.setStatus({ code: SpanStatusCode.ERROR, message: 'client aborted' })
    request.span?.end()
  })
}

export default fp(tracingPlugin, { name: 'tracing' })
