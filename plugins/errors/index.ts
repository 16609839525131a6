import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { hasZodFastifySchemaValidationErrors, isResponseSerializationError } from 'fastify-type-provider-zod'
import { STATUS_CODES } from 'node:http'
import { stdSerializers } from 'pino'
import { z } from 'zod'

declare module 'fastify' {
  interface FastifyContextConfig {
    /**
     * OAuth 2.0 endpoints answer errors as RFC 6749 section 5.2 says (`application/json` with `error` and
     * `error_description`), because standard OAuth client libraries parse them: on every request (`always`, the
     * token endpoint), or on requests made the OAuth way, with a form body (`form`, the revocation endpoint, whose
     * bearer logout keeps problem+json). Every other route answers problem+json.
     */
    oauthErrors?: 'always' | 'form'
  }
}

/** RFC 9457 problem details, as every error response is shaped. */
export const ProblemSchema = z.object({
  type: z.string(),
  title: z.string(),
  status: z.number().int(),
  detail: z.string(),
  instance: z.string().optional(),
  errors: z.array(z.object({ path: z.string(), message: z.string() })).optional()
}).meta({ id: 'Problem' })

/** The error codes of RFC 6749 section 5.2, RFC 7009 (unsupported_token_type) and its 4.1.2.1 (temporarily_unavailable). */
export const oauthErrorCodes = [
  'invalid_request', 'invalid_client', 'invalid_grant', 'unauthorized_client', 'unsupported_grant_type', 'invalid_scope',
  'unsupported_token_type', 'temporarily_unavailable', 'server_error'
] as const
export type OAuthErrorCode = typeof oauthErrorCodes[number]

/** RFC 6749 section 5.2's error response. */
export const OAuthErrorSchema = z.object({
  error: z.enum(oauthErrorCodes),
  error_description: z.string().optional()
}).meta({ id: 'OAuthError' })

export interface FieldError {
  path: string
  message: string
}

/** An expected failure that maps one-to-one onto an RFC 9457 problem response. */
export class ProblemError extends Error {
  readonly status: number
  readonly type: string
  readonly errors: FieldError[] | undefined
  readonly headers: Record<string, string> | undefined
  /** The RFC 6749 error code when an OAuth endpoint answers it; otherwise one is derived from the status. */
  readonly oauthError: OAuthErrorCode | undefined

  constructor (status: number, type: string, detail: string, options: { errors?: FieldError[], headers?: Record<string, string>, cause?: unknown, oauthError?: OAuthErrorCode } = {}) {
    super(detail, { cause: options.cause })
    this.name = 'ProblemError'
    this.status = status
    this.type = type
    this.errors = options.errors
    this.headers = options.headers
    this.oauthError = options.oauthError
  }
}

/** An OAuth error (RFC 6749 section 5.2) with the status the token and revocation endpoints give it. */
export const oauthError = (status: 400 | 401, code: OAuthErrorCode, detail: string, headers?: Record<string, string>) =>
  new ProblemError(status, code, detail, { oauthError: code, headers })

export const badRequest = (detail: string, errors?: FieldError[]) => new ProblemError(400, 'validation_error', detail, { errors })
export const unauthorized = (detail = 'Missing or invalid credentials.', cause?: unknown) =>
  new ProblemError(401, 'unauthorized', detail, { headers: { 'www-authenticate': 'Bearer' }, cause })
export const forbidden = (detail = 'You may not act on this resource.') => new ProblemError(403, 'forbidden', detail)
export const notFound = (detail = 'Resource not found.') => new ProblemError(404, 'not_found', detail)
export const conflict = (type: string, detail: string) => new ProblemError(409, type, detail)
export const unprocessable = (type: string, detail: string) => new ProblemError(422, type, detail)
export const serviceUnavailable = (dependency: string, cause?: unknown) =>
  new ProblemError(503, 'dependency_unavailable', `A dependency is unavailable (${dependency}); retry shortly.`, { headers: { 'retry-after': '1' }, cause })

const TYPE_BASE = 'https://ledger-api.dev/problems/'

// Fastify's own client errors keep their status, but get our wording: their messages can echo internals.
const fastifyClientErrors: Record<string, [number, string, string]> = {
  FST_ERR_CTP_EMPTY_JSON_BODY: [400, 'malformed_body', 'The JSON body is empty.'],
  FST_ERR_CTP_INVALID_JSON_BODY: [400, 'malformed_body', 'The body is not valid JSON.'],
  FST_ERR_CTP_BODY_TOO_LARGE: [413, 'body_too_large', 'The body is larger than the configured limit.'],
  FST_ERR_CTP_INVALID_MEDIA_TYPE: [415, 'unsupported_media_type', 'Send the body as application/json.'],
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: [400, 'malformed_body', 'Content-Length does not match the body.'],
  FST_ERR_CTP_INVALID_TYPE: [415, 'unsupported_media_type', 'Send the body as application/json.'],
  FST_ERR_RESPONSE_SERIALIZATION: [500, 'internal_error', 'An unexpected error occurred.']
}

// Failures that mean "a dependency cannot serve right now", not "this request is wrong": connection errors from
// postgres.js and the network, PgBouncer/PostgreSQL refusing or dropping connections (class 08, 57P0x, 53300),
// and our own guard rails firing (statement_timeout 57014, lock_timeout 55P03). The client should retry.
const unavailableCodes = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'CONNECT_TIMEOUT', 'CONNECTION_CLOSED', 'CONNECTION_ENDED',
  'CONNECTION_DESTROYED', '57P01', '57P02', '57P03', '53300', '57014', '55P03', '40001', '40P01',
  // plugins/database/circuit-breaker.ts refused the statement without sending it: the database was unreachable just now.
  'DATABASE_CIRCUIT_OPEN'
])

// The subset that means "no connection to the database": what the circuit breaker counts. Not a statement or
// lock timeout, a serialization failure or our own pool ending (CONNECTION_ENDED): the database answered those.
const connectionCodes = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'CONNECT_TIMEOUT',
  'CONNECTION_CLOSED', 'CONNECTION_DESTROYED', '57P01', '57P02', '57P03', '53300'
])

export function isConnectionError (error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code
  return typeof code === 'string' && (connectionCodes.has(code) || code.startsWith('08'))
}

export function isUnavailableError (error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code
  return typeof code === 'string' && (unavailableCodes.has(code) || code.startsWith('08'))
}

const validationDetail: Record<string, string> = {
  body: 'The request body is invalid: see errors.',
  querystring: 'The query string is invalid: see errors.',
  params: 'The URL names something that cannot exist: see errors.'
}

function fieldPath (instancePath: string): string {
  return instancePath.replace(/^\//, '').replaceAll('/', '.')
}

function toProblem (error: FastifyError | ProblemError | Error): ProblemError {
  if (error instanceof ProblemError) return error
  const fastifyError = error as FastifyError
  if (hasZodFastifySchemaValidationErrors(fastifyError)) {
    const context = fastifyError.validationContext ?? 'body'
    const errors = fastifyError.validation.map((issue) => ({
      path: fieldPath(issue.instancePath) || context,
      message: issue.message ?? 'is invalid'
    }))
    // A header has no body field to point at: the detail itself says which one and what it needs.
    const detail = context === 'headers'
      ? `A required request header is missing or invalid: ${errors.map((error) => `${error.path} ${error.message}`).join('; ')}.`
      : validationDetail[context] ?? 'The request is invalid.'
    return badRequest(detail, errors)
  }
  if (isResponseSerializationError(fastifyError)) {
    return new ProblemError(500, 'internal_error', 'An unexpected error occurred.', { cause: error })
  }
  if (isUnavailableError(error)) return serviceUnavailable('database', error)
  const known = fastifyError.code !== undefined ? fastifyClientErrors[fastifyError.code] : undefined
  if (known !== undefined) return new ProblemError(known[0], known[1], known[2], { cause: error })
  // Body parser errors without a Fastify code (for example a SyntaxError from JSON.parse) carry a 4xx statusCode.
  const status = fastifyError.statusCode
  if (status !== undefined && status >= 400 && status < 500) {
    return new ProblemError(status, 'client_error', STATUS_CODES[status] ?? 'Bad request.', { cause: error })
  }
  return new ProblemError(500, 'internal_error', 'An unexpected error occurred.', { cause: error })
}

const isFormRequest = (request: FastifyRequest) =>
  /^application\/x-www-form-urlencoded\s*(;|$)/i.test(request.headers['content-type'] ?? '')

function answersOAuthErrors (request: FastifyRequest): boolean {
  const mode = request.routeOptions.config?.oauthErrors
  return mode === 'always' || (mode === 'form' && isFormRequest(request))
}

function oauthErrorCode (problem: ProblemError): OAuthErrorCode {
  if (problem.oauthError !== undefined) return problem.oauthError
  if (problem.status === 401) return 'invalid_client'
  if (problem.status === 429 || problem.status === 503) return 'temporarily_unavailable'
  return problem.status < 500 ? 'invalid_request' : 'server_error'
}

// RFC 6749 section 5.2 allows only %x20-21 / %x23-5B / %x5D-7E in error_description: no quote, no backslash.
const oauthDescription = (problem: ProblemError) =>
  [problem.message, ...(problem.errors ?? []).map((error) => `${error.path}: ${error.message}`)].join(' ').replace(/[^\x20\x21\x23-\x5b\x5d-\x7e]/g, ' ')

export function sendProblem (request: FastifyRequest, reply: FastifyReply, problem: ProblemError) {
  if (problem.headers !== undefined) reply.headers(problem.headers)
  if (answersOAuthErrors(request)) {
    return reply.code(problem.status).type('application/json').send({ error: oauthErrorCode(problem), error_description: oauthDescription(problem) })
  }
  return reply
    .code(problem.status)
    .type('application/problem+json')
    .send({
      type: TYPE_BASE + problem.type,
      title: STATUS_CODES[problem.status] ?? 'Error',
      status: problem.status,
      detail: problem.message,
      // Only for a matched route: an unmatched or malformed URL is the client's text and is not echoed back.
      instance: request.routeOptions.url === undefined ? undefined : request.url.split('?')[0],
      ...(problem.errors !== undefined ? { errors: problem.errors } : {})
    })
}

// What an error may carry that is data rather than a description of the failure: PostgreSQL's `detail` (the failing
// row, or the duplicate key's value), `hint` and `where` (whatever a function put in its RAISE, the statement with its
// values), `internal_query`, and the statement, parameters and types postgres.js attaches in debug mode.
const DATA_FIELDS = ['detail', 'hint', 'where', 'internal_query', 'query', 'parameters', 'args', 'types'] as const

type SerializedError = ReturnType<typeof stdSerializers.err>

/** Removes DATA_FIELDS from a serialized error and from every error serialized inside it (aggregated or in a field). */
function withoutData (serialized: SerializedError, errorShape: unknown): SerializedError {
  for (const field of DATA_FIELDS) delete serialized[field]
  for (const value of Object.values(serialized)) {
    for (const item of Array.isArray(value) ? value : [value]) {
      if (item !== null && typeof item === 'object' && Object.getPrototypeOf(item) === errorShape) withoutData(item, errorShape)
    }
  }
  return serialized
}

/**
 * The `err` serializer of every logger the processes build (plugins/http, serverOptions): the one place an error becomes a log
 * line, so no line carries a database error's row data or parameters, whoever logs it. pino's own serialization
 * (type, message and stack with their causes', the other enumerable fields) minus DATA_FIELDS: the code, message,
 * constraint, table and column names stay, as they say what failed without saying with what.
 */
export function serializeError (error: Error): SerializedError {
  const serialized = stdSerializers.err(error)
  // Anything that is not error-like comes back as it was given: only objects have fields to remove.
  if (serialized === null || typeof serialized !== 'object') return serialized
  return withoutData(serialized, Object.getPrototypeOf(serialized))
}

/** The serializers every logger gets (serverOptions in plugins/http; Fastify keeps its own req and res ones). */
export const logSerializers = { err: serializeError }

async function errorsPlugin (app: FastifyInstance) {
  app.setErrorHandler((error: FastifyError, request, reply) => {
    const problem = toProblem(error)
    if (problem.status === 503) {
      request.log.warn({ err: error }, 'dependency unavailable')
    } else if (problem.status >= 500) {
      request.log.error({ err: error }, 'request failed')
    } else {
      request.log.info({ status: problem.status, type: problem.type }, 'request refused')
    }
    return sendProblem(request, reply, problem)
  })
}

export default fp(errorsPlugin, { name: 'errors' })
