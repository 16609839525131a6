// Shared machinery of the fault tests (test/faults/*.test.ts): controlling the real processes of the local
// stack, a bounded load generator that records what every client saw, and the ledger checks run after a fault.
// Every target is on 127.0.0.1; every loop is bounded in count and time.
import { spawn, type ChildProcess } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import type postgres from 'postgres'
import type { Test } from 'tap'
import type { App } from '../../app.ts'
import { API_NODE_FLAGS } from '../../plugins/http/config.ts'
import { controlService, servicePid, type StackService } from '../../scripts/local-stack.ts'
import { ledgerInvariants, reconcileLedger, type ReconcileCheck } from '../../scripts/ops/reconcile.ts'
import { freePort } from '../free-port.ts'
import { captureProcessEvent } from '../process-events.ts'
import { SUITE_LIMITS } from '../suite-limits.ts'
import { createClient, openSpans, type TestClient, type TestUser } from '../helper.ts'

export { sleep }

/**
 * Resolves with `undefined` after `ms`, without keeping the process alive: for racing a bounded wait against
 * an event, so that a won race leaves no timer that tap would sit out at the end of the file.
 */
export const deadline = (ms: number): Promise<undefined> => sleep(ms, undefined, { ref: false })

// Stopping, starting and finding the stack's processes is scripts/local-stack.ts's business (controlService,
// servicePid): it acts on the stack scripts/test.ts brought up for this run, and starts a service this process
// stopped again on the way out if a test dies in between.
export type Service = StackService

// A test that dies while Redis is SIGSTOPped must not leave it frozen for the next file or the next engineer.
const frozen = new Set<number>()
process.on('exit', () => {
  for (const pid of frozen) {
    try { process.kill(pid, 'SIGCONT') } catch {}
  }
})

/** SIGSTOP a service: it keeps its sockets open but answers nothing. Always pair with thaw() in a finally. */
export function freeze (service: Service): number {
  const pid = servicePid(service)
  frozen.add(pid)
  process.kill(pid, 'SIGSTOP')
  return pid
}

export function thaw (pid: number) {
  try { process.kill(pid, 'SIGCONT') } finally { frozen.delete(pid) }
}

/** Polls `probe` until it returns true; resolves with the elapsed ms, or -1 once `timeoutMs` has passed. */
export async function waitFor (probe: () => Promise<boolean>, timeoutMs: number, intervalMs = 100): Promise<number> {
  const started = performance.now()
  while (performance.now() - started < timeoutMs) {
    try {
      if (await probe()) return Math.round(performance.now() - started)
    } catch {}
    await sleep(intervalMs)
  }
  return -1
}

/**
 * Waits (bounded) until the app's readiness probe passes: a test starts from a healthy stack even when an earlier
 * file's outage is still clearing (PgBouncer refuses logins for a moment after PostgreSQL comes back).
 */
export async function untilReady (app: App, timeoutMs = 15_000): Promise<number> {
  const ms = await waitFor(async () => (await app.inject({ method: 'GET', url: '/health/ready' })).statusCode === 200, timeoutMs, 200)
  if (ms < 0) throw new Error(`the stack was not ready within ${timeoutMs} ms`)
  return ms
}

const projectRoot = fileURLToPath(new URL('../../', import.meta.url))

export interface ServerProcess {
  child: ChildProcess
  baseUrl: string
  /** Resolves when the process exits. */
  exited: Promise<{ code: number | null, signal: NodeJS.Signals | null }>
  running: () => boolean
  /** What the process wrote (stdout and stderr; the first and last 20 kB), for failure messages. */
  output: () => string
  /** SIGKILLs the process if it still runs; for teardown. */
  kill: () => Promise<void>
  /** How long it took from spawn to a first answer on /health/live. */
  startupMs: number
}

/**
 * Starts the real server (server.ts, as in production: close-with-grace, telemetry) on a free port of 127.0.0.1
 * with the test database and Redis from process.env, and waits (bounded) until /health/live answers.
 */
export async function startServer (env: Record<string, string> = {}): Promise<ServerProcess> {
  const port = await freePort()
  const spawnedAt = performance.now()
  const child = spawn(process.execPath, [...API_NODE_FLAGS, 'server.ts'], {
    cwd: projectRoot,
    env: {
      ...process.env,
      HOST: '127.0.0.1',
      PORT: String(port),
      LOG_LEVEL: 'warn',
      // As in helper.ts's testConfig(): the suite's Redis buckets, and a busy machine must not turn the fault under
      // test into load shedding.
      ...SUITE_LIMITS,
      ...env
    },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  // The first and the last 20 kB: the first error line and how the process ended both survive a noisy log.
  let head = ''
  let tail = ''
  const keep = (chunk: Buffer) => {
    const text = chunk.toString()
    if (head.length < 20_000) head += text.slice(0, 20_000 - head.length)
    tail = (tail + text).slice(-20_000)
  }
  child.stdout?.on('data', keep)
  child.stderr?.on('data', keep)
  let done = false
  const exited = new Promise<{ code: number | null, signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => { done = true; resolve({ code, signal }) })
  })
  const server: ServerProcess = {
    child,
    baseUrl: `http://127.0.0.1:${port}`,
    exited,
    running: () => !done,
    output: () => head.length < 20_000 ? head : `${head}\n[...]\n${tail}`,
    kill: async () => {
      if (!done) child.kill('SIGKILL')
      await exited
    },
    startupMs: -1
  }
  const ms = await waitFor(async () => {
    if (done) return true // stop waiting; reported below
    return (await fetch(`${server.baseUrl}/health/live`, { signal: AbortSignal.timeout(1000) })).status === 200
  }, 20_000, 100)
  if (ms < 0 || done) {
    await server.kill()
    throw new Error(`server.ts did not come up on port ${port}:\n${server.output()}`)
  }
  server.startupMs = Math.round(performance.now() - spawnedAt)
  return server
}

export interface WorkerProcess {
  pid: number
  output: () => string
  exited: Promise<{ code: number | null, signal: NodeJS.Signals | null }>
  kill: (signal?: NodeJS.Signals) => Promise<{ code: number | null, signal: NodeJS.Signals | null }>
}

/**
 * The last `limit` characters a process wrote, stdout and stderr in arrival order. Adding a chunk costs the chunk,
 * not the text kept: re-slicing the whole kept string costs ~3.5 ms a chunk once it holds 5 MB, enough for a worker
 * logging a line per failed attempt to keep the test process busy while the worker's log writes wait on the pipe.
 */
function outputTail (limit: number) {
  const chunks: string[] = []
  let length = 0
  return {
    add: (chunk: Buffer | string) => {
      const text = chunk.toString()
      chunks.push(text)
      length += text.length
      while (chunks.length > 1 && length - chunks[0]!.length >= limit) length -= chunks.shift()!.length
    },
    text: () => {
      const all = chunks.join('')
      return all.length > limit ? all.slice(-limit) : all
    }
  }
}

/** `node worker.ts` against the test stack; resolves once it logged that it started. SIGKILLed at test end. */
export async function startWorker (t: Test, env: Record<string, string> = {}): Promise<WorkerProcess> {
  const child = spawn(process.execPath, ['worker.ts'], {
    cwd: projectRoot,
    env: { ...process.env, LOG_LEVEL: 'info', WEBHOOK_ALLOW_PRIVATE_TARGETS: 'true', JOB_RETRY_BASE_MS: '200', JOB_RETRY_MAX_DELAY_S: '1', ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  const output = outputTail(5_000_000)
  child.stdout.on('data', output.add)
  child.stderr.on('data', output.add)
  let done = false
  const exited = new Promise<{ code: number | null, signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => { done = true; resolve({ code, signal }) })
  })
  const worker: WorkerProcess = {
    pid: child.pid ?? -1,
    output: output.text,
    exited,
    kill: async (signal = 'SIGKILL') => {
      if (!done) child.kill(signal)
      return await exited
    }
  }
  t.teardown(() => worker.kill())
  const ms = await waitFor(async () => done || output.text().includes('worker started'), 20_000, 50)
  if (ms < 0 || done) throw new Error(`worker.ts did not start:\n${output.text()}`)
  return worker
}

// ---------------------------------------------------------------------------------------------------------------
// Clients: one request shape for app.inject and for fetch against a real server
// ---------------------------------------------------------------------------------------------------------------

export interface Request {
  method: 'GET' | 'POST' | 'PATCH'
  url: string
  authorization?: string
  idempotencyKey?: string
  body?: unknown
}

export interface Response {
  /** 0 when no HTTP response arrived (connection refused or reset, client timeout). */
  status: number
  headers: Record<string, string | undefined>
  body: unknown
  error?: string
  ms: number
}

export type Send = (request: Request) => Promise<Response>

const headersOf = (request: Request): Record<string, string> => ({
  ...(request.authorization !== undefined ? { authorization: request.authorization } : {}),
  ...(request.idempotencyKey !== undefined ? { 'idempotency-key': request.idempotencyKey } : {}),
  ...(request.body !== undefined ? { 'content-type': 'application/json' } : {})
})

/** Requests through app.inject: the whole Fastify stack, without sockets. */
export const injectSender = (app: App): Send => async (request) => {
  const started = performance.now()
  const response = await app.inject({
    method: request.method,
    url: request.url,
    headers: headersOf(request),
    ...(request.body !== undefined ? { payload: JSON.stringify(request.body) } : {})
  })
  let body: unknown
  try { body = response.json() } catch { body = response.body }
  const headers: Record<string, string | undefined> = {}
  for (const [name, value] of Object.entries(response.headers)) headers[name] = value === undefined ? undefined : String(value)
  return { status: response.statusCode, headers, body, ms: performance.now() - started }
}

/** How soon readiness must turn 503 after a dependency goes away: a background round a second, each probe < 1 s. */
export const READINESS_BOUND_MS = 2500

/**
 * A sender that repeats a request (GET /health/ready) every 50 ms until its answer is not 200 or `boundMs` has
 * passed, and returns the last answer with `ms` the time until then: readiness answers from a result refreshed in
 * the background, so an outage shows on the next round rather than on the next call.
 */
export const untilNotOk = (send: Send, boundMs = READINESS_BOUND_MS): Send => async (request) => {
  const started = performance.now()
  let response = await send(request)
  while (response.status === 200 && performance.now() - started < boundMs) {
    await sleep(50)
    response = await send(request)
  }
  return { ...response, ms: performance.now() - started }
}

/** Requests over HTTP to a real server on 127.0.0.1, each bounded by `timeoutMs`. */
export const fetchSender = (baseUrl: string, timeoutMs = 15_000): Send => async (request) => {
  const started = performance.now()
  try {
    const response = await fetch(new URL(request.url, baseUrl), {
      method: request.method,
      headers: headersOf(request),
      body: request.body !== undefined ? JSON.stringify(request.body) : undefined,
      signal: AbortSignal.timeout(timeoutMs)
    })
    const text = await response.text()
    let body: unknown
    try { body = JSON.parse(text) } catch { body = text }
    return { status: response.status, headers: Object.fromEntries(response.headers), body, ms: performance.now() - started }
  } catch (error) {
    const cause = (error as { cause?: { code?: string } }).cause
    return { status: 0, headers: {}, body: undefined, error: cause?.code ?? (error as Error).name, ms: performance.now() - started }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Money requests with their client-side record, and a bounded mixed load
// ---------------------------------------------------------------------------------------------------------------

export type Kind = 'deposit' | 'withdrawal' | 'transfer'

/** One Idempotency-Key as the client saw it: every attempt's status, and the transaction id it was given. */
export interface PostRecord {
  userId: string
  /** Who posted and owns the key: the user for a transfer, the funding client for a deposit or withdrawal. */
  principalId: string
  key: string
  kind: Kind
  amount: number
  toUserId?: string
  statuses: number[]
  /** The transaction id from the first 201. */
  id?: string
  /** A later attempt with the same key answered 201 with a different id (a second transaction). */
  conflictingId?: string
  /** Some 201 for this key carried Idempotent-Replayed. */
  replayed: boolean
  /** The first 201 this key ever got was a replay: an earlier attempt had committed but its client saw an error. */
  committedDespiteError: boolean
}

export interface Sample {
  phase: string
  route: string
  status: number
  ms: number
  /** performance.now() when the answer (or the error) arrived. */
  endedAt: number
  error?: string
  /** For a 503: whether it carried Retry-After. */
  retryAfter?: boolean
  /** For an error status: whether the body was application/problem+json, as the contract requires. */
  problem?: boolean
}

export const CURRENCY = 'USD'

/**
 * Sends ledger writes and reads for a fixed set of users and records what each client saw. Users transfer; the
 * funder (a service client) deposits and withdraws for them, with the record's key as its settlement reference.
 */
export class LedgerClient {
  readonly posts = new Map<string, PostRecord>()
  readonly samples: Sample[] = []
  phase = 'before'
  private readonly send: Send
  readonly users: TestUser[]
  readonly funder: TestClient

  constructor (send: Send, users: TestUser[], funder: TestClient) {
    this.send = send
    this.users = users
    this.funder = funder
  }

  async request (route: string, request: Request): Promise<Response> {
    const phase = this.phase
    const response = await this.send(request)
    this.samples.push({
      phase,
      route,
      status: response.status,
      ms: response.ms,
      endedAt: performance.now(),
      ...(response.error !== undefined ? { error: response.error } : {}),
      ...(response.status === 503 ? { retryAfter: response.headers['retry-after'] !== undefined } : {}),
      ...(response.status >= 400 ? { problem: /^application\/problem\+json/.test(response.headers['content-type'] ?? '') } : {})
    })
    return response
  }

  /** Sends (or resends) the POST for a record, keeping its key and body. */
  async attempt (record: PostRecord): Promise<Response> {
    const user = this.users.find((u) => u.id === record.userId)
    if (user === undefined) throw new Error('unknown user')
    const body = record.kind === 'transfer'
      ? { kind: record.kind, amount: record.amount, currency: CURRENCY, toUserId: record.toUserId }
      : { kind: record.kind, userId: record.userId, amount: record.amount, currency: CURRENCY, reference: record.key }
    const authorization = record.kind === 'transfer' ? user.authorization : this.funder.authorization
    const response = await this.request('POST /transactions', {
      method: 'POST', url: '/transactions', authorization, idempotencyKey: record.key, body
    })
    record.statuses.push(response.status)
    if (response.status === 201) {
      const id = (response.body as { id?: unknown }).id
      const replayed = response.headers['idempotent-replayed'] === 'true'
      if (typeof id === 'string') {
        if (record.id === undefined) {
          record.id = id
          record.committedDespiteError = replayed
        } else if (record.id !== id) record.conflictingId = id
      }
      if (replayed) record.replayed = true
    }
    return response
  }

  async post (user: TestUser, kind: Kind, amount: number, toUserId?: string): Promise<Response> {
    const principalId = kind === 'transfer' ? user.id : this.funder.id
    const record: PostRecord = { userId: user.id, principalId, key: `fault-${randomUUID()}`, kind, amount, statuses: [], replayed: false, committedDespiteError: false }
    if (toUserId !== undefined) record.toUserId = toUserId
    this.posts.set(record.key, record)
    return await this.attempt(record)
  }

  /** One step of a mixed workload: writes of every kind and the main reads, in a fixed rotation. */
  async step (i: number): Promise<Response> {
    const n = this.users.length
    const user = this.users[i % n] as TestUser
    const other = this.users[(i + 1) % n] as TestUser
    const amount = 1 + ((i * 7919) % 5000)
    switch (i % 8) {
      case 0: case 4: return await this.post(user, 'deposit', amount + 1000)
      case 1: return await this.request('GET /balances', { method: 'GET', url: '/balances', authorization: user.authorization })
      case 2: return await this.post(user, 'withdrawal', 1 + (amount % 300))
      case 3: return await this.request('GET /users/:id', { method: 'GET', url: `/users/${other.id}`, authorization: user.authorization })
      case 5: return await this.request('GET /transactions', { method: 'GET', url: '/transactions?limit=5', authorization: user.authorization })
      case 6: return await this.post(user, 'transfer', 1 + (amount % 200), other.id)
      default: return await this.request('GET /feed', { method: 'GET', url: '/feed', authorization: user.authorization })
    }
  }

  /**
   * Runs `workers` concurrent loops of step() until stop() is called, `maxRequests` were sent, `maxMs` passed or
   * `while` returns false, whichever comes first. `gapMs` between a worker's requests keeps the rate bounded even when every answer
   * is an instant 503.
   */
  startLoad (options: { workers: number, maxRequests: number, maxMs: number, gapMs: number, while?: () => boolean }): { stop: () => Promise<void> } {
    const state = { stopped: false, sent: 0 }
    const endAt = performance.now() + options.maxMs
    const more = options.while ?? (() => true)
    const worker = async () => {
      while (!state.stopped && state.sent < options.maxRequests && performance.now() < endAt && more()) {
        await this.step(state.sent++)
        await sleep(options.gapMs)
      }
    }
    const running = Promise.all(Array.from({ length: options.workers }, worker))
    return { stop: async () => { state.stopped = true; await running } }
  }

  /**
   * Resends, with the same key and body, every POST that has no final answer yet (no 201, 422 or 404), until it
   * gets one; bounded by `attempts` per key. Returns how many keys were retried.
   */
  async retryUnanswered (attempts = 20, delayMs = 250): Promise<number> {
    const pending = [...this.posts.values()].filter((record) => !record.statuses.some(isFinal))
    for (const record of pending) {
      for (let attempt = 0; attempt < attempts; attempt++) {
        const response = await this.attempt(record)
        if (isFinal(response.status)) break
        await sleep(delayMs)
      }
    }
    return pending.length
  }

  /** Status counts, overall and per phase, and latency figures, for the README. */
  figures () {
    const byPhase: Record<string, { requests: number, statuses: Record<string, number>, maxMs: number }> = {}
    for (const sample of this.samples) {
      const phase = byPhase[sample.phase] ??= { requests: 0, statuses: {}, maxMs: 0 }
      phase.requests++
      const label = sample.status === 0 ? `network:${sample.error ?? 'error'}` : String(sample.status)
      phase.statuses[label] = (phase.statuses[label] ?? 0) + 1
      phase.maxMs = Math.max(phase.maxMs, Math.round(sample.ms))
    }
    const posts = [...this.posts.values()]
    return {
      requests: this.samples.length,
      maxLatencyMs: Math.round(Math.max(0, ...this.samples.map((s) => s.ms))),
      phases: byPhase,
      writes: posts.length,
      writesApplied: posts.filter((p) => p.id !== undefined).length,
      writesRetried: posts.filter((p) => p.statuses.length > 1).length,
      // The first answer was an error but the write had committed; the retry got the original back.
      writesCommittedDespiteError: posts.filter((p) => p.committedDespiteError).length
    }
  }
}

const isFinal = (status: number) => status === 201 || status === 422 || status === 404

// ---------------------------------------------------------------------------------------------------------------
// Ledger checks
// ---------------------------------------------------------------------------------------------------------------

type Sql = postgres.Sql

export interface LedgerCheck {
  /** Transactions of these users (a figure for the run's summary). */
  transactions: number
  /** ledger_invariants() (sql/functions/ledger_invariants.sql) over these users, with its per-user invariants. */
  invariants: ReconcileCheck[]
}

/**
 * The double-entry invariants for a set of users who trade only among themselves, straight from PostgreSQL's one
 * definition of them (as the owner: the per-user invariants read idempotency_keys): every balance equals the sum of
 * that user's entries and of the transactions that touch them; together the balances equal deposits minus
 * withdrawals and no transfer leaves the set; one idempotency key per transaction, owned by whoever posted (the
 * client for deposits and withdrawals, the sender for transfers); every deposit and withdrawal names its client and
 * a reference, and no client's reference is used twice.
 */
export async function checkLedger (sql: Sql, userIds: string[]): Promise<LedgerCheck> {
  const [row] = await sql<Array<{ n: number }>>`
    select count(*)::int as n from transactions where coalesce(from_user_id, to_user_id) = any(${userIds}::uuid[])`
  return { transactions: row?.n ?? 0, invariants: await ledgerInvariants(sql, userIds) }
}

/** tap's per-assertion options. */
export interface Extra { todo?: string | boolean }
type MessageExtra = [] | [string] | [string, Extra]

interface Assert {
  equal (found: unknown, wanted: unknown, ...message: MessageExtra): unknown
  same (found: unknown, wanted: unknown, ...message: MessageExtra): unknown
}

/** Asserts every invariant of checkLedger(), each with its offending rows (none). */
export function assertLedger (t: Assert, check: LedgerCheck) {
  t.equal(check.invariants.length, 7, 'ledger: the four ledger invariants and the three of a closed set of users were checked')
  for (const invariant of check.invariants) t.same(invariant.offending, [], `ledger: ${invariant.name} (${invariant.checked})`)
}

/** `npm run reconcile`'s checks over the whole ledger (the fault phase has a database of its own). */
export async function assertReconciled (t: Assert, sql: Sql) {
  for (const check of await reconcileLedger(sql)) t.same(check.offending, [], `reconcile: ${check.name} (${check.checked})`)
}

export interface Reconciliation {
  /** Writes the client saw succeed (201). */
  acknowledged: number
  /** Acknowledged writes missing from the database, or stored with another id, kind or amount. */
  rowsLost: number
  /** Keys whose retries were answered with a second, different transaction. */
  duplicated: number
  /** Transactions in the database for keys the client never saw succeed. */
  committedUnacknowledged: number
  /** Per user: the balance the client's 201s add up to versus the stored one (only mismatches). */
  balanceMismatches: Array<{ userId: string, expected: number, stored: number }>
}

/** Compares what clients were told (201s with ids) with what PostgreSQL holds for the same keys. */
export async function reconcile (sql: Sql, records: Iterable<PostRecord>, userIds: string[]): Promise<Reconciliation> {
  const rows = await sql<Array<{ principal_id: string, key: string, id: string, kind: string, amount: string, from_user_id: string | null, to_user_id: string | null }>>`
    select k.principal_id, k.key, t.id, t.kind, t.amount::text, t.from_user_id, t.to_user_id
      from idempotency_keys k join transactions t on t.id = k.transaction_id
     where coalesce(t.from_user_id, t.to_user_id) = any(${userIds}::uuid[])`
  const stored = new Map(rows.map((row) => [`${row.principal_id}/${row.key}`, row]))
  const expected = new Map(userIds.map((id) => [id, 0]))
  const add = (userId: string | null | undefined, delta: number) => {
    if (userId !== null && userId !== undefined && expected.has(userId)) expected.set(userId, (expected.get(userId) ?? 0) + delta)
  }
  let acknowledged = 0
  let rowsLost = 0
  let duplicated = 0
  let committedUnacknowledged = 0
  for (const record of records) {
    const row = stored.get(`${record.principalId}/${record.key}`)
    if (record.conflictingId !== undefined) duplicated++
    if (record.id === undefined) {
      if (row !== undefined) committedUnacknowledged++
      continue
    }
    acknowledged++
    if (row === undefined || row.id !== record.id || row.kind !== record.kind || Number(row.amount) !== record.amount) {
      rowsLost++
      continue
    }
    const from = record.kind === 'deposit' ? undefined : record.userId
    const to = record.kind === 'deposit' ? record.userId : record.toUserId
    add(from, -record.amount)
    add(to, record.amount)
  }
  const balances = await sql<Array<{ user_id: string, balance: string }>>`
    select user_id, balance::text from balances where user_id = any(${userIds}::uuid[]) and currency = ${CURRENCY}`
  const storedBalance = new Map(balances.map((row) => [row.user_id, Number(row.balance)]))
  const balanceMismatches = [...expected]
    .map(([userId, value]) => ({ userId, expected: value, stored: storedBalance.get(userId) ?? 0 }))
    .filter((m) => m.expected !== m.stored)
  return { acknowledged, rowsLost, duplicated, committedUnacknowledged, balanceMismatches }
}

// ---------------------------------------------------------------------------------------------------------------
// The outage scenario shared by the PgBouncer and PostgreSQL tests
// ---------------------------------------------------------------------------------------------------------------

/** The assertions the scenario uses; tap's Test satisfies it. */
export interface TestLike extends Assert {
  ok (value: unknown, ...message: MessageExtra): unknown
  comment (...args: unknown[]): unknown
}

/** A short, log-safe description of a rejection reason. */
export const describeReason = (reason: unknown) => {
  const error = reason as { code?: unknown, message?: unknown } | null
  return `${String(error?.code ?? '')} ${String(error?.message ?? reason)}`.trim()
}

export interface OutageOptions {
  fault: string
  service: 'pgbouncer' | 'postgres'
  /** How long the service stays down while load runs. */
  outageMs: number
  /** No request may take longer than this, fault or not. */
  latencyBoundMs: number
  app: App
  users: TestUser[]
  sql: Sql
}

const ALLOWED_STATUSES = new Set([200, 201, 422, 503])

/**
 * Runs a bounded mixed load through app.inject, stops `service` in the middle of it, starts it again, and checks
 * what a client needs: answers stay fast (503 with Retry-After, never a hang or a 500), the API recovers by
 * itself, every write retried with its Idempotency-Key lands exactly once, and the ledger still balances.
 */
export async function outageUnderLoad (t: TestLike, options: OutageOptions) {
  const unhandled = captureProcessEvent('unhandledRejection')
  try {
    return await runOutage(t, options, unhandled.reasons)
  } finally {
    unhandled.restore()
  }
}

async function runOutage (t: TestLike, options: OutageOptions, unhandled: unknown[]) {
  const { app, users, sql, service } = options
  const client = new LedgerClient(injectSender(app), users, await createClient(app))
  // Funds first, so most withdrawals and transfers of the load succeed.
  for (const user of users) {
    const funded = await client.post(user, 'deposit', 1_000_000)
    t.equal(funded.status, 201, 'initial deposit')
  }
  const ready = (label: string) => client.request(label, { method: 'GET', url: '/health/ready' })
  const readySender = untilNotOk(injectSender(app))
  // Every change of the background readiness result, in ms since the load started: the evidence when a check fails.
  const readinessChanges: Array<{ ms: number, postgres: string, redis: string }> = []
  const loadStarted = performance.now()
  app.readiness.onChange((result) => {
    readinessChanges.push({ ms: Math.round(performance.now() - loadStarted), postgres: result.checks.postgres, redis: result.checks.redis })
  })
  const load = client.startLoad({ workers: 8, maxRequests: 6000, maxMs: 45_000, gapMs: 10 })
  let readyDuringOutage: Response | undefined
  const marks = { stop: -1, start: -1, recovered: -1 }
  let stopMs = -1
  let startMs = -1
  let recoveryMs = -1
  try {
    try {
      await sleep(700)
      client.phase = 'outage'
      marks.stop = Math.round(performance.now() - loadStarted)
      stopMs = await controlService('stop', service)
      // Sent once the process is gone, so it reflects the outage itself.
      ;[readyDuringOutage] = await Promise.all([readySender({ method: 'GET', url: '/health/ready' }), sleep(options.outageMs)])
    } finally {
      marks.start = Math.round(performance.now() - loadStarted)
      startMs = await controlService('start', service)
    }
    client.phase = 'recovery'
    const user = users[0] as TestUser
    recoveryMs = await waitFor(async () => (await client.request('GET /balances', {
      method: 'GET', url: '/balances', authorization: user.authorization
    })).status === 200, 25_000, 100)
    client.phase = 'after'
    marks.recovered = Math.round(performance.now() - loadStarted)
    await sleep(1000)
  } finally {
    await load.stop()
  }
  // Readiness comes from a background round once a second, so it turns 200 on the first round after recovery.
  const readyAfterMs = await waitFor(async () => (await ready('GET /health/ready')).status === 200, READINESS_BOUND_MS, 50)

  // Every write that got no final answer is resent with the same key and body until it gets one.
  const retried = await client.retryUnanswered()
  // Writes first answered with an error and then applied: once more, they must replay the same transaction.
  const recovered = [...client.posts.values()].filter((p) => p.id !== undefined && p.statuses[0] !== 201).slice(0, 50)
  let replayedSame = 0
  for (const record of recovered) {
    const response = await client.attempt(record)
    if (response.status === 201 && response.headers['idempotent-replayed'] === 'true' &&
      (response.body as { id?: unknown }).id === record.id) replayedSame++
  }

  const userIds = users.map((u) => u.id)
  const reconciliation = await reconcile(sql, client.posts.values(), userIds)
  const ledger = await checkLedger(sql, userIds)
  const figures = client.figures()
  const outage = figures.phases.outage ?? { requests: 0, statuses: {}, maxMs: 0 }
  const samples = client.samples
  t.comment(JSON.stringify({
    fault: options.fault,
    outageMs: options.outageMs,
    stopMs,
    startMs,
    recoveryMs,
    requestsDuringFault: outage.requests,
    errorsDuringFaultByStatus: Object.fromEntries(Object.entries(outage.statuses).filter(([status]) => !status.startsWith('2'))),
    ...figures,
    retriedKeys: retried,
    rowsLost: reconciliation.rowsLost,
    duplicated: reconciliation.duplicated,
    committedUnacknowledged: reconciliation.committedUnacknowledged,
    ledgerTransactions: ledger.transactions,
    unhandledRejections: unhandled.length,
    marks,
    readinessChanges,
    readyAfterMs
  }))

  const unexpected = samples.filter((s) => !ALLOWED_STATUSES.has(s.status))
  t.same(unexpected.slice(0, 5), [], 'every answer is 200, 201, 422 or 503: never a 500, never a dropped request')
  t.equal(samples.filter((s) => s.status === 503 && s.retryAfter !== true && !s.route.startsWith('GET /health')).length, 0,
    'every 503 of an API route carries Retry-After')
  t.equal(samples.filter((s) => s.status >= 400 && s.problem !== true && !s.route.startsWith('GET /health')).length, 0,
    'every error of an API route is application/problem+json')
  const slow = samples.filter((s) => s.ms >= options.latencyBoundMs)
  t.same(slow.slice(0, 5), [], `every request answered in < ${options.latencyBoundMs} ms (no hang)`)
  t.ok((outage.statuses['503'] ?? 0) > 0, 'the outage was seen by clients as 503s')
  t.equal(readyDuringOutage?.status, 503, `ready: 503 during the outage, within ${READINESS_BOUND_MS} ms of it (${Math.round(readyDuringOutage?.ms ?? -1)} ms)`)
  t.equal((readyDuringOutage?.body as { checks?: { postgres?: string } } | undefined)?.checks?.postgres, 'down', 'ready names postgres as down')
  t.ok(recoveryMs >= 0, `recovered by itself, without an app restart (${recoveryMs} ms after the restart)`)
  t.ok(recoveryMs >= 0 && recoveryMs < 3000, `recovered within 3 s of the restart (${recoveryMs} ms)`)
  t.same(unhandled.map(describeReason).slice(0, 3), [], 'no unhandled rejection (server.ts would exit on it)')
  t.ok(samples.some((s) => s.phase === 'after' && s.status === 201), 'writes succeed again after recovery')
  t.ok(readyAfterMs >= 0, `ready: 200 after recovery, within ${READINESS_BOUND_MS} ms once the load stopped (${readyAfterMs} ms)`)
  t.equal([...client.posts.values()].filter((p) => !p.statuses.some(isFinal)).length, 0, 'every retried write got a final answer')
  t.equal(replayedSame, recovered.length, 'a key retried after the outage replays its one transaction (same id, Idempotent-Replayed)')
  t.equal(reconciliation.rowsLost, 0, 'no acknowledged write is lost')
  t.equal(reconciliation.duplicated, 0, 'no key produced two transactions')
  t.equal(reconciliation.committedUnacknowledged, 0, 'nothing is in the ledger that the client was not finally told about')
  t.same(reconciliation.balanceMismatches, [], 'balances equal what the acknowledged writes add up to')
  assertLedger(t, ledger)
  await assertReconciled(t, sql)
  await assertTelemetrySettled(t, app)
  return { client, figures, reconciliation, ledger, recoveryMs }
}

// ---------------------------------------------------------------------------------------------------------------
// Telemetry after a fault
// ---------------------------------------------------------------------------------------------------------------

/** Every `*_in_flight` gauge of a Prometheus text exposition, summed over its series. */
export function inFlightGauges (text: string): Record<string, number> {
  const gauges: Record<string, number> = {}
  for (const match of text.matchAll(/^([a-z_:]+_in_flight)(?:\{[^}]*\})? (\S+)$/gm)) {
    gauges[match[1]!] = (gauges[match[1]!] ?? 0) + Number(match[2])
  }
  return gauges
}

/**
 * After a fault, once the load has stopped: every `*_in_flight` gauge of the app is back to 0 and no span is left
 * open (bounded wait, since the last answers' hooks may still be running). Read from the registry, not /metrics,
 * so the scrape itself is not in flight.
 */
export async function assertTelemetrySettled (t: TestLike, app: App, timeoutMs = 5000) {
  const read = async () => ({
    inFlight: inFlightGauges(await app.metrics.registry.metrics()),
    openSpans: openSpans().map((span) => span.name)
  })
  const quiet = (state: Awaited<ReturnType<typeof read>>) => Object.values(state.inFlight).every((v) => v === 0) && state.openSpans.length === 0
  const started = performance.now()
  let state = await read()
  while (!quiet(state) && performance.now() - started < timeoutMs) {
    await sleep(50)
    state = await read()
  }
  t.ok(Object.keys(state.inFlight).length >= 2, `telemetry: in-flight gauges present (${Object.keys(state.inFlight).join(', ')})`)
  t.same(state.inFlight, Object.fromEntries(Object.keys(state.inFlight).map((name) => [name, 0])), 'telemetry: every *_in_flight gauge is back to 0')
  t.same(state.openSpans, [], 'telemetry: no span left open')
}
