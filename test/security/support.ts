// Shared pieces of the security suite: the attack payload table, the list of private routes, a
// recorder that checks every response for leaked secrets, database probes (tables intact, a user's data), and a
// connection as the API role with the SQLSTATE its statements fail with.
import { randomBytes } from 'node:crypto'
import { connect } from 'node:net'
import postgres from 'postgres'
import type { InjectOptions, LightMyRequestResponse } from 'fastify'
import type { Test } from 'tap'
import type { App } from '../../app.ts'
import type { Scope } from '../../plugins/auth/index.ts'
import { createServiceClient } from '../../routes/identity/clients.ts'
import { ownerSql, type testSql, type TestClient, type TestUser } from '../helper.ts'

type TestSql = ReturnType<typeof testSql>
type Assert = Pick<Test, 'ok' | 'equal'>

/** Strings an attacker sends where the API expects text. Each must be refused (400) or stored as inert text. */
export const INJECTION_STRINGS: Record<string, string> = {
  'sql tautology': "' OR 1=1 --",
  'stacked drop table': "test'; DROP TABLE users;--",
  'dollar placeholder': '$1',
  'placeholder list': '$1, $2); delete from balances; --',
  'double-quoted identifier': '"users"; truncate "transactions" cascade; --',
  'nul byte': 'before\u0000after',
  'only nul': '\u0000',
  '10,000 characters': 'A'.repeat(10_000),
  'unicode confusables': 'раypal аdmin', // Cyrillic р, а
  'rtl override': 'invoice\u202Egnp.exe',
  'zero-width joiners': 'ad\u200Dmin\u200B',
  'number as string': '12345',
  'negative number as string': '-1',
  'json in a string': '{"$gt": ""}',
  'html/script': '<script>alert(1)</script>',
  'redis protocol': '*1\r\n$8\r\nFLUSHALL\r\n',
  'log forging': 'ok\n{"level":60,"msg":"forged"}',
  'path traversal': '../../etc/passwd',
  emoji: '💸🏦🔥',
  'backslash escapes': '\\x00\\u0000\\\'',
  'percent encoding': '%27%20OR%201%3D1%20--'
}

/** JSON values of the wrong type, sent where a string (or number) is expected: always a 400. */
export const WRONG_TYPES: Record<string, unknown> = {
  object: { $gt: '' },
  'nested object': { toString: 'x', valueOf: 1 },
  array: ["' OR 1=1 --"],
  'empty array': [],
  number: 42,
  boolean: true,
  null: null
}

export const CORE_TABLES = ['users', 'transactions', 'entries', 'balances', 'idempotency_keys', 'posts', 'feed_items', 'follows'] as const

/** Every core table still exists (no payload dropped or renamed anything). */
export async function assertTablesIntact (t: Assert, sql: TestSql) {
  for (const table of CORE_TABLES) {
    const [row] = await sql<{ oid: string | null }[]>`select to_regclass(${table})::text as oid`
    t.equal(row?.oid, table, `table ${table} still exists`)
  }
}

/** Everything the database holds about one user: before/after equality proves an attack changed nothing. */
export async function snapshotUser (sql: TestSql, userId: string) {
  const [profile] = await sql`
    select id, email, name, avatar_url, password_hash, tier, created_at, updated_at from users where id = ${userId}`
  const balances = await sql`select currency, balance from balances where user_id = ${userId} order by currency`
  const entries = await sql`select transaction_id, delta from entries where user_id = ${userId} order by transaction_id`
  const transactions = await sql`
    select id, kind, amount, currency, from_user_id, to_user_id, description, client_id, reference, created_at
      from transactions where from_user_id = ${userId} or to_user_id = ${userId} order by id`
  // The user's posts and what is on their feed (posts are written once and placed on feeds by feed_items).
  const posts = await sql`
    select p.id, f.feed_user_id, p.author_id, p.body, p.created_at, p.deleted_at
      from posts p left join feed_items f on f.post_id = p.id and f.feed_user_id = ${userId}
     where f.feed_user_id is not null or p.author_id = ${userId}
     order by p.id`
  // Whom the user follows (their choice); who follows them is the followers' own business.
  const follows = await sql`select followee_id from follows where follower_id = ${userId} order by 1`
  // Keys are per principal: a user's own (their transfers); a client's deposits to the user are under the client.
  const keys = await sql`select key, fingerprint, transaction_id from idempotency_keys where principal_id = ${userId} order by key`
  // Plain data (Date -> ISO text) so tap's deep equality compares values, not object identity.
  return JSON.parse(JSON.stringify({ profile, balances, entries, transactions, posts, follows, keys })) as Record<string, unknown>
}

export interface PrivateRoute {
  method: 'GET' | 'POST' | 'PATCH' | 'PUT' | 'DELETE'
  /** OpenAPI-style path ({id}), matching GET /openapi.json. */
  path: string
  /** A concrete URL for the caller `self` (own ids, so only auth decides the answer). */
  url: (self: { id: string }) => string
  payload?: Record<string, unknown>
  headers?: Record<string, string>
  /** Whether a service client token may call it too (else it is a user-only route: 403 for a client). */
  clients?: boolean
}

/** Every route that needs a token. The auth suite checks this list against the OpenAPI document. */
export const PRIVATE_ROUTES: PrivateRoute[] = [
  { method: 'GET', path: '/users/me', url: () => '/users/me' },
  { method: 'GET', path: '/users/{id}', url: (self) => `/users/${self.id}` },
  { method: 'PATCH', path: '/users/{id}', url: (self) => `/users/${self.id}`, payload: { name: 'Attacker' } },
  { method: 'POST', path: '/posts', url: () => '/posts', payload: { body: 'hello' } },
  { method: 'GET', path: '/feed', url: () => '/feed' },
  { method: 'DELETE', path: '/posts/{id}', url: () => '/posts/1' },
  { method: 'PUT', path: '/users/me/following/{id}', url: () => '/users/me/following/00000000-0000-4000-8000-00000000d0e5' },
  { method: 'DELETE', path: '/users/me/following/{id}', url: () => '/users/me/following/00000000-0000-4000-8000-00000000d0e5' },
  { method: 'GET', path: '/users/me/following', url: () => '/users/me/following' },
  { method: 'GET', path: '/users/me/followers', url: () => '/users/me/followers' },
  {
    method: 'POST',
    path: '/transactions',
    url: () => '/transactions',
    // A user's own kind of money write (a deposit would be refused for its kind, not its token); the recipient
    // does not exist, which only a caller who got past authentication could learn.
    payload: { kind: 'transfer', amount: 100, currency: 'USD', toUserId: '00000000-0000-4000-8000-00000000d0e5' },
    headers: { 'idempotency-key': 'auth-suite-key' },
    clients: true
  },
  { method: 'GET', path: '/transactions', url: () => '/transactions', clients: true },
  { method: 'GET', path: '/transactions/{id}', url: () => '/transactions/1', clients: true },
  { method: 'GET', path: '/balances', url: () => '/balances' },
  { method: 'POST', path: '/auth/revoke', url: () => '/auth/revoke' },
  { method: 'PUT', path: '/users/me/password', url: () => '/users/me/password', payload: { currentPassword: 'not the password', newPassword: 'attacker chosen password' } },
  // Service clients need events:read here (the suite's clients hold funds:write only, so they are refused too).
  { method: 'POST', path: '/webhook-endpoints', url: () => '/webhook-endpoints', payload: { url: 'http://127.0.0.1:9/auth-suite' } },
  { method: 'GET', path: '/webhook-endpoints', url: () => '/webhook-endpoints' },
  { method: 'PATCH', path: '/webhook-endpoints/{id}', url: () => '/webhook-endpoints/00000000-0000-4000-8000-00000000d0e5', payload: { enabled: true } },
  { method: 'DELETE', path: '/webhook-endpoints/{id}', url: () => '/webhook-endpoints/00000000-0000-4000-8000-00000000d0e5' },
  { method: 'GET', path: '/webhook-endpoints/{id}/deliveries', url: () => '/webhook-endpoints/00000000-0000-4000-8000-00000000d0e5/deliveries' }
]

/** Whoever sends a request: a user, or a service client (their ids never coincide). */
export type Caller = Pick<TestUser | TestClient, 'id' | 'authorization'>

interface Recorded {
  caller: Caller | null
  /** The email this request itself sent (a signup or login response may echo it). */
  ownEmail: string | undefined
  method: string
  url: string
  status: number
  body: string
}

/**
 * Sends requests through app.inject and keeps every response, so a test can assert at the end that no response
 * it ever got carried a password hash or an email other than the caller's own.
 */
export class ResponseRecorder {
  readonly responses: Recorded[] = []
  private readonly app: App
  constructor (app: App) { this.app = app }

  /** `caller` is who sends it (their token is added unless the headers carry an authorization already). */
  async send (caller: Caller | null, options: InjectOptions & { url: string }): Promise<LightMyRequestResponse> {
    const headers: Record<string, string> = { ...(options.headers as Record<string, string> | undefined) }
    if (caller !== null && headers.authorization === undefined) headers.authorization = caller.authorization
    const response = await this.app.inject({ ...options, headers })
    const payload = options.payload
    const sentEmail = typeof payload === 'object' && payload !== null && !Buffer.isBuffer(payload) && 'email' in payload
      ? (payload as { email: unknown }).email
      : undefined
    const ownEmail = typeof sentEmail === 'string' ? sentEmail : undefined
    this.responses.push({ caller, ownEmail, method: String(options.method ?? 'GET'), url: options.url, status: response.statusCode, body: response.body })
    return response
  }

  /** No recorded response holds a password hash, or the email of a known user other than the caller. */
  assertNoLeaks (t: Assert, users: TestUser[]) {
    let leaks = 0
    for (const recorded of this.responses) {
      const where = `${recorded.method} ${recorded.url.slice(0, 80)} -> ${recorded.status}`
      if (recorded.body.includes('scrypt$')) {
        leaks++
        t.ok(false, `password hash in the response of ${where}`)
      }
      const body = recorded.body.toLowerCase()
      for (const user of users) {
        const email = user.email.toLowerCase()
        if (!body.includes(email)) continue
        const allowed = recorded.caller?.id === user.id || recorded.ownEmail?.toLowerCase() === email
        if (!allowed) {
          leaks++
          t.ok(false, `${user.email} leaked to ${recorded.caller?.id ?? 'an anonymous caller'} in ${where}`)
        }
      }
    }
    t.equal(leaks, 0, `no password hash or foreign email in any of ${this.responses.length} responses`)
  }
}

/** Fields of a problem+json error body, checked on every refusal. */
/**
 * The request went to an OAuth endpoint that answers RFC 6749 section 5.2 errors: the token endpoint always, the
 * revocation endpoint for form requests (its bearer logout answers problem+json like the rest of the API).
 */
function oauthEndpoint (response: LightMyRequestResponse): boolean {
  const request = response.raw.req as { url?: string, headers?: Record<string, unknown> }
  const path = (request.url ?? '').split('?')[0]
  const form = /^application\/x-www-form-urlencoded/i.test(String(request.headers?.['content-type'] ?? ''))
  return path === '/auth/token' || (path === '/auth/revoke' && form)
}

/** A refusal in the API's error format: problem+json, or RFC 6749 section 5.2's JSON where an OAuth endpoint answers. */
export function assertProblem (t: Assert, response: LightMyRequestResponse, status: number | number[], label: string) {
  const statuses = Array.isArray(status) ? status : [status]
  t.ok(statuses.includes(response.statusCode), `${label}: status ${response.statusCode} is one of ${statuses.join('/')}`)
  let body: { status?: unknown, error?: unknown, error_description?: unknown } | undefined
  try {
    body = response.json()
  } catch {
    body = undefined
  }
  if (oauthEndpoint(response)) {
    t.ok(/^application\/json/.test(String(response.headers['content-type'])), `${label}: RFC 6749 error JSON`)
    t.ok(typeof body?.error === 'string' && typeof body.error_description === 'string', `${label}: error and error_description`)
    return
  }
  t.ok(/^application\/problem\+json/.test(String(response.headers['content-type'])), `${label}: problem+json`)
  t.equal(body?.status, response.statusCode, `${label}: body.status matches`)
}

/** An RFC 6749 section 5.2 error from an OAuth endpoint: the status, application/json, and `error` as given. */
export function assertOAuthError (t: Assert, response: LightMyRequestResponse, status: number, error: string, label: string) {
  t.equal(response.statusCode, status, `${label}: status ${status}`)
  t.ok(/^application\/json/.test(String(response.headers['content-type'])), `${label}: application/json`)
  let body: { error?: unknown, error_description?: unknown } | undefined
  try {
    body = response.json()
  } catch {
    body = undefined
  }
  t.equal(body?.error, error, `${label}: error ${error}`)
  t.ok(typeof body?.error_description === 'string', `${label}: error_description`)
}

export { randomTestIp } from '../helper.ts'

/** A valid ISO currency other tests are unlikely to use, so per-currency balances stay this file's own. */
export const TEST_CURRENCY = 'CHF'

/**
 * A service client with a token signed directly, without the token endpoint: for apps whose public per-IP limit
 * is set low on purpose (the Redis bucket of 127.0.0.1 is shared with every other test).
 */
export async function issueTestClient (app: App, scopes: Scope[] = ['funds:write'], name = 'security suite settlement'): Promise<TestClient> {
  const { client, secret } = await createServiceClient(ownerSql(), name, scopes)
  const { accessToken } = await app.issueClientToken({ id: client.id, scopes })
  return { id: client.id, secret, scopes, token: accessToken, authorization: `Bearer ${accessToken}` }
}

/** A deposit or withdrawal body a service client posts for `userId`, with a fresh settlement reference unless given. */
export const fundingBody = (kind: 'deposit' | 'withdrawal', userId: string, amount: unknown, extra: Record<string, unknown> = {}) =>
  ({ kind, userId, amount, currency: TEST_CURRENCY, reference: `sec-${randomBytes(8).toString('hex')}`, ...extra })

export interface RawExchange {
  /** Status of the first response on the socket, or undefined when none came. */
  status: number | undefined
  /** Everything the server sent. */
  text: string
  /** Whether the server closed the connection (false when we gave up waiting). */
  closed: boolean
  elapsedMs: number
}

/**
 * Writes raw bytes to a local server and collects its answer until it closes the socket, a complete response
 * arrived (when `untilResponse`), or `timeoutMs` passed (then the socket is destroyed). 127.0.0.1 only.
 */
export function rawExchange (port: number, chunks: (string | Buffer)[], options: { timeoutMs: number, untilResponse?: boolean }): Promise<RawExchange> {
  return new Promise((resolve) => {
    const started = Date.now()
    let text = ''
    let done = false
    const socket = connect(port, '127.0.0.1')
    const finish = (closed: boolean) => {
      if (done) return
      done = true
      clearTimeout(timer)
      socket.destroy()
      const match = /^HTTP\/1\.1 (\d{3})/.exec(text)
      resolve({ status: match === null ? undefined : Number(match[1]), text, closed, elapsedMs: Date.now() - started })
    }
    const timer = setTimeout(() => finish(false), options.timeoutMs)
    socket.on('connect', () => { for (const chunk of chunks) socket.write(chunk) })
    socket.on('data', (data) => {
      text += data.toString('latin1')
      const head = text.indexOf('\r\n\r\n')
      const length = /\r\ncontent-length: (\d+)/i.exec(text)
      if (options.untilResponse === true && head !== -1 && length !== null && text.length >= head + 4 + Number(length[1])) finish(false)
    })
    socket.on('close', () => finish(true))
    socket.on('error', () => finish(true))
  })
}

/** A connection as the API role, through PgBouncer in transaction mode: exactly what a leaked DATABASE_URL gives. */
export function asApiRole (t: Pick<Test, 'teardown'>) {
  const sql = postgres(process.env.DATABASE_URL ?? '', { max: 1, prepare: false, onnotice: () => {}, connection: { application_name: 'attacker' } })
  t.teardown(() => sql.end({ timeout: 5 }))
  return sql
}

/** The SQLSTATE a statement fails with, or 'ok' when PostgreSQL ran it. */
export async function outcome (statement: Promise<unknown>): Promise<string> {
  try {
    await statement
    return 'ok'
  } catch (error) {
    return (error as { code?: string }).code ?? String(error)
  }
}
