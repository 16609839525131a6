import { randomUUID } from 'node:crypto'
import { LogController, type FastifyHttpOptions, type FastifyInstance, type FastifyServerOptions, type RawServerDefault } from 'fastify'
import fp from 'fastify-plugin'
import { serializerCompiler, validatorCompiler } from 'fastify-type-provider-zod'
import type { InfrastructureConfig } from '../../config.ts'
import { logSerializers, ProblemError, sendProblem } from '../errors/index.ts'
import { traceLogFields } from '../tracing/index.ts'
import { parseJsonBody } from './json-body.ts'

const safeRequestId = /^[A-Za-z0-9._:-]{1,128}$/

/**
 * The Fastify server's options from the configuration. `logger` overrides the configured one (tests pass a stream
 * to capture lines, or false); either way every line carries the trace and span ids of the request (or work) it
 * belongs to (plugins/tracing), and errors are serialized without the data they carry (plugins/errors).
 */
export function serverOptions (config: InfrastructureConfig, logger?: FastifyServerOptions['logger']): FastifyHttpOptions<RawServerDefault> {
  const configured = logger ?? {
    level: config.LOG_LEVEL,
    redact: ['req.headers.authorization', 'req.headers.cookie']
  }
  return {
    logger: typeof configured === 'object' ? { ...configured, mixin: traceLogFields, serializers: { ...configured.serializers, ...logSerializers } } : configured,
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
    // plugins/tracing logs each request itself, with its trace and span ids on every line.
    logController: new LogController({ disableRequestLogging: true }),
    // The caller's request id is kept when it is safe to log and echo; anything else gets a fresh one.
    requestIdHeader: false,
    genReqId: (request) => {
      const header = request.headers['x-request-id']
      return typeof header === 'string' && safeRequestId.test(header) ? header : randomUUID()
    },
    routerOptions: { maxParamLength: 200 },
    // plugins/http/graceful-close.ts answers while closing, in problem+json with Retry-After.
    return503OnClosing: false
  }
}

/** Zod validation and serialization, the JSON-only body parser and the request id echoed on every response. */
async function httpPlugin (app: FastifyInstance) {
  app.setValidatorCompiler(validatorCompiler)
  app.setSerializerCompiler(serializerCompiler)
  // Only JSON is accepted; without this a text/plain body would reach validation instead of getting 415.
  app.removeContentTypeParser('text/plain')
  // Fastify's JSON parser with its protections, plus number literals with a fraction or an exponent kept apart
  // from integers so the money schema refuses them instead of seeing a rounded value (json-body.ts).
  app.removeContentTypeParser('application/json')
  app.addContentTypeParser('application/json', { parseAs: 'string' }, parseJsonBody)
  // A callback hook: it runs for every response, and an async one costs each a promise and a microtask turn.
  app.addHook('onSend', (request, reply, payload, next) => {
    reply.header('x-request-id', request.id)
    next()
  })
}

export default fp(httpPlugin, { name: 'http' })
