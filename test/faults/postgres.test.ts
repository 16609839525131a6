// PostgreSQL stopped (fast shutdown: in-flight transactions are rolled back) in the middle of a load and started
// again, behind PgBouncer. Runs after the main suite, alone (scripts/test.ts).
import t from 'tap'
import { controlService } from '../../scripts/local-stack.ts'
import { buildTestApp, createClient, createUser, hasLocalStack, testSql, type TestUser } from '../helper.ts'
import {
  assertLedger, assertReconciled, assertTelemetrySettled, checkLedger, fetchSender, inFlightGauges, injectSender, LedgerClient,
  outageUnderLoad, reconcile, sleep, startServer, untilReady, waitFor
} from './support.ts'

/** The message and error of server.ts's first "closing ..." log line, if it wrote one. */
function exitReason (output: string) {
  for (const line of output.split('\n')) {
    try {
      const entry = JSON.parse(line) as { msg?: string, err?: { type?: string, message?: string, code?: string } }
      if (entry.msg?.startsWith('closing') === true) return { msg: entry.msg, error: entry.err?.type, code: entry.err?.code, message: entry.err?.message }
    } catch {}
  }
  return output.slice(-300)
}

const skip = hasLocalStack ? false : 'needs the local stack started by scripts/test.ts'

t.test('PostgreSQL restarted under load: 503s not hangs, recovery by itself, every key applied exactly once', { skip }, async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  await untilReady(app)
  const users = [await createUser(app), await createUser(app), await createUser(app), await createUser(app)]
  // A statement queued in PgBouncer while PostgreSQL is down waits at most query_wait_timeout (10 s in the local
  // stack) before PgBouncer fails it; 12 s is that plus slack, and still far from a hang.
  await outageUnderLoad(t, {
    fault: 'postgres restarted',
    service: 'postgres',
    outageMs: 2000,
    latencyBoundMs: 12_000,
    app,
    users,
    sql
  })
})

// The same fault against the real server process: what an unhandled rejection means in production.
t.test('a real server process keeps serving through a PostgreSQL restart', { skip }, async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  await untilReady(app)
  const users = [await createUser(app), await createUser(app)]
  const funder = await createClient(app)
  const server = await startServer()
  t.teardown(() => server.kill())
  const client = new LedgerClient(fetchSender(server.baseUrl, 15_000), users, funder)
  // Stops by itself if the process dies: requests to a closed port prove nothing more.
  const load = client.startLoad({ workers: 6, maxRequests: 3000, maxMs: 30_000, gapMs: 10, while: server.running })
  let recoveryMs = -1
  try {
    try {
      await sleep(500)
      client.phase = 'outage'
      await controlService('stop', 'postgres')
      await sleep(1500)
    } finally {
      await controlService('start', 'postgres')
    }
    client.phase = 'recovery'
    // Stops waiting at once if the process is gone.
    recoveryMs = await waitFor(async () => !server.running() || (await client.request('GET /balances', {
      method: 'GET', url: '/balances', authorization: (users[0] as TestUser).authorization
    })).status === 200, 10_000, 100)
    if (!server.running()) recoveryMs = -1
    client.phase = 'after'
    await sleep(500)
  } finally {
    await load.stop()
  }
  const alive = server.running()
  const exit = alive ? undefined : await server.exited
  // Writes the dead or live server never answered are settled through the in-process app, same keys and bodies.
  const settle = new LedgerClient(injectSender(app), users, funder)
  for (const record of client.posts.values()) settle.posts.set(record.key, record)
  await settle.retryUnanswered()
  const userIds = users.map((u) => u.id)
  const reconciliation = await reconcile(sql, client.posts.values(), userIds)
  const ledger = await checkLedger(sql, userIds)
  const figures = client.figures()
  const outage = figures.phases.outage ?? { requests: 0, statuses: {}, maxMs: 0 }
  t.comment(JSON.stringify({
    fault: 'postgres restarted (real server process)',
    serverAlive: alive,
    exit,
    // Why it stopped, when it did: server.ts's own log line.
    exitReason: alive ? undefined : exitReason(server.output()),
    recoveryMs,
    requestsDuringFault: outage.requests,
    errorsDuringFaultByStatus: Object.fromEntries(Object.entries(outage.statuses).filter(([status]) => !status.startsWith('2'))),
    requests: figures.requests,
    maxLatencyMs: figures.maxLatencyMs,
    phases: figures.phases,
    rowsLost: reconciliation.rowsLost,
    duplicated: reconciliation.duplicated,
    committedUnacknowledged: reconciliation.committedUnacknowledged
  }))
  t.ok(alive, 'the process is still running after the restart')
  if (alive) {
    // The real process's own gauges, scraped: only the scrape itself is in flight.
    let scraped: Record<string, number> = {}
    await waitFor(async () => {
      scraped = inFlightGauges(await (await fetch(`${server.baseUrl}/metrics`)).text())
      return scraped.ledger_http_requests_in_flight === 1 && scraped.ledger_db_statements_in_flight === 0
    }, 5000, 50)
    t.same(scraped, { ledger_http_requests_in_flight: 1, ledger_db_statements_in_flight: 0 }, 'telemetry: the server\'s in-flight gauges are back to 0 (the scrape aside)')
  }
  await assertTelemetrySettled(t, app)
  t.ok(recoveryMs >= 0, `it serves again by itself (${recoveryMs} ms after the restart)`)
  t.equal(client.samples.filter((s) => s.status >= 500 && s.status !== 503).length, 0, 'never a 500')
  t.equal(reconciliation.rowsLost, 0, 'no acknowledged write is lost')
  t.equal(reconciliation.duplicated, 0, 'no key produced two transactions')
  t.same(reconciliation.balanceMismatches, [], 'balances equal what the acknowledged writes add up to')
  assertLedger(t, ledger)
  await assertReconciled(t, sql)
})
