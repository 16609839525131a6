import { createHmac, randomBytes } from 'node:crypto'
import { W3CTraceContextPropagator } from '@opentelemetry/core'
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node'
import { InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan, type Span, type SpanProcessor } from '@opentelemetry/sdk-trace-base'
import type { FastifyInstance, FastifyServerOptions, InjectOptions } from 'fastify'
import postgres from 'postgres'
import { buildApp, type App } from '../app.ts'
import { loadConfig, type Config } from '../settings.ts'
import type { Scope } from '../plugins/auth/index.ts'
import { createServiceClient } from '../routes/identity/clients.ts'
import { withDatabase } from '../scripts/local-stack.ts'
import { SUITE_LIMITS } from './suite-limits.ts'
import { wireMismatches } from './wire-check.ts'

interface Teardown { teardown: (fn: () => unknown) => void }

export const spanExporter = new InMemorySpanExporter()

/** Every span started and not yet ended in this process: a span left open is a leak the tests look for. */
const startedSpans = new Set<Span>()
const openSpanTracker: SpanProcessor = {
  onStart: (span) => { startedSpans.add(span) },
  onEnd: (span) => { startedSpans.delete(span as unknown as Span) },
  forceFlush: async () => {},
  shutdown: async () => {}
}
export const openSpans = (): Span[] => [...startedSpans]

new NodeTracerProvider({ spanProcessors: [openSpanTracker, new SimpleSpanProcessor(spanExporter)] })
  .register({ propagator: new W3CTraceContextPropagator() })

// Tests create many users from one address and send bursts; limits are lifted unless a test sets them.
const generousLimits = {
  ...SUITE_LIMITS,
  // Webhook receivers in tests listen on loopback; tests run due jobs themselves (app.jobs.runDue()), so no
  // app's background loop takes another test's jobs.
  WEBHOOK_ALLOW_PRIVATE_TARGETS: 'true',
  WORKER_ENABLED: 'false',
  // Test files share one database and check or corrupt the whole ledger on purpose; only the ledger check's own
  // tests run it, as real processes.
  RECONCILE_INTERVAL_S: '0'
}

export function testConfig (overrides: Record<string, string> = {}): Config {
  return loadConfig({ ...process.env, LOG_LEVEL: 'silent', ...generousLimits, ...overrides })
}

const foundMismatches = new WeakMap<object, string[]>()

/** What the wire check found in this app's responses so far (a test that provokes a mismatch on purpose empties it). */
export const wireMismatchesOf = (app: App): string[] => foundMismatches.get(app) ?? []

/**
 * The wire check (test/wire-check.ts) on every response of every route, whether the request came from inject or
 * over a socket. A response that differs from openapi.json is replaced by a 500 problem naming the difference, so
 * the test that caused it fails where it looks at the answer, and is listed for the test's teardown to fail on.
 */
function addWireCheck (app: FastifyInstance, found: string[]) {
  app.addHook('onSend', async (request, reply, payload) => {
    const route = request.routeOptions.url
    if (route === undefined || request.method === 'HEAD') return payload
    // Streams (the documentation's static files) belong to no documented operation.
    if (payload !== null && payload !== undefined && typeof payload !== 'string' && !Buffer.isBuffer(payload)) return payload
    const mismatches = wireMismatches({ method: request.method, route, statusCode: reply.statusCode, headers: reply.getHeaders(), body: payload == null ? '' : payload.toString() })
    if (mismatches.length === 0) return payload
    found.push(...mismatches)
    process.stderr.write(`wire check: the response does not match openapi.json: ${mismatches.join('; ')}\n`)
    reply.code(500).type('application/problem+json')
    return JSON.stringify({ type: 'https://ledger-api.dev/problems/wire_check', title: 'Internal Server Error', status: 500, detail: `The response does not match openapi.json: ${mismatches.join('; ')}` })
  })
}

/**
 * Builds the app exactly as the server does, against the test stack, with the wire check on every response, and
 * closes it when the test ends (failing the test if any response differed from openapi.json).
 */
export async function buildTestApp (t: Teardown & { fail: (message: string) => void }, overrides: Record<string, string> = {}, options: { logger?: FastifyServerOptions['logger'], beforeRoutes?: (app: FastifyInstance) => void } = {}): Promise<App> {
  const found: string[] = []
  const app = await buildApp(testConfig(overrides), {
    ...options,
    beforeRoutes: (instance) => {
      options.beforeRoutes?.(instance)
      addWireCheck(instance, found)
    }
  })
  foundMismatches.set(app, found)
  t.teardown(async () => {
    await app.close()
    if (found.length > 0) t.fail(`responses differ from openapi.json:\n${found.join('\n')}`)
  })
  return app
}

let owner: postgres.Sql | undefined

/**
 * One connection as the database owner (DATABASE_DIRECT_URL), for what the operator does and the API role may not:
 * creating service clients. It closes itself when idle, so a test process can end.
 */
export function ownerSql (): postgres.Sql {
  owner ??= postgres(process.env.DATABASE_DIRECT_URL ?? process.env.DATABASE_URL ?? '', { max: 1, idle_timeout: 1, onnotice: () => {} })
  return owner
}

/** A direct SQL client for assertions on database state, closed when the test ends. */
export function testSql (t: Teardown) {
  const sql = postgres(process.env.DATABASE_DIRECT_URL ?? process.env.DATABASE_URL ?? '', { max: 2, onnotice: () => {} })
  t.teardown(() => sql.end({ timeout: 5 }))
  return sql
}

/**
 * The test database as the superuser (DATABASE_ADMIN_URL, which the test runner sets for its local stack): every
 * role's statistics and the superuser-only functions. Undefined without it; closed when the test ends.
 */
export function superuserSql (t: Teardown): postgres.Sql | undefined {
  const adminUrl = process.env.DATABASE_ADMIN_URL
  if (adminUrl === undefined) return undefined
  const database = new URL(process.env.DATABASE_DIRECT_URL ?? process.env.DATABASE_URL ?? '').pathname.slice(1)
  const sql = postgres(withDatabase(adminUrl, database), { max: 1, onnotice: () => {} })
  t.teardown(() => sql.end({ timeout: 5 }))
  return sql
}

/**
 * Sends one request inside a fresh trace (W3C traceparent, sampled unless told otherwise) and returns the response
 * with exactly the spans that request produced, so tests can count database spans without interference.
 */
export async function injectTraced (app: App, options: InjectOptions, sampled = true) {
  const traceId = randomBytes(16).toString('hex')
  const parentId = randomBytes(8).toString('hex')
  const response = await app.inject({ ...options, headers: { ...options.headers, traceparent: `00-${traceId}-${parentId}-${sampled ? '01' : '00'}` } })
  // The server span ends in onResponse, which may run just after inject resolves.
  await new Promise((resolve) => setImmediate(resolve))
  const spans = spanExporter.getFinishedSpans().filter((span) => span.spanContext().traceId === traceId)
  return { response, spans, traceId }
}

export const dbSpans = (spans: ReadableSpan[]) => spans.filter((span) => span.attributes['db.system'] === 'postgresql')

const base64url = (value: string | Buffer) => Buffer.from(value).toString('base64url')

/** Signs arbitrary JWTs by hand, for the tokens a real attacker would send (alg none, wrong key, no exp). */
export function forgeToken (header: Record<string, unknown>, payload: Record<string, unknown>, secret?: string): string {
  const head = `${base64url(JSON.stringify(header))}.${base64url(JSON.stringify(payload))}`
  if (secret === undefined) return `${head}.`
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`
}

export const hasLocalStack = process.env.LEDGER_LOCAL_STACK === '1'

export function uniqueEmail (label = 'user') {
  return `${label}-${randomBytes(6).toString('hex')}@example.test`
}

export interface TestUser {
  id: string
  email: string
  name: string
  password: string
  token: string
  authorization: string
  refreshToken: string
  sessionId: string
}

export const claimsOf = (token: string) => JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString()) as Record<string, unknown>

/**
 * A random address in the IPv6 documentation prefix (a /64 of its own). Per-IP buckets live in the shared Redis, and
 * an app built with a small public limit writes its small bucket under whatever address it sees: requests that are
 * not about the limit come from an address of their own, so no test's bucket is another file's.
 */
export function randomTestIp () {
  return `2001:db8:${randomBytes(2).toString('hex')}:${randomBytes(2).toString('hex')}::${randomBytes(2).toString('hex')}`
}

/** Signs a new user up through the API and logs them in; every test makes its own users. */
export async function createUser (app: App, options: { name?: string, tier?: 'standard' | 'pro', remoteAddress?: string } = {}): Promise<TestUser> {
  const email = uniqueEmail()
  const password = 'correct horse battery staple'
  const name = options.name ?? 'Test User'
  const remoteAddress = options.remoteAddress ?? randomTestIp()
  const signup = await app.inject({ method: 'POST', url: '/users', remoteAddress, payload: { email, name, password } })
  if (signup.statusCode !== 201) throw new Error(`signup failed: ${signup.statusCode} ${signup.body}`)
  const { id } = signup.json() as { id: string }
  const login = await app.inject({ method: 'POST', url: '/auth/token', remoteAddress, payload: { email, password } })
  if (login.statusCode !== 200) throw new Error(`login failed: ${login.statusCode} ${login.body}`)
  const { access_token: accessToken, refresh_token: refreshToken } = login.json() as { access_token: string, refresh_token: string }
  const sessionId = String(claimsOf(accessToken).sid)
  // Tiers are not self-service; a test that needs another tier gets a token for it directly, in the same session.
  const token = options.tier !== undefined ? (await app.issueToken({ id, tier: options.tier, sessionId })).accessToken : accessToken
  return { id, email, name, password, token, authorization: `Bearer ${token}`, refreshToken, sessionId }
}

export interface TestClient {
  id: string
  secret: string
  scopes: Scope[]
  token: string
  authorization: string
}

/**
 * A service client made the way the operator's `npm run clients -- create` makes one, with a token from the
 * client-credentials grant. Money enters the ledger only through such a client.
 */
export async function createClient (app: App, scopes: Scope[] = ['funds:write'], name = 'test settlement system'): Promise<TestClient> {
  const { client, secret } = await createServiceClient(ownerSql(), name, scopes)
  const response = await app.inject({
    method: 'POST', url: '/auth/token', remoteAddress: randomTestIp(), payload: { grant_type: 'client_credentials', client_id: client.id, client_secret: secret }
  })
  if (response.statusCode !== 200) throw new Error(`client token failed: ${response.statusCode} ${response.body}`)
  const token = response.json().access_token as string
  return { id: client.id, secret, scopes, token, authorization: `Bearer ${token}` }
}

const fundingClients = new WeakMap<App, Promise<TestClient>>()

/**
 * Deposits `amount` to `user` through a service client (one per app, made on first use) and returns the response;
 * throws unless it is a 201, since a test that funds a user relies on the money being there.
 */
export async function fund (app: App, user: { id: string }, amount: number, currency = 'USD', options: { client?: TestClient, reference?: string, key?: string } = {}) {
  let client = options.client
  if (client === undefined) {
    const shared = fundingClients.get(app) ?? createClient(app)
    fundingClients.set(app, shared)
    client = await shared
  }
  const response = await app.inject({
    method: 'POST',
    url: '/transactions',
    headers: { authorization: client.authorization, 'idempotency-key': options.key ?? randomBytes(12).toString('hex') },
    payload: { kind: 'deposit', userId: user.id, amount, currency, reference: options.reference ?? `settlement-${randomBytes(8).toString('hex')}` }
  })
  if (response.statusCode !== 201) throw new Error(`funding failed: ${response.statusCode} ${response.body}`)
  return response
}

/**
 * Runs this test's due jobs through the app's worker (app.jobs.runDue: the real claim, lease, handler and record)
 * until none of them is due, or `maxSteps` attempts have run (a test that stops a long job part-way). Failed attempts
 * come back in `errors` for the test to show; they are rescheduled by the retry policy, so a failing job is left for
 * later rather than looped on.
 *
 * `matching` (payload fragments, any of them, JSON containment) keeps a drain to its own test's jobs: test files run
 * in parallel on one database, and a drain that took every due job would run (and finish) jobs whose queued rows or
 * intermediate steps another file is asserting on.
 */
export async function drainJobs (app: App, options: { kinds: readonly string[], matching?: readonly object[], maxSteps?: number, timeoutMs?: number }): Promise<{ steps: number, failures: number, errors: unknown[] }> {
  const sql = app.db
  const { kinds, matching } = options
  const ours = () => matching === undefined
    ? sql``
    : sql`and exists (select 1 from jsonb_array_elements(${sql.json(matching as never)}) m(fragment) where payload @> m.fragment)`
  const maxSteps = options.maxSteps ?? 100_000
  const deadline = Date.now() + (options.timeoutMs ?? 60_000)
  const errors: unknown[] = []
  let steps = 0
  while (steps < maxSteps) {
    if (Date.now() > deadline) throw new Error(`drainJobs: jobs of ${kinds.join(', ')} still due after the timeout`)
    const ran = await app.jobs.runDue({ kinds, matching, limit: maxSteps - steps, onFailure: (error) => errors.push(error) })
    steps += ran
    if (ran > 0) continue
    // Nothing claimable: done, unless a job of ours is due but was not claimed (its kind has no handler here).
    const [due] = await sql<{ count: number }[]>`
      select count(*)::int as count from jobs where kind in ${sql(kinds as string[])} and failed_at is null and run_at <= now() ${ours()}`
    if ((due?.count ?? 0) === 0) break
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  return { steps, failures: errors.length, errors }
}

/**
 * `count` followers of `followeeId`, made set-based as the owner (no signup, no password: they never log in; a test
 * issues a token where one is needed). Returns their ids in id order.
 */
export async function makeFollowers (followeeId: string, count: number): Promise<string[]> {
  const rows = await ownerSql()<{ id: string }[]>`
    with made as (
      insert into users (email, name, password_hash)
      select 'follower-' || gen_random_uuid() || '@example.test', 'Follower ' || g, '!'
        from generate_series(1, ${count}::int) g
      returning id
    ), followed as (
      insert into follows (follower_id, followee_id)
      select id, ${followeeId} from made
      returning follower_id
    )
    select follower_id::text as id from followed order by follower_id`
  return rows.map((row) => row.id)
}

/** Polls until `check` holds, up to `deadlineMs`; returns the milliseconds it took, or Infinity. */
export async function within (deadlineMs: number, check: () => Promise<boolean>): Promise<number> {
  const started = Date.now()
  while (Date.now() - started < deadlineMs) {
    if (await check()) return Date.now() - started
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  return await check() ? Date.now() - started : Infinity
}

export interface RegisteredEndpoint { id: string, url: string, events: string[], secret: string, createdAt: string }

/** Registers a webhook endpoint through the API for `caller`; deleted when the test ends, so nothing of it is retried against a closed port. */
export async function registerWebhookEndpoint (t: Teardown, app: App, caller: { authorization: string }, url: string): Promise<RegisteredEndpoint> {
  const response = await app.inject({ method: 'POST', url: '/webhook-endpoints', headers: { authorization: caller.authorization }, payload: { url } })
  if (response.statusCode !== 201) throw new Error(`register failed: ${response.statusCode} ${response.body}`)
  const created = response.json() as RegisteredEndpoint
  t.teardown(async () => { await ownerSql()`delete from webhook_endpoints where id = ${created.id}` })
  return created
}
