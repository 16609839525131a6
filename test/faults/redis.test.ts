// Redis stopped, then Redis hung (SIGSTOP, and CLIENT PAUSE ALL), with the real process of the local stack
// Reads fall back to PostgreSQL within a bounded time, the rate limiter fails open (or closed where
// configured), readiness names Redis, and everything recovers without restarting the app.
// Runs after the main suite, alone (scripts/test.ts).
import { Redis } from 'ioredis'
import t from 'tap'
import type { App } from '../../app.ts'
import { controlService } from '../../scripts/local-stack.ts'
import { buildTestApp, createClient, createUser, hasLocalStack, testSql, type TestClient, type TestUser } from '../helper.ts'
import {
  assertLedger, assertReconciled, assertTelemetrySettled, checkLedger, freeze, injectSender, READINESS_BOUND_MS, sleep, thaw, untilNotOk, untilReady, waitFor, type Response, type Send
} from './support.ts'

const skip = hasLocalStack ? false : 'needs the local stack started by scripts/test.ts'

/** Every request during a Redis fault must be answered within this (the brief's bound for reads). */
const READ_BOUND_MS = 2000
const LIMITED_CAPACITY = 5

interface Setup {
  sql: ReturnType<typeof testSql>
  app: App
  closed: App
  limited: App
  alice: TestUser
  bob: TestUser
  carol: TestUser
  /** The service client that funds users (deposits are a client's to post). */
  funder: TestClient
}

async function setup (t: Tap): Promise<Setup> {
  const app = await buildTestApp(t)
  // Same Redis, other behaviour: fails closed; and a tight limit to prove the limiter enforces again afterwards.
  const closed = await buildTestApp(t, { RATE_LIMIT_FAIL_OPEN: 'false' })
  const limited = await buildTestApp(t, {
    RATE_LIMIT_STANDARD_CAPACITY: String(LIMITED_CAPACITY),
    RATE_LIMIT_STANDARD_REFILL_PER_S: '0.05'
  })
  await closed.ready()
  await limited.ready()
  await untilReady(app)
  return {
    sql: testSql(t), app, closed, limited, alice: await createUser(app, { name: 'Alice' }), bob: await createUser(app), carol: await createUser(app), funder: await createClient(app)
  }
}

type Tap = Parameters<Parameters<typeof t.test>[0]>[0]

const cacheCount = async (app: App, cache: string, result: 'hit' | 'miss') =>
  (await app.metrics.cacheRequests.get()).values
    .filter((v) => v.labels.cache === cache && v.labels.result === result)
    .reduce((sum, v) => sum + v.value, 0)

interface Seen { label: string, status: number, ms: number, name?: string, problem?: boolean, retryAfter?: boolean, checks?: unknown }

/** Sends one request and keeps what the client saw. */
const recorder = (seen: Seen[]) => async (label: string, send: Send, request: Parameters<Send>[0]): Promise<Response> => {
  const response = await send(request)
  const body = response.body as { name?: string, checks?: unknown }
  seen.push({
    label,
    status: response.status,
    ms: Math.round(response.ms),
    ...(typeof body?.name === 'string' ? { name: body.name } : {}),
    ...(body?.checks !== undefined ? { checks: body.checks } : {}),
    ...(response.status >= 400
      ? { problem: /problem\+json/.test(response.headers['content-type'] ?? ''), retryAfter: response.headers['retry-after'] !== undefined }
      : {})
  })
  return response
}

/**
 * The requests sent while Redis is unavailable, all at once: reads of another user's profile and of the feed,
 * a write, the rate limiter (open, beyond capacity; and closed), and readiness. Returns what clients saw.
 */
async function duringFault (s: Setup, seen: Seen[], newName: string) {
  const record = recorder(seen)
  const open = injectSender(s.app)
  const { alice, bob, carol } = s
  // Alice renames herself first: the cache cannot be invalidated now, and must not serve the old name later.
  await record('PATCH /users/:id', open, { method: 'PATCH', url: `/users/${alice.id}`, authorization: alice.authorization, body: { name: newName } })
  const reads = Array.from({ length: 4 }, () => [
    record('GET /users/:id', open, { method: 'GET', url: `/users/${alice.id}`, authorization: bob.authorization }),
    record('GET /feed', open, { method: 'GET', url: '/feed', authorization: bob.authorization })
  ]).flat()
  await Promise.all([
    ...reads,
    record('POST /transactions', open, {
      method: 'POST',
      url: '/transactions',
      authorization: s.funder.authorization,
      idempotencyKey: `redis-fault-${bob.id}`,
      body: { kind: 'deposit', userId: bob.id, amount: 100, currency: 'USD', reference: `redis-fault-${bob.id}` }
    }),
    record('GET /health/ready', untilNotOk(open), { method: 'GET', url: '/health/ready' }),
    // The per-account login throttle lives in Redis too: it fails open (or closed) with the limiter.
    record('POST /auth/token', open, { method: 'POST', url: '/auth/token', body: { email: carol.email, password: carol.password } }),
    record('fail closed: POST /auth/token', injectSender(s.closed), { method: 'POST', url: '/auth/token', body: { email: carol.email, password: carol.password } }),
    record('fail closed: GET /balances', injectSender(s.closed), { method: 'GET', url: '/balances', authorization: bob.authorization }),
    ...Array.from({ length: LIMITED_CAPACITY + 3 }, () =>
      record('fail open: GET /balances', injectSender(s.limited), { method: 'GET', url: '/balances', authorization: carol.authorization }))
  ])
}

function assertDuringFault (t: Tap, seen: Seen[], newName: string) {
  const of = (label: string) => seen.filter((x) => x.label === label)
  t.same(seen.filter((x) => x.ms >= READ_BOUND_MS && !x.label.startsWith('GET /health')).map((x) => `${x.label} ${x.ms} ms`), [],
    `every request is answered in < ${READ_BOUND_MS} ms`)
  t.same(of('PATCH /users/:id').map((x) => x.status), [200], 'a profile update still commits')
  t.same([...new Set(of('GET /users/:id').map((x) => `${x.status} ${x.name}`))], [`200 ${newName}`], 'GET /users/:id: 200 from PostgreSQL, current data')
  t.same([...new Set(of('GET /feed').map((x) => x.status))], [200], 'GET /feed: 200 from PostgreSQL')
  t.same(of('POST /transactions').map((x) => x.status), [201], 'a deposit is still accepted (the limiter fails open)')
  const limited = of('fail open: GET /balances')
  t.ok(limited.length > LIMITED_CAPACITY && limited.every((x) => x.status === 200), `fail open: ${limited.length} requests served, beyond the capacity of ${LIMITED_CAPACITY}`)
  t.same(of('POST /auth/token').map((x) => x.status), [200], 'a login still works (the login throttle fails open)')
  const closedLogin = of('fail closed: POST /auth/token')[0]
  t.ok(closedLogin?.status === 503 && closedLogin.retryAfter === true, `fail closed: a login is 503 with Retry-After (${closedLogin?.status})`)
  const closed = of('fail closed: GET /balances')[0]
  t.equal(closed?.status, 503, 'fail closed: 503')
  t.ok(closed?.problem === true && closed.retryAfter === true, 'fail closed: problem+json with Retry-After')
  const ready = of('GET /health/ready')[0]
  t.equal(ready?.status, 503, 'ready: 503')
  t.same(ready?.checks, { postgres: 'ok', redis: 'down' }, 'ready names redis as down, postgres ok')
  t.ok((ready?.ms ?? Infinity) < READINESS_BOUND_MS, `ready turns 503 within ${READINESS_BOUND_MS} ms (${ready?.ms} ms)`)
}

/** After the fault: ready again, cache hits again (with the new name), limiter enforcing, fail-closed app serving. */
async function assertRecovered (t: Tap, s: Setup, newName: string) {
  const recoveryMs = await waitFor(async () => (await s.app.inject({ method: 'GET', url: '/health/ready' })).statusCode === 200, 10_000, 100)
  t.ok(recoveryMs >= 0 && recoveryMs < 5000, `ready: 200 again without an app restart (${recoveryMs} ms)`)
  const open = injectSender(s.app)
  const read = () => open({ method: 'GET', url: `/users/${s.alice.id}`, authorization: s.bob.authorization })
  const hits = await cacheCount(s.app, 'user', 'hit')
  const names = [(await read()).body, (await read()).body].map((b) => (b as { name?: string }).name)
  t.same(names, [newName, newName], 'the profile shows the new name (no stale cache entry survived)')
  t.ok(await cacheCount(s.app, 'user', 'hit') > hits, 'the user cache hits again')
  const feedHits = await cacheCount(s.app, 'feed', 'hit')
  await open({ method: 'GET', url: '/feed', authorization: s.bob.authorization })
  await open({ method: 'GET', url: '/feed', authorization: s.bob.authorization })
  t.ok(await cacheCount(s.app, 'feed', 'hit') > feedHits, 'the feed cache hits again')
  const closedMs = await waitFor(async () => (await s.closed.inject({
    method: 'GET', url: '/balances', headers: { authorization: s.bob.authorization }
  })).statusCode === 200, 5000, 100)
  t.ok(closedMs >= 0, 'the fail-closed app serves again')
  // The bucket may hold fewer tokens than capacity (commands sent during a pause run once Redis resumes).
  const statuses: number[] = []
  for (let i = 0; i < LIMITED_CAPACITY + 2 && !statuses.includes(429); i++) {
    statuses.push((await s.limited.inject({ method: 'GET', url: '/balances', headers: { authorization: s.carol.authorization } })).statusCode)
  }
  t.ok(statuses.includes(429), `the rate limiter enforces its limit again (${statuses.join(' ')})`)
  return recoveryMs
}

/** The deposit accepted during the fault is in the ledger exactly once, and the ledger balances. */
async function assertLedgerIntact (t: Tap, s: Setup) {
  const [row] = await s.sql<Array<{ n: number, balance: string | null }>>`
    select (select count(*)::int from idempotency_keys where principal_id = ${s.funder.id} and key = ${`redis-fault-${s.bob.id}`}) as n,
           (select balance::text from balances where user_id = ${s.bob.id} and currency = 'USD') as balance`
  t.same(row, { n: 1, balance: '100' }, 'the deposit accepted during the fault is stored once')
  assertLedger(t, await checkLedger(s.sql, [s.alice.id, s.bob.id, s.carol.id]))
  await assertReconciled(t, s.sql)
  return row?.n === 1 && row.balance === '100' ? 0 : 1
}

function figures (fault: string, seen: Seen[], extra: Record<string, unknown>) {
  const statuses: Record<string, number> = {}
  for (const x of seen) statuses[x.status] = (statuses[x.status] ?? 0) + 1
  return JSON.stringify({
    fault,
    requestsDuringFault: seen.length,
    statuses,
    // The only error answers are the ones asked for: readiness and the fail-closed limiter.
    errorsDuringFault: seen.filter((x) => x.status >= 400).map((x) => `${x.label} ${x.status}`),
    maxLatencyMs: Math.max(...seen.map((x) => x.ms)),
    ...extra
  })
}

/** Warms both caches so a hit is possible before the fault. */
async function warm (s: Setup) {
  const open = injectSender(s.app)
  for (let i = 0; i < 2; i++) {
    await open({ method: 'GET', url: `/users/${s.alice.id}`, authorization: s.bob.authorization })
    await open({ method: 'GET', url: '/feed', authorization: s.bob.authorization })
  }
}

t.test('Redis stopped: reads from PostgreSQL, limiter open (closed where configured), full recovery without restart', { skip }, async (t) => {
  const s = await setup(t)
  await warm(s)
  const seen: Seen[] = []
  let stopMs = -1
  try {
    stopMs = await controlService('stop', 'redis')
    await duringFault(s, seen, 'Alice Stopped')
  } finally {
    await controlService('start', 'redis')
  }
  assertDuringFault(t, seen, 'Alice Stopped')
  const recoveryMs = await assertRecovered(t, s, 'Alice Stopped')
  const rowsLost = await assertLedgerIntact(t, s)
  for (const app of [s.app, s.closed, s.limited]) await assertTelemetrySettled(t, app)
  t.comment(figures('redis stopped', seen, { rowsLost, stopMs, recoveryMs }))
})

t.test('Redis hung (SIGSTOP): commands time out, requests are still answered in bounded time, recovery on SIGCONT', { skip }, async (t) => {
  const s = await setup(t)
  await warm(s)
  const seen: Seen[] = []
  const pid = freeze('redis')
  try {
    await duringFault(s, seen, 'Alice Frozen')
  } finally {
    thaw(pid)
  }
  assertDuringFault(t, seen, 'Alice Frozen')
  const recoveryMs = await assertRecovered(t, s, 'Alice Frozen')
  const rowsLost = await assertLedgerIntact(t, s)
  for (const app of [s.app, s.closed, s.limited]) await assertTelemetrySettled(t, app)
  t.comment(figures('redis frozen (SIGSTOP)', seen, { rowsLost, recoveryMs }))
})

t.test('Redis paused (CLIENT PAUSE ALL): same bounded answers, recovery when the pause ends', { skip }, async (t) => {
  const s = await setup(t)
  await warm(s)
  const seen: Seen[] = []
  const PAUSE_MS = 4000
  const admin = new Redis(process.env.REDIS_URL ?? '', { lazyConnect: true, maxRetriesPerRequest: 0 })
  await admin.connect()
  // The pause ends by itself after PAUSE_MS: nothing to undo, even if this test dies.
  const pausedAt = performance.now()
  await admin.call('CLIENT', 'PAUSE', String(PAUSE_MS), 'ALL')
  admin.disconnect()
  await duringFault(s, seen, 'Alice Paused')
  const faultMs = Math.round(performance.now() - pausedAt)
  t.ok(faultMs < PAUSE_MS, `every request was answered while Redis was still paused (${faultMs} ms)`)
  await sleep(Math.max(0, PAUSE_MS - faultMs))
  assertDuringFault(t, seen, 'Alice Paused')
  const recoveryMs = await assertRecovered(t, s, 'Alice Paused')
  const rowsLost = await assertLedgerIntact(t, s)
  for (const app of [s.app, s.closed, s.limited]) await assertTelemetrySettled(t, app)
  t.comment(figures('redis paused (CLIENT PAUSE ALL)', seen, { rowsLost, pauseMs: PAUSE_MS, recoveryMs }))
})
