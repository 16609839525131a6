import { hostname } from 'node:os'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { Sql } from '../../plugins/database/index.ts'
import { checkLedger, SNAPSHOT } from './invariants.ts'
import type { Metrics } from '../../plugins/metrics/index.ts'

declare module 'fastify' {
  interface FastifyInstance {
    ledgerCheck: LedgerCheck
  }
}

export type LedgerCheckOutcome = 'held' | 'failed' | 'error'

export interface LedgerCheck {
  /**
   * One try, as the timer makes it: claims the current slot and checks the ledger if no process has, then exports
   * the last finished result. Resolves with this process's outcome, or 'skipped' when the slot was not ours.
   */
  tryNow: () => Promise<LedgerCheckOutcome | 'skipped'>
}

export interface LedgerCheckOptions {
  /** One check per slot of this many seconds among all processes; 0: this process never runs it (it still exports the last result). */
  intervalS: number
  /** The longest any one statement of the check may run (the database's guard rail is 5 s; whole-table scans need more). */
  statementTimeoutMs: number
}

/** How the invariants failed, for the log line and the run's row: each broken invariant with its offending rows (their ids). */
export interface LedgerCheckFailure {
  invariant: string
  offending: Array<Record<string, unknown>>
}

const MAX_TICK_MS = 60_000

/**
 * The ledger check that runs by itself: every API process tries every quarter interval (at most a minute), and
 * claim_ledger_check() (sql/functions/ledger_checks.sql) gives each slot of RECONCILE_INTERVAL_S to exactly one of
 * them. The one that claimed it checks the four invariants (routes/ledger/invariants.ts) in one REPEATABLE READ,
 * read-only snapshot, holding the check's transaction-scoped advisory lock so no other check starts meanwhile
 * (PgBouncer's transaction mode keeps no session lock), then records the outcome with finish_ledger_check(). A
 * failure is logged at error level with the offending rows' ids. Every process exports the last finished result,
 * read from the runs table, so the metrics do not depend on which process ran it or whether it still exists.
 */
async function ledgerCheckPlugin (app: FastifyInstance, options: LedgerCheckOptions) {
  const sql: Sql = app.db
  const metrics: Metrics = app.metrics
  const log = app.log.child({ component: 'ledger-check' })
  const runner = `${hostname()}/${process.pid}`
  const tickMs = options.intervalS > 0 ? Math.min(MAX_TICK_MS, Math.max(250, options.intervalS * 250)) : MAX_TICK_MS
  const state = { closing: false }
  let timer: NodeJS.Timeout | undefined
  let inFlight: Promise<unknown> | undefined

  metrics.ledgerCheckInterval.set(options.intervalS)

  const check = async (slot: Date): Promise<LedgerCheckOutcome> => {
    const started = performance.now()
    let outcome: LedgerCheckOutcome
    let failures: LedgerCheckFailure[] | { error: string } | null = null
    try {
      const checks = await sql.begin(SNAPSHOT, async (tx) => {
        // Waits only for a claim in progress (a check in progress is never claimed over: see the function).
        await tx`select pg_advisory_xact_lock(ledger_check_lock_key())`
        // One backend's worth of CPU, not three: the check is background work beside the requests, and its parallel
        // workers took every core of the bench's 2-core machine for its 13 s on a 2M-row ledger (docs/performance.md).
        await tx`select set_config('max_parallel_workers_per_gather', '0', true)`
        return await checkLedger(tx, options.statementTimeoutMs)
      })
      const broken = checks.filter((c) => !c.ok)
      outcome = broken.length === 0 ? 'held' : 'failed'
      const durationS = (performance.now() - started) / 1000
      if (broken.length > 0) {
        failures = broken.map((c) => ({ invariant: c.name, offending: c.offending }))
        log.error({ slot, runner, durationS, failures }, `ledger check failed: ${broken.map((c) => c.name).join('; ')}`)
      } else {
        log.info({ slot, runner, durationS, checked: checks.map((c) => `${c.name}: ${c.checked}`) }, 'ledger check held')
      }
    } catch (error) {
      outcome = 'error'
      failures = { error: error instanceof Error ? error.message : String(error) }
      metrics.dependencyErrors.inc({ dependency: 'postgres', operation: 'ledger_check' })
      log.warn({ err: error, slot, runner }, 'ledger check could not finish')
    }
    metrics.ledgerCheckRuns.inc({ outcome })
    const durationS = (performance.now() - started) / 1000
    await sql`select finish_ledger_check(${slot}, ${outcome}, ${durationS}, ${failures === null ? null : sql.json(failures as never)})`
    return outcome
  }

  /** The last check that finished (held or failed; one that could not finish says nothing about the ledger). */
  const exportLast = async () => {
    const [last] = await sql<Array<{ finished: number, duration_s: number, held: boolean }>>`
      select extract(epoch from finished_at)::float8 as finished, duration_s, outcome = 'held' as held
        from ledger_check_runs
       where outcome in ('held', 'failed')
       order by finished_at desc
       limit 1`
    if (last === undefined) return
    metrics.ledgerCheckHeld.set(last.held ? 1 : 0)
    metrics.ledgerCheckLastRun.set(last.finished)
    metrics.ledgerCheckDuration.set(last.duration_s)
  }

  const tryNow = async (): Promise<LedgerCheckOutcome | 'skipped'> => {
    let outcome: LedgerCheckOutcome | 'skipped' = 'skipped'
    if (options.intervalS > 0) {
      const [claim] = await sql<Array<{ slot: Date | null }>>`select claim_ledger_check(${options.intervalS}, ${runner}) as slot`
      if (claim?.slot != null) outcome = await check(claim.slot)
    }
    await exportLast()
    return outcome
  }

  const schedule = (delayMs: number) => {
    if (state.closing) return
    timer = setTimeout(() => {
      const attempt = tryNow().catch((error: unknown) => {
        metrics.dependencyErrors.inc({ dependency: 'postgres', operation: 'ledger_check' })
        log.warn({ err: error }, 'ledger check: claim or export failed')
      })
      inFlight = attempt
      attempt.finally(() => { inFlight = undefined; schedule(tickMs) })
    }, delayMs)
    timer.unref()
  }

  app.decorate('ledgerCheck', { tryNow })
  app.addHook('onReady', async () => {
    // The last result is exported before the process serves, so a restart never reads as a failed check.
    await exportLast().catch((error: unknown) => log.warn({ err: error }, 'ledger check: last result not read at boot'))
    // A random first try spreads the processes over the tick.
    schedule(Math.floor(Math.random() * tickMs))
  })
  app.addHook('onClose', async () => {
    state.closing = true
    clearTimeout(timer)
    // A check in progress ends with the pool; its slot stays unfinished and the next slot is claimed as usual.
    if (inFlight !== undefined) await Promise.race([inFlight, new Promise((resolve) => setTimeout(resolve, 1000).unref())])
  })
}

export default fp(ledgerCheckPlugin, { name: 'ledger-check', dependencies: ['database', 'metrics'] })
