// `npm run preflight -- --url URL [--token T | --login email:password] [--database-url URL] [--duration S]
// [--connections N] [--metrics-token T] [--read-only]`: the five-minute checklist before a deploy, run against a
// running service (staging, or a local server). One PASS/FAIL/SKIP line per check with its evidence; exit 0 only
// when nothing failed (a SKIP is not a failure: it says what could not be checked and why).
//
//   1 load        autocannon, N connections for S seconds (100 x 30 s) over the authenticated GETs without path
//                 parameters: no socket errors, no timeouts, no 5xx. 429s are counted but expected (one token
//                 against the per-user bucket), as are other 4xx.
//   2 injection   every operation in /openapi.json, each string field and each parameter in turn set to SQL
//                 injection payloads, the rest valid: every answer 2xx or 4xx, never 5xx, no database error text,
//                 no answer slow enough to be a pg_sleep that ran; GET /users/me still answers afterwards.
//   3 auth        every private operation without a token: 401.
//   4 pagination  every list (GET whose 200 body has nextCursor) with limit=1: nextCursor present, following it is
//                 200 with a different item, and a tampered cursor is 400.
//   5 resources   during check 1: PostgreSQL client connections of the --database-url database (direct, sampled
//                 every 250 ms) stay under --max-db-connections (20); the cache hit ratio over the run is reported
//                 from the API's /metrics counters. Without --database-url the connection part is a SKIP.
//
// Writes: a preflight runs against staging, where a few rows are acceptable, so writes are on unless --read-only.
// Without --token/--login it signs up one user `preflight-<hex>@example.test`. Check 4 creates at most 2 rows per
// list, and only when the list has fewer than 2 (posts on the preflight user's own feed; users signed up for the
// run that it follows or that follow it; 1-cent deposits to it from the --client service client, since users cannot
// create money; without --client that list is a SKIP).
// Check 2 sends its payloads to the write operations too: what they accept is stored as inert text (a handful of
// users, posts and 1-cent deposits, all counted in the output). --read-only sends GETs only (plus the login).
//
// Checks run in the order 3, 4, 2, 1+5 (load last, so its 429s do not drain the token's bucket for the others);
// lines are printed in check order at the end, progress goes to stderr.
import { randomBytes, randomUUID } from 'node:crypto'
import { parseArgs } from 'node:util'
import autocannon from 'autocannon'
import createClient, { type Client } from 'openapi-fetch'
import { closeSql, DIAGNOSTICS_APPLICATION_NAME, diagnosticSql } from './diagnostic-sql.ts'
import { int, ms, reason, withTimeout } from './format.ts'
import { cacheCounts, describeCaches, fetchMetrics, metricsDelta, sumBy, type MetricsSnapshot } from './prometheus.ts'
import type { paths } from './api-schema.d.ts'

const REQUEST_TIMEOUT_MS = 10_000
/** The pg_sleep payload sleeps this long; an answer that much slower than the field's other payloads means it ran. */
const SLEEP_S = 3
const INJECTION_CONCURRENCY = 8
/** How long a request turned away with 429 is retried (after each Retry-After) before its 429 counts. */
const PATIENCE_MS = 20_000
const SAMPLE_EVERY_MS = 250

const SLEEP_PAYLOAD = `'||pg_sleep(${SLEEP_S})--`
export const PAYLOADS = ['\' OR 1=1 --', '\'; DROP TABLE users;--', '" OR ""="', SLEEP_PAYLOAD]
/**
 * A valid address with quotes in it, so an email field's payload gets past format validation to the query; unique
 * per run, so a second run is not a 409 before the query.
 */
export const emailPayload = () => `o'reilly'--${randomBytes(4).toString('hex')}@example.test`
// What a database error looks like when it leaks into a response body.
const LEAK = /syntax error at or near|unterminated quoted string|SQLSTATE|PostgresError|relation "[^"]+" does not exist/i

// ---- OpenAPI ----------------------------------------------------------------------------------------------------

export interface JsonSchema {
  $ref?: string
  type?: string | string[]
  properties?: Record<string, JsonSchema>
  required?: string[]
  items?: JsonSchema
  minItems?: number
  enum?: unknown[]
  const?: unknown
  default?: unknown
  format?: string
  pattern?: string
  minLength?: number
  maxLength?: number
  minimum?: number
  maximum?: number
  exclusiveMinimum?: number
  exclusiveMaximum?: number
  anyOf?: JsonSchema[]
  oneOf?: JsonSchema[]
  allOf?: JsonSchema[]
}

interface Parameter {
  name: string
  in: 'path' | 'query' | 'header' | 'cookie'
  required?: boolean
  schema?: JsonSchema
}

type SecurityRequirement = Record<string, string[]>

interface Media { content?: Record<string, { schema?: JsonSchema }> }

interface OperationObject {
  operationId?: string
  security?: SecurityRequirement[]
  parameters?: Parameter[]
  requestBody?: Media & { required?: boolean }
  responses?: Record<string, Media>
}

export interface OpenApiDocument {
  info?: { title?: string, version?: string }
  security?: SecurityRequirement[]
  paths?: Record<string, Record<string, OperationObject>>
  components?: { schemas?: Record<string, JsonSchema> }
}

export interface Operation extends OperationObject {
  method: string
  path: string
  key: string
}

const METHODS = ['get', 'post', 'put', 'patch', 'delete']

export function operationsOf (doc: OpenApiDocument): Operation[] {
  const ops: Operation[] = []
  for (const [path, item] of Object.entries(doc.paths ?? {})) {
    for (const method of METHODS) {
      const op = item[method]
      if (op !== undefined) ops.push({ ...op, method: method.toUpperCase(), path, key: `${method.toUpperCase()} ${path}` })
    }
  }
  return ops
}

/** Secured in the document's terms: the operation's own `security`, else the document's, names a scheme. */
export function isSecured (doc: OpenApiDocument, op: Operation): boolean {
  const requirements = op.security ?? doc.security ?? []
  // An empty requirement object means "no auth is also fine".
  return requirements.length > 0 && requirements.every((requirement) => Object.keys(requirement).length > 0)
}

const documents401 = (op: Operation) => Object.hasOwn(op.responses ?? {}, '401')

class Schemas {
  private readonly doc: OpenApiDocument
  constructor (doc: OpenApiDocument) {
    this.doc = doc
  }

  resolve (schema: JsonSchema | undefined, depth = 0): JsonSchema {
    if (schema === undefined) return {}
    if (schema.$ref === undefined || depth > 20) return schema
    const name = schema.$ref.replace('#/components/schemas/', '')
    return this.resolve(this.doc.components?.schemas?.[name], depth + 1)
  }

  /** The variant that carries a value: the first non-null branch of anyOf/oneOf, or the first allOf part. */
  concrete (schema: JsonSchema | undefined): JsonSchema {
    const s = this.resolve(schema)
    const variants = s.anyOf ?? s.oneOf
    if (variants !== undefined) return this.concrete(variants.find((v) => this.resolve(v).type !== 'null') ?? variants[0])
    if (s.allOf !== undefined && s.allOf.length > 0) return this.concrete(s.allOf[0])
    return s
  }

  jsonBody (media: Media | undefined): JsonSchema | undefined {
    return media?.content?.['application/json']?.schema
  }

  /** The schema of a 200/201 JSON response. */
  success (op: Operation): JsonSchema | undefined {
    return this.jsonBody(op.responses?.['200']) ?? this.jsonBody(op.responses?.['201'])
  }
}

// A schema refined after parsing (zod's .pipe(z.email())) reaches the document without its format.
const isEmail = (s: JsonSchema, name: string) => s.format === 'email' || /e-?mail$/i.test(name)
const typeOf = (s: JsonSchema) => Array.isArray(s.type) ? s.type.find((t) => t !== 'null') : s.type

function matches (pattern: string | undefined, value: string): boolean {
  if (pattern === undefined) return true
  try {
    return new RegExp(pattern, 'u').test(value)
  } catch {
    try {
      return new RegExp(pattern).test(value)
    } catch {
      return true
    }
  }
}

/** Valid example values from a JSON schema: what a well-behaved client would send. */
export class Examples {
  private readonly schemas: Schemas
  constructor (schemas: Schemas) {
    this.schemas = schemas
  }

  /** `name` is the field's name: an email field is recognised by it when the document gives no format. */
  value (schema: JsonSchema | undefined, requiredOnly = true, name = ''): unknown {
    const s = this.schemas.concrete(schema)
    if (s.const !== undefined) return s.const
    if (s.enum !== undefined && s.enum.length > 0) return s.enum.find((v) => v !== null) ?? s.enum[0]
    if (s.default !== undefined) return s.default
    const type = typeOf(s) ?? (s.properties !== undefined ? 'object' : 'string')
    if (type === 'object') {
      const out: Record<string, unknown> = {}
      for (const [field, property] of Object.entries(s.properties ?? {})) {
        if (!requiredOnly || (s.required ?? []).includes(field)) out[field] = this.value(property, requiredOnly, field)
      }
      return out
    }
    if (type === 'array') return Array.from({ length: s.minItems ?? 0 }, () => this.value(s.items))
    if (type === 'integer' || type === 'number') return this.number(s, type === 'integer')
    if (type === 'boolean') return false
    return this.string(s, name)
  }

  private number (s: JsonSchema, integer: boolean): number {
    let value = s.minimum ?? (s.exclusiveMinimum !== undefined ? s.exclusiveMinimum + (integer ? 1 : 0.5) : 1)
    if (s.maximum !== undefined) value = Math.min(value, s.maximum)
    if (s.exclusiveMaximum !== undefined && value >= s.exclusiveMaximum) value = s.exclusiveMaximum - (integer ? 1 : 0.5)
    return integer ? Math.ceil(value) : value
  }

  private string (s: JsonSchema, name: string): string {
    const tag = randomBytes(6).toString('hex')
    switch (isEmail(s, name) ? 'email' : s.format) {
      case 'uuid': return randomUUID()
      case 'email': return `preflight-${tag}@example.test`
      case 'uri': case 'url': return 'https://example.com/preflight.png'
      case 'date-time': return new Date().toISOString()
      case 'date': return new Date().toISOString().slice(0, 10)
    }
    const fit = (candidate: string) => {
      let value = candidate
      while (value.length < (s.minLength ?? 0)) value += tag
      return value.slice(0, s.maxLength ?? value.length)
    }
    const candidates = [`preflight-${tag}`, 'USD', 'preflight', '1', 'a', 'A'].map(fit)
    return candidates.find((candidate) => matches(s.pattern, candidate)) ?? candidates[0] ?? 'preflight'
  }
}

// ---- HTTP -------------------------------------------------------------------------------------------------------

export interface Answer {
  status: number
  body: unknown
  text: string
  ms: number
  /** Set when no HTTP answer came (refused, reset, timed out). */
  error?: string
  retryAfterS?: number
}

interface RequestSpec {
  method: string
  url: string
  headers?: Record<string, string>
  body?: unknown
}

const sleep = (msToWait: number) => new Promise((resolve) => setTimeout(resolve, msToWait))

/** Seconds from a Retry-After header, when it holds a usable number. */
function retryAfterOf (headers: Headers): number | undefined {
  const seconds = Number(headers.get('retry-after') ?? Number.NaN)
  return Number.isFinite(seconds) && seconds >= 0 ? seconds : undefined
}

/**
 * Makes one attempt and, with `patienceMs`, retries a 429 after its Retry-After for up to that long: the checks are
 * about what a handler does with a request, so one that the rate limiter turned away has not been checked yet.
 */
async function patiently<T extends { status: number, retryAfterS?: number | undefined }> (attempt: () => Promise<T>, patienceMs: number): Promise<T> {
  const deadline = performance.now() + patienceMs
  for (;;) {
    const answer = await attempt()
    if (answer.status !== 429 || answer.retryAfterS === undefined) return answer
    const waitMs = Math.max(answer.retryAfterS * 1000, 100)
    if (performance.now() + waitMs > deadline) return answer
    await sleep(waitMs)
  }
}

/** Sends one request built from the document (see patiently() for `patienceMs`). */
async function send (base: string, spec: RequestSpec, patienceMs = 0): Promise<Answer> {
  return patiently(() => sendOnce(base, spec), patienceMs)
}

async function sendOnce (base: string, spec: RequestSpec): Promise<Answer> {
  const started = performance.now()
  const headers: Record<string, string> = { ...spec.headers }
  if (spec.body !== undefined) headers['content-type'] = 'application/json'
  try {
    const response = await fetch(new URL(spec.url, base), {
      method: spec.method,
      headers,
      body: spec.body === undefined ? null : JSON.stringify(spec.body),
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS)
    })
    const text = await response.text()
    let body: unknown = text
    try { body = JSON.parse(text) } catch {}
    const answer: Answer = { status: response.status, body, text, ms: performance.now() - started }
    const retryAfterS = retryAfterOf(response.headers)
    if (retryAfterS !== undefined) answer.retryAfterS = retryAfterS
    return answer
  } catch (error) {
    return { status: 0, body: undefined, text: '', ms: performance.now() - started, error: reason(error) }
  }
}

const bearer = (token: string) => ({ authorization: `Bearer ${token}` })
const isObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value)
const said = (answer: Answer) => answer.error ?? `${answer.status}${isObject(answer.body) && typeof answer.body.detail === 'string' ? ` "${answer.body.detail}"` : ''}`

// ---- the typed client, for the calls preflight makes by name -----------------------------------------------------

/**
 * Signing up, logging in and GET /users/me are fixed calls, made through a client typed from the committed document
 * (scripts/ops/api-schema.d.ts, `npm run openapi`): a route that changes its path, body or answer breaks the type
 * check here instead of a preflight run. Everything the checks derive from /openapi.json stays untyped (send()).
 */
export type Api = Client<paths>

/** The typed client's fetch: each attempt has send()'s timeout, and a 429 is waited out as send() does. */
async function patientFetch (request: Request): Promise<Response> {
  const { response } = await patiently(async () => {
    const answer = await fetch(request.clone(), { signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) })
    // Read within the timeout, and so that an answer that is retried is not left unread.
    const bytes = await answer.arrayBuffer()
    // A null-body status (204, 304) may not be given a body, even an empty one.
    const response = new Response([204, 205, 304].includes(answer.status) ? null : bytes, { status: answer.status, statusText: answer.statusText, headers: answer.headers })
    return { status: response.status, retryAfterS: retryAfterOf(response.headers), response }
  }, PATIENCE_MS)
  return response
}

export function apiClient (base: string): Api {
  // send() resolves paths against the origin too: a path in --url is not a prefix.
  return createClient<paths>({ baseUrl: new URL(base).origin, fetch: patientFetch })
}

/** What a typed call answered, and the status and problem detail (or why nothing came back) as said() puts them. */
interface Reply<T> { data: T | undefined, status: number, said: string }

async function reply<T> (call: Promise<{ data?: T, error?: unknown, response: Response }>): Promise<Reply<T>> {
  try {
    const { data, error, response } = await call
    // A problem's detail, or an OAuth error's code and description (the token endpoint, RFC 6749 section 5.2).
    const detail = isObject(error) && typeof error.detail === 'string'
      ? ` "${error.detail}"`
      : isObject(error) && typeof error.error === 'string' ? ` ${error.error} "${typeof error.error_description === 'string' ? error.error_description : ''}"` : ''
    return { data, status: response.status, said: `${response.status}${detail}` }
  } catch (error) {
    return { data: undefined, status: 0, said: reason(error) }
  }
}

async function mapLimit<T, R> (items: T[], limit: number, work: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length)
  let next = 0
  const worker = async () => {
    while (next < items.length) {
      const index = next++
      results[index] = await work(items[index]!)
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
  return results
}

// ---- requests built from the document ---------------------------------------------------------------------------

/** Where a value goes: a path, query or header parameter, or a (dotted) field of the JSON body. */
export interface Slot {
  in: 'path' | 'query' | 'header' | 'body'
  name: string
  schema: JsonSchema
}

export interface Context {
  doc: OpenApiDocument
  api: Api
  schemas: Schemas
  examples: Examples
  base: string
  token: string
  userId: string
  readOnly: boolean
  /**
   * How to make an item of a list when the user's token may not (keyed by the creating operation's operationId), or
   * why it cannot be made: users cannot create money, so only with --client is the transactions list filled (1-cent
   * deposits). Keyed by the list's own operationId: how to add an item to a list no operation answers with (the
   * follow lists: a user signed up for the run, followed by or following the preflight user).
   */
  creators: Record<string, (() => Promise<{ status: number, said: string }>) | string>
}

/** A valid request for `op`, with `override` (one slot and its value) applied on top. */
function buildRequest (ctx: Context, op: Operation, options: { override?: { slot: Slot, value: unknown }, auth?: boolean, body?: boolean } = {}): RequestSpec {
  const { override } = options
  const headers: Record<string, string> = options.auth === false ? {} : bearer(ctx.token)
  const query = new URLSearchParams()
  let path = op.path
  for (const param of op.parameters ?? []) {
    const overridden = override?.slot.in === param.in && override.slot.name === param.name
    if (!overridden && param.required !== true && param.in !== 'path') continue
    const value = String(overridden ? override.value : ctx.examples.value(param.schema, true, param.name))
    if (param.in === 'path') path = path.replace(`{${param.name}}`, encodeURIComponent(value))
    else if (param.in === 'query') query.set(param.name, value)
    else if (param.in === 'header') headers[param.name] = value
  }
  const spec: RequestSpec = { method: op.method, url: query.size > 0 ? `${path}?${query}` : path, headers }
  const bodySchema = ctx.schemas.jsonBody(op.requestBody)
  if (bodySchema !== undefined && options.body !== false) {
    const body = ctx.examples.value(bodySchema)
    if (override?.slot.in === 'body' && isObject(body)) {
      const names = override.slot.name.split('.')
      let target: Record<string, unknown> = body
      for (const name of names.slice(0, -1)) {
        if (!isObject(target[name])) target[name] = {}
        target = target[name] as Record<string, unknown>
      }
      target[names.at(-1)!] = override.value
    }
    spec.body = body
  }
  return spec
}

/** Every string field of the body (nested objects included) and every parameter except Authorization. */
export function slotsOf (ctx: Context, op: Operation): Slot[] {
  const slots: Slot[] = []
  for (const param of op.parameters ?? []) {
    if (param.in === 'cookie' || (param.in === 'header' && param.name.toLowerCase() === 'authorization')) continue
    slots.push({ in: param.in, name: param.name, schema: ctx.schemas.concrete(param.schema) })
  }
  const walk = (schema: JsonSchema | undefined, prefix: string, depth: number) => {
    const s = ctx.schemas.concrete(schema)
    for (const [name, property] of Object.entries(s.properties ?? {})) {
      const p = ctx.schemas.concrete(property)
      const type = typeOf(p) ?? (p.properties !== undefined ? 'object' : undefined)
      if (type === 'object' && depth < 5) walk(p, `${prefix}${name}.`, depth + 1)
      else if (type === 'string' || (p.enum ?? []).some((v) => typeof v === 'string')) slots.push({ in: 'body', name: `${prefix}${name}`, schema: p })
    }
  }
  walk(ctx.schemas.jsonBody(op.requestBody), '', 0)
  return slots
}

// ---- the checks -------------------------------------------------------------------------------------------------

export type Status = 'PASS' | 'FAIL' | 'SKIP'

export interface CheckResult {
  id: number
  name: string
  status: Status
  evidence: string
  /** One line per failing item, or a note worth reading. */
  details: string[]
}

const progress = (line: string) => process.stderr.write(`preflight: ${line}\n`)

/** 3: every private operation answers 401 without a token. */
export async function checkAuth (ctx: Context, ops: Operation[]): Promise<CheckResult> {
  const secured = ops.filter((op) => isSecured(ctx.doc, op))
  const failures: string[] = []
  const notes: string[] = []
  let ok = 0
  await mapLimit(secured, INJECTION_CONCURRENCY, async (op) => {
    // No token and no body: an operation that is open by mistake then fails validation instead of writing.
    const answer = await send(ctx.base, buildRequest(ctx, op, { auth: false, body: false }))
    if (answer.status === 401) ok++
    else if (documents401(op) || answer.status === 0 || answer.status >= 500) failures.push(`${op.key} -> ${said(answer)} without a token (expected 401)`)
    else {
      // Secured on paper (often by inheriting the document's default), yet it lists no 401 and answers: the
      // document contradicts itself, and which half is meant cannot be told from outside. Said, not failed.
      notes.push(`note: ${op.key} -> ${answer.status} without a token; it is documented as secured${op.security === undefined ? ' (inherited from the document\'s default security)' : ''} ` +
        'but lists no 401 response: if it is public, declare `security: []` in its schema')
    }
  })
  const publicCount = ops.length - secured.length
  return {
    id: 3,
    name: 'auth',
    status: failures.length > 0 ? 'FAIL' : 'PASS',
    evidence: `${ok} of ${secured.length} secured operations answered 401 without a token (${publicCount} documented public)` +
      (failures.length > 0 ? `; ${failures.length} did not` : ''),
    details: [...failures.sort(), ...notes.sort()]
  }
}

const idOf = (item: unknown) => isObject(item) ? item.id : undefined

/**
 * The cursor with one character changed. Not the last one: in base64 the last character of a block that does not
 * fill it carries padding bits that decoders ignore, so changing it can leave the decoded bytes as they were.
 */
export function tamper (cursor: string): string {
  const at = cursor.indexOf('.') + 1
  return cursor.slice(0, at) + (cursor[at] === 'A' ? 'B' : 'A') + cursor.slice(at + 1)
}

/** 4: every list has a nextCursor, following it gives the next page, and a tampered cursor is refused. */
export async function checkPagination (ctx: Context, ops: Operation[]): Promise<CheckResult> {
  const allLists = ops.filter((op) => op.method === 'GET' && ctx.schemas.concrete(ctx.schemas.success(op)).properties?.nextCursor !== undefined)
  // A list under a path parameter (an endpoint's deliveries) belongs to one resource the preflight has no way to
  // make for sure (a webhook endpoint needs a public https receiver); it is named, not paged.
  const lists = allLists.filter((op) => !op.path.includes('{'))
  const nested = allLists.filter((op) => op.path.includes('{')).map((op) => `not paged (a list of one resource's items): ${op.key}`)
  const failures: string[] = []
  const skipped: string[] = []
  const passed: string[] = []
  const created: string[] = []
  for (const op of lists) {
    const hasLimit = (op.parameters ?? []).some((p) => p.in === 'query' && p.name === 'limit')
    const pageUrl = (cursor?: string) => {
      const spec = buildRequest(ctx, op)
      const url = new URL(spec.url, 'http://x')
      if (hasLimit) url.searchParams.set('limit', '1')
      if (cursor !== undefined) url.searchParams.set('cursor', cursor)
      return { ...spec, url: `${url.pathname}${url.search}` }
    }
    let first = await send(ctx.base, pageUrl(), PATIENCE_MS)
    const firstBody = () => isObject(first.body) ? first.body : {}
    if (first.status !== 200) { failures.push(`${op.key}?limit=1 -> ${said(first)} (expected 200)`); continue }
    if (!Object.hasOwn(firstBody(), 'nextCursor')) { failures.push(`${op.key}: 200 body has no nextCursor field`); continue }

    if (firstBody().nextCursor === null) {
      // Too few rows for a second page: create two with the operation whose answer is this list's item.
      const itemRef = ctx.schemas.concrete(ctx.schemas.concrete(ctx.schemas.success(op)).properties?.data).items?.$ref
      const creator = ops.find((o) => o.method === 'POST' && itemRef !== undefined && ctx.schemas.jsonBody(o.responses?.['201'] ?? o.responses?.['200'])?.$ref === itemRef)
      // Lists whose items no single operation answers with (follows: a PUT with 204) name their own filler.
      const filler = ctx.creators[op.operationId ?? '']
      if (!hasLimit) { skipped.push(`${op.key}: shorter than one page and has no limit parameter`); continue }
      if (ctx.readOnly || (creator === undefined && filler === undefined)) {
        skipped.push(`${op.key}: fewer than 2 items and ${ctx.readOnly ? '--read-only' : 'no operation in the document creates its items'}`)
        continue
      }
      const creatorKey = creator?.key ?? `the filler of ${op.key}`
      const create = filler ?? ctx.creators[creator?.operationId ?? ''] ??
        (async () => { const answer = await send(ctx.base, buildRequest(ctx, creator!), PATIENCE_MS); return { status: answer.status, said: said(answer) } })
      if (typeof create === 'string') { skipped.push(`${op.key}: fewer than 2 items and ${create}`); continue }
      let made = 0
      let forbidden = false
      for (let i = 0; i < 2 && !forbidden; i++) {
        const answer = await create()
        if (answer.status >= 200 && answer.status < 300) made++
        else if (answer.status === 403) forbidden = true
        else failures.push(`${op.key}: creating an item with ${creatorKey} -> ${answer.said}`)
      }
      if (forbidden) {
        skipped.push(`${op.key}: fewer than 2 items and ${creatorKey} is not the user's to call (403); --client id:secret lets a service client fill it`)
        continue
      }
      created.push(`${made} via ${creatorKey}`)
      first = await send(ctx.base, pageUrl(), PATIENCE_MS)
      if (first.status !== 200 || !isObject(first.body) || typeof first.body.nextCursor !== 'string') {
        failures.push(`${op.key}?limit=1 -> ${said(first)} with nextCursor ${JSON.stringify(firstBody().nextCursor)} after creating ${made} items (expected a cursor)`)
        continue
      }
    }
    const cursor = firstBody().nextCursor
    if (typeof cursor !== 'string') { failures.push(`${op.key}: nextCursor is ${JSON.stringify(cursor)}, not a string or null`); continue }

    const second = await send(ctx.base, pageUrl(cursor), PATIENCE_MS)
    const secondData = isObject(second.body) ? second.body.data : undefined
    const firstItem = Array.isArray(firstBody().data) ? (firstBody().data as unknown[])[0] : undefined
    if (second.status !== 200) failures.push(`${op.key}: following nextCursor -> ${said(second)} (expected 200)`)
    else if (!Array.isArray(secondData) || secondData.length === 0) failures.push(`${op.key}: following nextCursor gave an empty page`)
    else if (idOf(firstItem) !== undefined && idOf(secondData[0]) === idOf(firstItem)) failures.push(`${op.key}: the next page repeats item ${String(idOf(firstItem))}`)
    else {
      const tampered = await send(ctx.base, pageUrl(tamper(cursor)), PATIENCE_MS)
      if (tampered.status !== 400) failures.push(`${op.key}: a tampered cursor -> ${said(tampered)} (expected 400)`)
      else passed.push(op.key)
    }
  }
  const status: Status = failures.length > 0 ? 'FAIL' : lists.length === 0 || skipped.length > 0 ? 'SKIP' : 'PASS'
  const evidence = lists.length === 0
    ? 'no list operations in the document (GET with nextCursor in its 200 body)'
    : `${passed.length} of ${lists.length} lists paginate (${passed.join(', ') || 'none'}): nextCursor present, next page 200 with a new item, tampered cursor 400` +
      `; ${created.length > 0 ? `created ${created.join(', ')}` : 'created nothing'}`
  return { id: 4, name: 'pagination', status, evidence, details: [...failures, ...skipped.map((s) => `skipped: ${s}`), ...nested] }
}

/** 2: SQL injection payloads in every string field and parameter are answered 2xx or 4xx, never 5xx. */
export async function checkInjection (ctx: Context, ops: Operation[]): Promise<CheckResult> {
  const targets = ops.filter((op) => !ctx.readOnly || op.method === 'GET')
  const cases: Array<{ op: Operation, slot: Slot, value: string }> = []
  for (const op of targets) {
    for (const slot of slotsOf(ctx, op)) {
      for (const value of isEmail(slot.schema, slot.name) ? [...PAYLOADS, emailPayload()] : PAYLOADS) cases.push({ op, slot, value })
    }
  }
  const failures: string[] = []
  const statuses: Record<string, number> = {}
  let writes = 0
  const answers = await mapLimit(cases, INJECTION_CONCURRENCY, async ({ op, slot, value }) => {
    const answer = await send(ctx.base, buildRequest(ctx, op, { override: { slot, value } }), PATIENCE_MS)
    const where = `${op.key} ${slot.in} ${slot.name}=${JSON.stringify(value)}`
    statuses[answer.status] = (statuses[answer.status] ?? 0) + 1
    if (answer.status === 0) failures.push(`${where}: no answer (${answer.error})`)
    else if (answer.status >= 500) failures.push(`${where} -> ${said(answer)}`)
    else if (LEAK.test(answer.text)) failures.push(`${where} -> ${answer.status} with database error text in the body`)
    if (op.method !== 'GET' && answer.status >= 200 && answer.status < 300) writes++
    return answer
  })
  // Timing, per field: against the same field's other payloads, so a busy server is not mistaken for a sleep.
  const slowest = new Map<string, number>()
  cases.forEach(({ op, slot, value }, i) => {
    const field = `${op.key} ${slot.in} ${slot.name}`
    if (value !== SLEEP_PAYLOAD) slowest.set(field, Math.max(slowest.get(field) ?? 0, answers[i]!.ms))
  })
  cases.forEach(({ op, slot, value }, i) => {
    const field = `${op.key} ${slot.in} ${slot.name}`
    const extraMs = answers[i]!.ms - (slowest.get(field) ?? 0)
    if (value === SLEEP_PAYLOAD && extraMs >= SLEEP_S * 1000 * 0.9) {
      failures.push(`${field}=${JSON.stringify(value)} took ${(extraMs / 1000).toFixed(1)} s longer than the field's other payloads: the pg_sleep ran`)
    }
  })
  // A payload that worked as SQL (DROP TABLE users) would show here, whatever the answers above said.
  const after = await reply(ctx.api.GET('/users/me', { headers: bearer(ctx.token) }))
  if (after.status !== 200) failures.push(`GET /users/me after the payloads -> ${after.said} (expected 200)`)
  const codes = Object.entries(statuses).sort(([a], [b]) => Number(a) - Number(b)).map(([code, n]) => `${code}x${n}`).join(' ')
  const limited = statuses[429] ?? 0
  return {
    id: 2,
    name: 'injection',
    status: failures.length > 0 ? 'FAIL' : 'PASS',
    evidence: `${int(cases.length)} requests, ${PAYLOADS.length} payloads into ${new Set(cases.map((c) => `${c.op.key} ${c.slot.in} ${c.slot.name}`)).size} fields and parameters of ${targets.length} operations` +
      `${ctx.readOnly ? ' (GETs only: --read-only)' : ''}: ${codes || 'none sent'}; ${failures.length} 5xx/leaks/slow; ${writes} accepted as inert data` +
      `${limited > 0 ? `; ${limited} still rate limited after waiting ${PATIENCE_MS / 1000} s (never reached a handler)` : ''}; GET /users/me afterwards ${after.status}`,
    details: failures.sort()
  }
}

/** Samples the number of client backends of one database while the load runs. */
class ConnectionSampler {
  private readonly sql
  private timer: NodeJS.Timeout | undefined
  private busy = false
  readonly counts: number[] = []
  error: string | undefined

  constructor (url: string) {
    this.sql = diagnosticSql(url)
  }

  private async sample () {
    if (this.busy) return
    this.busy = true
    try {
      const [row] = await this.sql<{ n: number }[]>`
        select count(*)::int as n from pg_stat_activity
         where backend_type = 'client backend' and datname = current_database() and application_name <> ${DIAGNOSTICS_APPLICATION_NAME}`
      this.counts.push(row?.n ?? 0)
    } catch (error) {
      this.error ??= reason(error)
    } finally {
      this.busy = false
    }
  }

  /** Takes a first sample (so a wrong URL is known before the load starts), then one every 250 ms. */
  async start () {
    await withTimeout(this.sample(), 5000, 'PostgreSQL')
    // sample() catches its own errors (kept in this.error), so the promise is safe to leave unawaited.
    this.timer = setInterval(() => { this.sample().catch(() => {}) }, SAMPLE_EVERY_MS)
  }

  async stop () {
    clearInterval(this.timer)
    await this.sample()
    await closeSql(this.sql)
  }
}

export interface LoadOptions {
  durationS: number
  connections: number
  databaseUrl?: string | undefined
  maxDbConnections: number
  metricsToken?: string | undefined
}

/** 1 and 5: the load, and what PostgreSQL and the caches did during it. */
export async function checkLoad (ctx: Context, ops: Operation[], options: LoadOptions): Promise<[CheckResult, CheckResult]> {
  const paths = ops
    .filter((op) => op.method === 'GET' && isSecured(ctx.doc, op) && documents401(op) && !op.path.includes('{') && !(op.parameters ?? []).some((p) => p.required === true))
    .map((op) => op.path)
  let sampler: ConnectionSampler | undefined
  let samplerError: string | undefined
  if (options.databaseUrl !== undefined) {
    sampler = new ConnectionSampler(options.databaseUrl)
    try {
      await sampler.start()
      if (sampler.error !== undefined) throw new Error(sampler.error)
    } catch (error) {
      samplerError = reason(error)
      await sampler.stop().catch(() => {})
      sampler = undefined
    }
  }
  let metricsBefore: MetricsSnapshot | undefined
  let metricsError: string | undefined
  try {
    metricsBefore = await fetchMetrics(ctx.base, options.metricsToken)
  } catch (error) {
    metricsError = reason(error)
  }

  progress(`load: ${options.connections} connections for ${options.durationS} s on ${paths.join(', ')}`)
  // Each connection cycles through the paths. Statuses are counted, never bailed on: 429s are expected.
  const result = await autocannon({
    url: ctx.base,
    connections: options.connections,
    duration: options.durationS,
    timeout: REQUEST_TIMEOUT_MS / 1000,
    headers: bearer(ctx.token),
    requests: paths.map((path) => ({ method: 'GET', path }))
  })
  await sampler?.stop()
  let caches = `cache hit ratio unavailable: ${metricsError}`
  let dependencyErrors = ''
  const failures: string[] = []
  if (metricsBefore !== undefined) {
    try {
      const delta = metricsDelta(metricsBefore, await fetchMetrics(ctx.base, options.metricsToken))
      caches = `cache hit ratio during the load: ${describeCaches(cacheCounts(delta))}`
      const errors = [...sumBy(delta, 'ledger_dependency_errors_total', (l) => `${l.dependency} ${l.operation}`)].filter(([, n]) => n > 0)
      dependencyErrors = `; dependency errors ${errors.map(([k, n]) => `${k} ${int(n)}`).join(', ') || '0'}`
      // Which routes the 5xx came from, as the server counted them.
      const byRoute = sumBy(delta, 'ledger_http_request_duration_seconds_count', (l) => l.status_code?.startsWith('5') === true ? `${l.method} ${l.route} ${l.status_code}` : undefined)
      for (const [route, n] of byRoute) if (n > 0) failures.push(`server counted ${int(n)} x ${route}`)
    } catch (error) {
      caches = `cache hit ratio unavailable: ${reason(error)}`
    }
  }

  const codes = Object.entries(result.statusCodeStats ?? {}).map(([code, stat]) => [Number(code), stat.count ?? 0] as const)
  const count = (predicate: (code: number) => boolean) => codes.filter(([code]) => predicate(code)).reduce((sum, [, n]) => sum + n, 0)
  const requests = count(() => true)
  const errors5xx = count((code) => code >= 500)
  const limited = count((code) => code === 429)
  const other = codes.filter(([code]) => code >= 300 && code < 500 && code !== 429).map(([code, n]) => `${code}x${int(n)}`)
  const loadFailed = result.errors > 0 || errors5xx > 0 || requests === 0
  const loadResult: CheckResult = {
    id: 1,
    name: 'load',
    status: loadFailed ? 'FAIL' : 'PASS',
    evidence: `${options.connections} conns x ${options.durationS} s, ${int(requests)} requests (${int(requests / Math.max(result.duration, 0.001))}/s, p99 ${ms(result.latency.p99)} ms), ` +
      `${int(result.errors)} errors (${int(result.timeouts)} timeouts), ${int(errors5xx)} 5xx, ${int(limited)} 429s` +
      `${other.length > 0 ? `, other ${other.join(' ')}` : ''}`,
    details: [
      ...failures,
      ...(requests === 0 ? ['no request completed'] : []),
      ...(limited > requests / 2
        ? ['note: most requests were turned away by the per-user rate limit (one token), so the handlers saw little of the load; a higher-tier token or higher RATE_LIMIT_* on the target loads them']
        : [])
    ]
  }

  const maxConnections = sampler === undefined ? 0 : Math.max(0, ...sampler.counts)
  let resources: CheckResult
  if (options.databaseUrl === undefined) {
    resources = { id: 5, name: 'resources', status: 'SKIP', evidence: `PostgreSQL connections not sampled (no --database-url); ${caches}${dependencyErrors}`, details: [] }
  } else if (sampler === undefined || samplerError !== undefined) {
    resources = { id: 5, name: 'resources', status: 'FAIL', evidence: `cannot sample pg_stat_activity: ${samplerError ?? 'no sample'}; ${caches}${dependencyErrors}`, details: [] }
  } else {
    const under = maxConnections < options.maxDbConnections
    resources = {
      id: 5,
      name: 'resources',
      status: under ? 'PASS' : 'FAIL',
      evidence: `PostgreSQL client connections max ${maxConnections} (${under ? '<' : '>='} ${options.maxDbConnections}) over ${sampler.counts.length} samples; ${caches}${dependencyErrors}`,
      details: sampler.error === undefined ? [] : [`some samples failed: ${sampler.error}`]
    }
  }
  return [loadResult, resources]
}

// ---- setup and main ---------------------------------------------------------------------------------------------

export interface PreflightOptions extends LoadOptions {
  url: string
  token?: string | undefined
  login?: { email: string, password: string } | undefined
  /** A service client with funds:write: money enters the ledger only through one. */
  client?: { id: string, secret: string } | undefined
  readOnly: boolean
}

/** 1-cent deposits to `userId` from the service client, for lists the user cannot fill alone. */
async function fundingCreators (api: Api, client: { id: string, secret: string }, userId: string): Promise<Context['creators']> {
  const grant = await reply(api.POST('/auth/token', { body: { grant_type: 'client_credentials', client_id: client.id, client_secret: client.secret } }))
  const token = grant.data?.access_token
  if (grant.status !== 200 || typeof token !== 'string') throw new SetupError(`client credentials for ${client.id} -> ${grant.said}`)
  return {
    createTransaction: async () => {
      const reference = `preflight-${randomBytes(8).toString('hex')}`
      return reply(api.POST('/transactions', {
        headers: bearer(token),
        params: { header: { 'idempotency-key': reference } },
        body: { kind: 'deposit', userId, amount: 1, currency: 'USD', reference, description: 'preflight' }
      }))
    }
  }
}

/** Follow lists: each item is a user signed up for this run (public signup, rate limited per IP like any signup). */
function followCreators (api: Api, token: string, userId: string): Context['creators'] {
  const signUp = async () => {
    const credentials = { email: `preflight-follow-${randomBytes(6).toString('hex')}@example.test`, password: randomBytes(18).toString('base64url') }
    const signup = await reply(api.POST('/users', { body: { ...credentials, name: 'Preflight follow' } }))
    const id = signup.data?.id
    return signup.status === 201 && typeof id === 'string' ? { ok: true as const, id, credentials } : { ok: false as const, answer: signup }
  }
  return {
    listFollowing: async () => {
      const other = await signUp()
      if (!other.ok) return other.answer
      return reply(api.PUT('/users/me/following/{id}', { headers: bearer(token), params: { path: { id: other.id } } }))
    },
    listFollowers: async () => {
      const other = await signUp()
      if (!other.ok) return other.answer
      const login = await reply(api.POST('/auth/token', { body: { grant_type: 'password', ...other.credentials } }))
      const otherToken = login.data?.access_token
      if (login.status !== 200 || typeof otherToken !== 'string') return login
      return reply(api.PUT('/users/me/following/{id}', { headers: bearer(otherToken), params: { path: { id: userId } } }))
    }
  }
}

export class SetupError extends Error {
  override name = 'SetupError'
}

async function authenticate (api: Api, options: PreflightOptions): Promise<{ token: string, who: string }> {
  if (options.token !== undefined) return { token: options.token, who: 'from --token' }
  let credentials = options.login
  let who = credentials === undefined ? '' : credentials.email
  if (credentials === undefined) {
    if (options.readOnly) throw new SetupError('--read-only needs --token or --login (signing up a user is a write)')
    credentials = { email: `preflight-${randomBytes(6).toString('hex')}@example.test`, password: randomBytes(18).toString('base64url') }
    const signup = await reply(api.POST('/users', { body: { ...credentials, name: 'Preflight' } }))
    if (signup.status !== 201) throw new SetupError(`signing up ${credentials.email} -> ${signup.said}`)
    who = `${credentials.email} signed up for this run`
  }
  const login = await reply(api.POST('/auth/token', { body: { grant_type: 'password', ...credentials } }))
  // Checked, not trusted: the server may be another version than the document the types were made from.
  const token = login.data?.access_token
  if (login.status !== 200 || typeof token !== 'string') throw new SetupError(`logging in as ${credentials.email} -> ${login.said}`)
  return { token, who }
}

export async function preflight (options: PreflightOptions): Promise<{ header: string, results: CheckResult[] }> {
  const base = options.url
  const openapi = await send(base, { method: 'GET', url: '/openapi.json' })
  if (openapi.status !== 200 || !isObject(openapi.body) || !isObject(openapi.body.paths)) {
    throw new SetupError(`GET /openapi.json -> ${said(openapi)} (expected the OpenAPI document)`)
  }
  const doc = openapi.body as OpenApiDocument
  const ops = operationsOf(doc)
  const api = apiClient(base)
  const { token, who } = await authenticate(api, options)
  const me = await reply(api.GET('/users/me', { headers: bearer(token) }))
  const userId = me.data?.id
  if (me.status !== 200 || typeof userId !== 'string') throw new SetupError(`GET /users/me with the token -> ${me.said}`)
  const schemas = new Schemas(doc)
  const creators = {
    ...(options.readOnly ? {} : followCreators(api, token, userId)),
    ...(options.client === undefined
      ? { createTransaction: 'only a service client can create money (--client id:secret lets one fund the user)' }
      : options.readOnly ? {} : await fundingCreators(api, options.client, userId))
  }
  const ctx: Context = { doc, api, schemas, examples: new Examples(schemas), base, token, userId, readOnly: options.readOnly, creators }
  const header = `preflight ${base}: ${doc.info?.title ?? 'API'} ${doc.info?.version ?? ''}, ${ops.length} operations; user ${who}, id ${ctx.userId}` +
    `${options.readOnly ? '; read-only' : '; writes allowed (a few rows, counted below)'}`

  progress('3 auth')
  const auth = await checkAuth(ctx, ops)
  progress('4 pagination')
  const pagination = await checkPagination(ctx, ops)
  progress('2 injection')
  const injection = await checkInjection(ctx, ops)
  progress('1 load + 5 resources')
  const [load, resources] = await checkLoad(ctx, ops, options)
  return { header, results: [load, injection, auth, pagination, resources] }
}

export function renderResults (results: CheckResult[]): string {
  const lines: string[] = []
  for (const result of [...results].sort((a, b) => a.id - b.id)) {
    lines.push(`${result.status}  ${result.id} ${result.name}: ${result.evidence}`)
    for (const detail of result.details) lines.push(`      ${detail}`)
  }
  const count = (status: Status) => results.filter((r) => r.status === status).length
  lines.push(`preflight: ${count('PASS')} passed, ${count('FAIL')} failed, ${count('SKIP')} skipped`)
  return lines.join('\n')
}

const usage = `usage: npm run preflight -- --url URL [--token T | --login email:password] [--client id:secret] [--database-url URL]
                          [--duration S] [--connections N] [--max-db-connections N] [--metrics-token T] [--read-only]
  --url                 the running service, e.g. http://127.0.0.1:3000
  --token / --login     who to test as; neither: sign up a throwaway preflight-<hex>@example.test user (a write)
  --client              a service client with funds:write that funds the user with 1-cent deposits when its
                        transactions list is shorter than two pages' worth (without it that list is skipped)
  --database-url        direct PostgreSQL URL of the service's database: its connections are sampled during the load
  --duration S          load duration in seconds (default 30)
  --connections N       load connections (default 100)
  --max-db-connections  PostgreSQL client connections must stay under this (default 20)
  --metrics-token       bearer token for GET /metrics (default: $METRICS_TOKEN), for the cache hit ratio
  --read-only           send GETs only; lists with fewer than 2 items are then skipped`

if (import.meta.main) {
  let values
  try {
    ({ values } = parseArgs({
      options: {
        url: { type: 'string' },
        token: { type: 'string' },
        login: { type: 'string' },
        client: { type: 'string' },
        'database-url': { type: 'string' },
        duration: { type: 'string', default: '30' },
        connections: { type: 'string', default: '100' },
        'max-db-connections': { type: 'string', default: '20' },
        'metrics-token': { type: 'string' },
        'read-only': { type: 'boolean', default: false },
        help: { type: 'boolean', default: false }
      }
    }))
  } catch (error) {
    console.error(`${reason(error)}\n${usage}`)
    process.exit(2)
  }
  const durationS = Number(values.duration)
  const connections = Number(values.connections)
  const maxDbConnections = Number(values['max-db-connections'])
  const colon = values.login?.indexOf(':') ?? -1
  const clientColon = values.client?.indexOf(':') ?? -1
  const valid = values.url !== undefined && URL.canParse(values.url) && durationS > 0 && durationS <= 600 &&
    Number.isInteger(connections) && connections >= 1 && connections <= 1000 && Number.isInteger(maxDbConnections) && maxDbConnections >= 1 &&
    !(values.token !== undefined && values.login !== undefined) && (values.login === undefined || colon > 0) &&
    (values.client === undefined || clientColon > 0)
  if (values.help || !valid) {
    console.error(usage)
    process.exit(values.help ? 0 : 2)
  }
  const started = performance.now()
  try {
    const { header, results } = await preflight({
      url: values.url!,
      token: values.token,
      login: values.login === undefined ? undefined : { email: values.login.slice(0, colon), password: values.login.slice(colon + 1) },
      client: values.client === undefined ? undefined : { id: values.client.slice(0, clientColon), secret: values.client.slice(clientColon + 1) },
      databaseUrl: values['database-url'],
      durationS,
      connections,
      maxDbConnections,
      metricsToken: values['metrics-token'] ?? (process.env.METRICS_TOKEN || undefined),
      readOnly: values['read-only']
    })
    console.log(header)
    console.log(renderResults(results))
    console.log(`took ${((performance.now() - started) / 1000).toFixed(1)} s`)
    process.exit(results.some((r) => r.status === 'FAIL') ? 1 : 0)
  } catch (error) {
    console.log(`FAIL  0 setup: ${reason(error)}`)
    process.exit(1)
  }
}
