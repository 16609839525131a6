// The ledger check (routes/ledger/ledger-check.ts) as it runs in production: real server processes with
// RECONCILE_INTERVAL_S=1, nobody calling anything. Three processes try every quarter second; each one-second slot
// is checked by exactly one of them, and a ledger the owner corrupts behind the API's back makes the next check
// fail, naming the row, in the runs table, the log and the metrics. Runs with the fault suite (one file at a time,
// after the main suite): it corrupts the shared test ledger for a few seconds, and other files check it whole.
import t from 'tap'
import { buildTestApp, createUser, fund, hasLocalStack, testSql } from '../helper.ts'
import { parseMetrics } from '../../scripts/ops/prometheus.ts'
import { sleep, startServer, waitFor, type ServerProcess } from './support.ts'

const skip = hasLocalStack ? false : 'needs the local stack started by scripts/test.ts'

interface Run { slot_start: Date, runner: string, started_at: Date, finished_at: Date | null, outcome: string | null, failures: unknown }

/** The JSON log lines of a process that carry `msg`. */
const logLines = (server: ServerProcess, msg: string) => server.output().split('\n').flatMap((line) => {
  try {
    const entry = JSON.parse(line) as { msg?: string }
    return entry.msg?.startsWith(msg) === true ? [entry as Record<string, unknown>] : []
  } catch {
    return []
  }
})

const metricsOf = async (server: ServerProcess) => parseMetrics(await (await fetch(`${server.baseUrl}/metrics`, { signal: AbortSignal.timeout(5000) })).text())

t.test('the ledger check runs by itself, once per interval among three processes, and reports a corrupted ledger with the row', { skip }, async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  // Funded users, so the check has balances, entries and a deposit's reference to compare.
  const alice = await createUser(app)
  const bob = await createUser(app)
  await fund(app, alice, 5_000)
  await fund(app, bob, 1_000)

  const since = new Date()
  const env = { RECONCILE_INTERVAL_S: '1', LOG_LEVEL: 'info', WORKER_ENABLED: 'false' }
  const servers = [await startServer(env), await startServer(env), await startServer(env)]
  t.teardown(() => Promise.all(servers.map((server) => server.kill())))
  const runnerPids = new Set(servers.map((server) => server.child.pid))

  // --- Sound ledger: every slot checked once --------------------------------------------------------------
  await sleep(6000)
  const runs = await sql<Run[]>`
    select slot_start, runner, started_at, finished_at, outcome, failures from ledger_check_runs
     where slot_start >= ${since} and finished_at is not null order by slot_start`
  t.ok(runs.length >= 4, `checks ran by themselves: ${runs.length} in about 6 s`)
  t.ok(runs.every((run) => run.outcome === 'held'), 'every check held on the sound ledger')
  t.ok(runs.every((run) => runnerPids.has(Number(run.runner.split('/').pop()))), 'each run by one of the three processes')
  const slots = runs.map((run) => run.slot_start.getTime())
  for (let i = 1; i < slots.length; i++) {
    t.equal((slots[i] as number) - (slots[i - 1] as number), 1000, `slot ${new Date(slots[i] as number).toISOString()} follows the previous one: no slot skipped`)
    t.ok((runs[i] as Run).started_at.getTime() >= ((runs[i - 1] as Run).finished_at as Date).getTime(), 'checks never overlap')
  }
  // Each slot was checked by exactly one process: every process logs the slots it checked.
  const logged = servers.flatMap((server) => logLines(server, 'ledger check held').map((line) => ({ slot: String(line.slot), runner: String(line.runner) })))
  for (const run of runs) {
    const checkedBy = logged.filter((line) => new Date(line.slot).getTime() === run.slot_start.getTime())
    t.equal(checkedBy.length, 1, `slot ${run.slot_start.toISOString()} checked by exactly one process (${checkedBy.map((line) => line.runner).join(', ')})`)
  }
  const runners = new Set(runs.map((run) => run.runner))
  t.comment(`runs per process: ${[...runners].map((runner) => `${runner} ${runs.filter((run) => run.runner === runner).length}`).join(', ')}`)
  // Every process exports the last result, whichever ran it.
  for (const server of servers) {
    const metrics = await metricsOf(server)
    t.equal(metrics.get('ledger_check_held'), 1, 'held: 1 on every process')
    t.ok(Date.now() / 1000 - (metrics.get('ledger_check_last_run_timestamp_seconds') ?? 0) < 3, 'last run within the last seconds on every process')
    t.equal(metrics.get('ledger_check_interval_seconds'), 1)
  }
  const ranHere = await Promise.all(servers.map(async (server) => (await metricsOf(server)).get('ledger_check_runs_total{outcome="held"}') ?? 0))
  const held = await sql<Array<{ n: number }>>`select count(*)::int as n from ledger_check_runs where slot_start >= ${since} and outcome = 'held'`
  t.ok(Math.abs(ranHere.reduce((sum, n) => sum + n, 0) - (held[0]?.n ?? 0)) <= 1, `the processes' run counters add up to the runs recorded (${ranHere.join(' + ')} vs ${held[0]?.n})`)

  // --- The runner goes away (SIGTERM, as a rollout does): another process checks the next slots -------------
  const last = runs.at(-1) as Run
  const leaving = servers.find((server) => last.runner.endsWith(`/${server.child.pid}`)) as ServerProcess
  leaving.child.kill('SIGTERM')
  t.same(await leaving.exited, { code: 0, signal: null }, 'the last runner stopped gracefully')
  const stoppedAt = new Date()
  const remaining = servers.filter((server) => server !== leaving)
  await sleep(3000)
  const after = await sql<Run[]>`
    select slot_start, runner, started_at, finished_at, outcome, failures from ledger_check_runs
     where started_at > ${stoppedAt} and finished_at is not null order by slot_start`
  t.ok(after.length >= 2, `the others went on checking (${after.length} slots in 3 s)`)
  t.ok(after.every((run) => run.outcome === 'held' && !run.runner.endsWith(`/${leaving.child.pid}`)), 'by the remaining processes')
  t.ok(after.every((run, i) => i === 0 || run.slot_start.getTime() - (after[i - 1] as Run).slot_start.getTime() === 1000), 'one run per slot, none skipped')

  // --- Corrupted ledger: the owner writes a balance that no entry explains ---------------------------------
  const currency = 'JPY'
  const corruptedAt = new Date()
  await sql`insert into balances (user_id, currency, balance) values (${bob.id}, ${currency}, 7)`
  try {
    let failed: Run | undefined
    const ms = await waitFor(async () => {
      [failed] = await sql<Run[]>`
        select slot_start, runner, started_at, finished_at, outcome, failures from ledger_check_runs
         where started_at > ${corruptedAt} and outcome = 'failed' order by slot_start limit 1`
      return failed !== undefined
    }, 10_000, 100)
    t.ok(ms >= 0, `a check failed on its own within ${ms} ms of the corruption`)
    const failures = failed?.failures as Array<{ invariant: string, offending: Array<Record<string, unknown>> }>
    t.same(failures.map((failure) => failure.invariant).sort(), ['balances per currency = deposits - withdrawals', 'every balance = sum of its entries'], 'the two broken invariants, and only those')
    const row = failures.find((failure) => failure.invariant === 'every balance = sum of its entries')?.offending
    t.same(row, [{ user_id: bob.id, currency, balance: '7', entries: null }], 'names the offending row: user id and currency')
    // The same rows in the log line of the process that ran it.
    const runner = servers.find((server) => failed !== undefined && failed.runner.endsWith(`/${server.child.pid}`))
    const line = runner === undefined ? undefined : logLines(runner, 'ledger check failed').at(0)
    t.equal(line?.level, 50, 'logged at error level')
    t.match(JSON.stringify(line?.failures), new RegExp(`"user_id":"${bob.id}","currency":"${currency}"`), 'the log line names the row')
    const metricsHeld = await waitFor(async () => (await metricsOf(remaining[0] as ServerProcess)).get('ledger_check_held') === 0, 5000, 100)
    t.ok(metricsHeld >= 0, 'ledger_check_held is 0 (LedgerCheckFailed fires)')
  } finally {
    await sql`delete from balances where user_id = ${bob.id} and currency = ${currency}`
  }
  const repairedAt = new Date()
  const healed = await waitFor(async () => {
    const [run] = await sql<Run[]>`select outcome from ledger_check_runs where started_at > ${repairedAt} and outcome is not null order by slot_start limit 1`
    return run?.outcome === 'held'
  }, 10_000, 100)
  t.ok(healed >= 0, 'repaired: the next check holds again')
  t.ok(await waitFor(async () => (await metricsOf(remaining[1] as ServerProcess)).get('ledger_check_held') === 1, 5000, 100) >= 0, 'held: 1 again')
})
