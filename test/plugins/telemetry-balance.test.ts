// Every in-flight gauge and every span ends exactly once, whatever way a request or a statement ends:
// success, error, client abort, a pool that cannot connect, a pool that is shut down.
import { connect } from 'node:net'
import type { AddressInfo } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import type { App } from '../../app.ts'
import { CircuitBreaker, CircuitOpenError } from '../../plugins/database/circuit-breaker.ts'
import { createSql, type QueryObserver } from '../../plugins/database/index.ts'
import { isConnectionError, isUnavailableError } from '../../plugins/errors/index.ts'
import { nPlusOnes, tallyStatement } from '../../plugins/metrics/index.ts'
import { buildTestApp, createUser, fund, openSpans } from '../helper.ts'

const gauge = async (app: App, name: 'httpInFlight' | 'dbStatementsInFlight') => (await app.metrics[name].get()).values[0]?.value ?? 0

/** Waits (bounded) until both in-flight gauges are 0 and no span is open; returns what was left if they are not. */
async function settled (app: App, timeoutMs = 5000) {
  const until = performance.now() + timeoutMs
  for (;;) {
    const state = { http: await gauge(app, 'httpInFlight'), db: await gauge(app, 'dbStatementsInFlight'), spans: openSpans().map((s) => s.name) }
    if ((state.http === 0 && state.db === 0 && state.spans.length === 0) || performance.now() > until) return state
    await sleep(20)
  }
}

/** Sends one raw HTTP/1.1 request (the whole body) and destroys the socket after `abortAfterMs`, unanswered or not. */
function sendAndAbort (port: number, method: string, path: string, headers: Record<string, string>, body: string | undefined, abortAfterMs: number) {
  return new Promise<{ answered: boolean }>((resolve) => {
    const socket = connect(port, '127.0.0.1')
    let answered = false
    socket.on('data', () => { answered = true })
    socket.on('error', () => {})
    socket.on('connect', () => {
      const lines = [`${method} ${path} HTTP/1.1`, 'host: 127.0.0.1', ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`)]
      if (body !== undefined) lines.push('content-type: application/json', `content-length: ${Buffer.byteLength(body)}`)
      socket.write(`${lines.join('\r\n')}\r\n\r\n${body ?? ''}`)
      setTimeout(() => { socket.destroy(); resolve({ answered }) }, abortAfterMs)
    })
  })
}

t.test('a client that goes away after sending its whole request: gauges back to 0, span ended, one log line', async (t) => {
  const lines: Array<Record<string, unknown>> = []
  const app = await buildTestApp(t, {}, { logger: { level: 'info', stream: { write: (line: string) => { lines.push(JSON.parse(line)) } } } })
  app.post('/test/slow', { config: { public: true, rateLimit: false } }, async () => {
    await app.db`select pg_sleep(0.3)`
    return { ok: true }
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo

  const { answered } = await sendAndAbort(port, 'POST', '/test/slow', { 'x-request-id': 'abort-me-1' }, '{"a":1}', 50)
  t.notOk(answered, 'the client left before the answer')
  const early = performance.now()
  while (await gauge(app, 'httpInFlight') !== 0 && performance.now() - early < 200) await sleep(5)
  t.equal(await gauge(app, 'httpInFlight'), 0, 'no longer in flight once the connection closed, before the handler ended')
  await sleep(400) // the statement finishes and the handler's reply goes nowhere
  const left = await settled(app)
  t.same(left, { http: 0, db: 0, spans: [] }, 'http and db in flight are 0 and no span is open')
  const aborted = lines.filter((line) => line.reqId === 'abort-me-1' && /aborted/.test(String(line.msg)))
  t.equal(aborted.length, 1, 'one line says the request was aborted')
  const counted = (await app.metrics.httpAborted.get()).values.find((v) => v.labels.route === '/test/slow')
  t.equal(counted?.value, 1, 'counted once as aborted')
})

t.test('500 connections posting transfers, closed by the load generator at the end: nothing leaks', async (t) => {
  const app = await buildTestApp(t)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo
  const users = [await createUser(app), await createUser(app), await createUser(app), await createUser(app)]
  for (const user of users) await fund(app, user, 1_000_000)
  const before = { http: await gauge(app, 'httpInFlight'), db: await gauge(app, 'dbStatementsInFlight') }
  const sends = []
  for (let i = 0; i < 500; i++) {
    const user = users[i % users.length]!
    const to = users[(i + 1) % users.length]!
    const body = JSON.stringify({ kind: 'transfer', amount: 1, currency: 'USD', toUserId: to.id })
    // Closed at every stage: before the handler, during the SQL, after the answer.
    sends.push(sendAndAbort(port, 'POST', '/transactions', { authorization: user.authorization, 'idempotency-key': `abort-${i}-${Date.now()}` }, body, i % 5 === 0 ? 3000 : i % 60))
  }
  const results = await Promise.all(sends)
  t.comment(`${results.filter((r) => r.answered).length} of 500 answered before their connection closed`)
  t.same(before, { http: 0, db: 0 })
  const left = await settled(app, 10_000)
  t.same(left, { http: 0, db: 0, spans: [] }, 'http and db in flight back to 0, no span open')
})

t.test('a client that stalls mid-body is cut at REQUEST_TIMEOUT_MS: gauges back to 0, span ended', async (t) => {
  const app = await buildTestApp(t, { REQUEST_TIMEOUT_MS: '1000' })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo
  const user = await createUser(app)
  const closed = await new Promise<number>((resolve) => {
    const started = performance.now()
    const socket = connect(port, '127.0.0.1', () => {
      // Headers promise 100 bytes of body; 10 arrive and the rest never does.
      socket.write(`POST /transactions HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: ${user.authorization}\r\n` +
        'idempotency-key: stalled-1\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"kind":"t')
    })
    socket.on('error', () => {})
    // Node answers 408 (and may keep the socket open until the client closes it) or closes it.
    const cut = () => { resolve(performance.now() - started); socket.destroy() }
    socket.on('data', cut)
    socket.on('close', cut)
    setTimeout(() => socket.destroy(), 10_000).unref()
  })
  t.ok(closed < 5000, `the server cut the stalled request (${Math.round(closed)} ms)`)
  const left = await settled(app)
  t.same(left, { http: 0, db: 0, spans: [] }, 'http and db in flight are 0 and no span is open')
})

/** A loopback port nobody listens on. */
async function closedPort (): Promise<number> {
  const { createServer } = await import('node:net')
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  await new Promise((resolve) => server.close(resolve))
  return port
}

function counter () {
  const c = { inFlight: 0, started: 0, finished: 0, refused: 0, min: 0 }
  const observer: QueryObserver = {
    started: () => { c.started++; c.inFlight++ },
    finished: () => { c.finished++; c.inFlight--; c.min = Math.min(c.min, c.inFlight) },
    refused: () => { c.refused++ }
  }
  return { c, observer }
}

t.test('statements against an unreachable database: finished once per started, never below 0', async (t) => {
  const port = await closedPort()
  const { c, observer } = counter()
  const sql = createSql({ url: `postgres://ledger@127.0.0.1:${port}/ledger`, max: 3, idleTimeoutS: 1, connectTimeoutS: 1, observeQuery: observer })
  t.teardown(() => sql.end({ timeout: 1 }))
  const results = await Promise.allSettled(Array.from({ length: 40 }, () => sql`select 1`))
  t.ok(results.every((r) => r.status === 'rejected' && isConnectionError(r.reason)), 'every statement failed with a connection error')
  t.equal(c.started, 40, 'each started once')
  t.equal(c.finished, 40, 'and finished once')
  t.equal(c.inFlight, 0)
  t.equal(c.min, 0, 'never negative')
  t.equal(openSpans().length, 0, 'no span open')
})

t.test('a pool shut down with statements running and queued: the count returns to 0', async (t) => {
  const { c, observer } = counter()
  const sql = createSql({ url: process.env.DATABASE_URL ?? '', max: 2, idleTimeoutS: 1, connectTimeoutS: 2, observeQuery: observer })
  const running = Array.from({ length: 6 }, () => sql`select pg_sleep(0.2)`.then(() => 'ok', (error: { code?: string }) => error.code))
  await sleep(50)
  await sql.end({ timeout: 0 })
  const outcomes = await Promise.all(running)
  t.comment(outcomes.join(' '))
  const late = await sql`select 1`.then(() => 'ok', (error: { code?: string }) => error.code)
  t.equal(late, 'CONNECTION_ENDED', 'a statement after end is refused')
  await sleep(50)
  t.equal(c.started, c.finished, 'every started statement finished once')
  t.equal(c.inFlight, 0)
  t.equal(c.min, 0, 'never negative')
  t.equal(openSpans().length, 0, 'no span open')
})

t.test('the breaker: opens after N connection failures in a row, refuses, probes in the background, closes on an answer', async (t) => {
  const states: string[] = []
  const refused = Object.assign(new Error('refused'), { code: 'ECONNREFUSED' })
  const timeout = Object.assign(new Error('statement timeout'), { code: '57014' })
  let probeAnswer: () => Promise<unknown> = () => Promise.reject(refused)
  let probes = 0
  const breaker = new CircuitBreaker({
    failureThreshold: 3,
    openMs: 30,
    probeTimeoutMs: 200,
    isConnectionFailure: isConnectionError,
    probe: () => { probes++; return probeAnswer() },
    onStateChange: (s) => states.push(s)
  })
  t.teardown(() => breaker.stop())
  const admit = () => {
    const settle = breaker.admit()
    if (settle === false) throw new Error('refused')
    return settle
  }
  // Statement timeouts and SQL errors are answers from the database: they never open it.
  for (let i = 0; i < 10; i++) admit()(timeout)
  t.equal(breaker.state, 'closed', 'statement timeouts do not count')
  const early = [admit(), admit(), admit()]
  early[0]!(refused)
  early[0]!(refused) // settled twice by postgres.js: counted once
  early[1]!(undefined) // a success in between resets the run
  t.equal(breaker.state, 'closed')
  for (let i = 0; i < 3; i++) admit()(refused)
  t.equal(breaker.state, 'open', 'three in a row open it')
  t.equal(breaker.admit(), false, 'open: refused')
  early[2]!(undefined)
  t.equal(breaker.state, 'open', 'a statement admitted before it opened does not close it')
  t.equal(probes, 0, 'no probe before openMs')
  await sleep(45)
  t.equal(probes, 1, 'one probe after openMs')
  t.equal(breaker.state, 'open', 'a failed probe opens it again')
  t.equal(breaker.admit(), false)
  const until = async (done: () => boolean) => {
    for (let i = 0; i < 200 && !done(); i++) await sleep(5)
    return done()
  }
  probeAnswer = () => new Promise(() => {}) // a probe whose answer never comes
  t.ok(await until(() => probes === 2 && breaker.state === 'half_open'), 'the next probe is sent')
  probeAnswer = () => Promise.reject(Object.assign(new Error('duplicate'), { code: '23505' }))
  t.ok(await until(() => breaker.state === 'open'), 'a probe with no answer within probeTimeoutMs counts as failed')
  t.ok(await until(() => breaker.state === 'closed'), 'any answer from the database closes it')
  t.equal(probes, 3)
  t.ok(breaker.admit() !== false, 'statements go through again')
  t.same(states.slice(0, 3), ['open', 'half_open', 'open'])
  t.equal(states.at(-1), 'closed')
  t.ok(isUnavailableError(new CircuitOpenError()), 'a refused statement is a 503')
})

t.test('a pool whose breaker is open answers at once and counts nothing in flight', async (t) => {
  const port = await closedPort()
  const { c, observer } = counter()
  const sql = createSql({
    url: `postgres://ledger@127.0.0.1:${port}/ledger`,
    max: 3,
    idleTimeoutS: 1,
    connectTimeoutS: 1,
    observeQuery: observer,
    circuit: { failureThreshold: 3, openMs: 60_000 }
  })
  t.teardown(() => sql.end({ timeout: 1 }))
  await Promise.allSettled(Array.from({ length: 5 }, () => sql`select 1`))
  const started = performance.now()
  const refused = await sql`select 1`.then(() => undefined, (error: unknown) => error)
  t.ok(refused instanceof CircuitOpenError, 'refused by the breaker')
  t.ok(performance.now() - started < 20, 'at once')
  t.ok(c.refused >= 1)
  t.equal(c.started, c.finished)
  t.equal(c.inFlight, 0)
  const tx = await sql.begin(async () => 'never').then(() => undefined, (error: unknown) => error)
  t.ok(tx instanceof CircuitOpenError, 'begin is refused too')
})

t.test('N+1 evidence is per request: a statement run once per row of an earlier one, and nothing else', async (t) => {
  const tally = (runs: Array<[string, number]>) => {
    const shapes = { shapes: new Map() }
    for (const [text, rows] of runs) tallyStatement(shapes, text, rows)
    return nPlusOnes(shapes)
  }
  const lookups = Array.from({ length: 10 }, (): [string, number] => ['select name from users where id = $1', 1])
  t.same(tally([['select id, author_id from posts where user_id = $1 limit $2', 11], ...lookups]),
    [{ statement: 'select name from users where id = $1', rowsOf: 'select id, author_id from posts where user_id = $1 limit $2' }],
    'ten lookups after a page of ten posts and its look-ahead row')
  t.same(tally([...lookups, ['select id from posts where user_id = $1', 10]]), [], 'not when the list ran after them')
  t.same(tally([['select id from posts where user_id = $1', 4], ...lookups]), [], 'not when the rows do not match the runs')
  t.same(tally([['select * from post_transaction($1)', 1], ['select balance from balances where user_id = $1', 2]]), [], 'single statements never')
})
