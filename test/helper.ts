import { createHmac, randomBytes } from 'node:crypto'
import { W3CTraceContextPropagator } from '@opentelemetry/core'
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node'
import { InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan, type Span, type SpanProcessor } from '@opentelemetry/sdk-trace-base'
import type { FastifyServerOptions, InjectOptions } from 'fastify'
import postgres from 'postgres'
import { buildApp, type App } from '../app.ts'
import { loadConfig, type Config } from '../config.ts'
import type { Scope } from '../plugins/auth.ts'
import type { JobHandler, JobHandlers } from '../plugins/jobs.ts'
import { createServiceClient } from '../routes/auth/clients.ts'

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
  RATE_LIMIT_STANDARD_CAPACITY: '100000',
  RATE_LIMIT_PRO_CAPACITY: '100000',
  RATE_LIMIT_PUBLIC_CAPACITY: '100000',
  // A busy CI machine lags its event loop; shedding is tested on purpose in observability.test.ts only.
  PRESSURE_MAX_EVENT_LOOP_DELAY_MS: '0',
  // scrypt at the production cost (2^17) takes ~128 MiB and a few hundred ms per hash: tests sign up and log in
  // hundreds of users, so they hash at the lowest cost the config accepts unless a test sets it.
  PASSWORD_HASH_COST: '1024'
}

export function testConfig (overrides: Record<string, string> = {}): Config {
  return loadConfig({ ...process.env, LOG_LEVEL: 'silent', ...generousLimits, ...overrides })
}

/** Builds the app exactly as the server does, against the test stack, and closes it when the test ends. */
export async function buildTestApp (t: Teardown, overrides: Record<string, string> = {}, options: { logger?: FastifyServerOptions['logger'] } = {}): Promise<App> {
  const app = await buildApp(testConfig(overrides), options)
  t.teardown(() => app.close())
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
 * Sends one request inside a fresh trace (W3C traceparent) and returns the response with exactly the spans
 * that request produced, so tests can count database spans without interference from anything else.
 */
export async function injectTraced (app: App, options: InjectOptions) {
  const traceId = randomBytes(16).toString('hex')
  const parentId = randomBytes(8).toString('hex')
  const response = await app.inject({ ...options, headers: { ...options.headers, traceparent: `00-${traceId}-${parentId}-01` } })
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

/** Signs a new user up through the API and logs them in; every test makes its own users. */
export async function createUser (app: App, options: { name?: string, tier?: 'standard' | 'pro', remoteAddress?: string } = {}): Promise<TestUser> {
  const email = uniqueEmail()
  const password = 'correct horse battery staple'
  const name = options.name ?? 'Test User'
  const remoteAddress = options.remoteAddress ?? '127.0.0.1'
  const signup = await app.inject({ method: 'POST', url: '/users', remoteAddress, payload: { email, name, password } })
  if (signup.statusCode !== 201) throw new Error(`signup failed: ${signup.statusCode} ${signup.body}`)
  const { id } = signup.json() as { id: string }
  const login = await app.inject({ method: 'POST', url: '/auth/token', remoteAddress, payload: { email, password } })
  if (login.statusCode !== 200) throw new Error(`login failed: ${login.statusCode} ${login.body}`)
  const { accessToken, refreshToken } = login.json() as { accessToken: string, refreshToken: string }
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
    method: 'POST', url: '/auth/token', payload: { grant_type: 'client_credentials', client_id: client.id, client_secret: secret }
  })
  if (response.statusCode !== 200) throw new Error(`client token failed: ${response.statusCode} ${response.body}`)
  const token = response.json().accessToken as string
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
 * STAND-IN FOR THE WORKER (issue 18), for tests of job handlers only: the lead replaces its body with the real
 * worker's run-once method at merge time. It claims due jobs of the given kinds one at a time with FOR UPDATE SKIP
 * LOCKED, runs the handler, and applies the job model's outcomes: `done` deletes the row, `continue` stores the new
 * payload (the job stays due), a throw counts a failed attempt and moves run_at past now (so a failing job is left
 * for a later drain instead of looping). It returns when no job of those kinds is due any more, including jobs
 * another test file's drain holds at that moment (it waits for them), or after `maxSteps` steps (a test that
 * simulates a worker dying mid-job stops it early). Failed runs come back in `errors` for the test to show.
 *
 * `matching` (payload fragments, any of them, JSON containment) keeps a drain to its own test's jobs: test files run
 * in parallel on one database, and a drain that took every due job would run (and finish) jobs whose queued rows or
 * intermediate steps another file is asserting on. A real worker inside a test app would need the same scoping.
 */
export async function drainJobs (app: App, handlers: JobHandlers, options: { kinds: readonly string[], matching?: readonly object[], maxSteps?: number, timeoutMs?: number }): Promise<{ steps: number, failures: number, errors: unknown[] }> {
  const sql = app.db
  const kinds = [...options.kinds]
  const matching = options.matching
  const ours = () => matching === undefined
    ? sql``
    : sql`and exists (select 1 from jsonb_array_elements(${sql.json(matching as never)}) m(fragment) where payload @> m.fragment)`
  const maxSteps = options.maxSteps ?? 100_000
  const deadline = Date.now() + (options.timeoutMs ?? 60_000)
  const signal = new AbortController().signal
  let steps = 0
  const errors: unknown[] = []
  while (steps < maxSteps) {
    if (Date.now() > deadline) throw new Error(`drainJobs: jobs of ${kinds.join(', ')} still due after the timeout`)
    const ran = await sql.begin(async (tx) => {
      const [job] = await tx<{ id: string, kind: string, payload: unknown, attempts: number }[]>`
        select id, kind, payload, attempts from jobs
         where kind in ${tx(kinds)} and run_at <= now() ${ours()}
         order by run_at, id
         limit 1
           for update skip locked`
      if (job === undefined) return false
      const handler = handlers[job.kind] as JobHandler | undefined
      if (handler === undefined) throw new Error(`drainJobs: no handler for ${job.kind}`)
      try {
        const result = await handler(job, { sql, log: app.log, signal })
        if (result.status === 'done') await tx`delete from jobs where id = ${job.id}`
        else await tx`update jobs set payload = ${tx.json(result.payload as never)} where id = ${job.id}`
      } catch (error) {
        errors.push(error)
        await tx`update jobs set attempts = attempts + 1, run_at = now() + interval '1 minute' where id = ${job.id}`
      }
      return true
    })
    if (ran) {
      steps++
      continue
    }
    // Nothing claimable: done, unless due jobs of these kinds are held by another drain right now.
    const [due] = await sql<{ count: number }[]>`select count(*)::int as count from jobs where kind in ${sql(kinds)} and run_at <= now() ${ours()}`
    if ((due?.count ?? 0) === 0) break
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  return { steps, failures: errors.length, errors }
}
