// post-transactions: transfers only, at 1,000 connections and at pgbench's 50, against the database baselines run
// just before: the one-statement CTE (a ceiling no checked write reaches), our own post_transaction() statement,
// and the minimal ledger write (what any transfer must do: key, ordered locks, funds check, two balances, the
// transaction and its entries), so the gap to the last is what our API and our function add to the necessary work.
// The comparison with the minimal write at pgbench's concurrency is paired: rounds of the minimal write, then POST,
// back to back, and the median of the rounds' ratios, because this machine's speed drifts between runs a minute apart
// by more than the difference being measured.
import { databaseBaselines, minimalLedgerBaseline } from '../lib/baselines.ts'
import { formatHistogram } from '../lib/histogram.ts'
import { apiCpuGoal, BIG_CONNECTIONS, check, cpuRatio, findBaseline, goal, measure, medianBy, PGBENCH_CLIENTS, ratio, record, side, warmUp, type Scenario } from '../lib/context.ts'
import type { BaselineRecord, RunRecord } from '../lib/report.ts'
import { mixedRequests } from '../lib/traffic.ts'

/** Rounds of the paired comparison (each: the minimal write, then POST at its concurrency). */
const PAIRED_ROUNDS = 3

export const scenario: Scenario = {
  id: 'post-transactions',
  async run (b) {
    await databaseBaselines(b)
    const requests = mixedRequests(b.world, [['POST /transactions', 1]], ['transfer'])
    await warmUp(b, [{ connections: BIG_CONNECTIONS, requests }])
    const post = record(b, {
      id: 'post-transactions',
      scenario: 'post-transactions',
      label: 'post-transactions (transfers)',
      connections: BIG_CONNECTIONS,
      notes: ['every request a transfer between two random users with a unique Idempotency-Key, like the pgbench scripts']
    }, await measure(b, [{ connections: BIG_CONNECTIONS, requests, route: 'POST /transactions' }]))
    // At 1,000 connections most requests wait for one of the pool's connections, and that waiting costs CPU of its
    // own; at pgbench's concurrency the API's cost per write is what the write itself costs.
    await warmUp(b, [{ connections: PGBENCH_CLIENTS, requests }])
    const rounds: Array<{ post: RunRecord, minimal: BaselineRecord | undefined }> = []
    for (let round = 1; round <= PAIRED_ROUNDS; round++) {
      const minimal = await minimalLedgerBaseline(b, `pgbench-minimal-ledger-${round}`, `pgbench: minimal ledger write (paired round ${round})`)
      const post = record(b, {
        id: `post-transactions-50-${round}`,
        scenario: 'post-transactions',
        label: `post-transactions (transfers, ${PGBENCH_CLIENTS} connections, round ${round})`,
        connections: PGBENCH_CLIENTS,
        notes: [`the same transfers at the database baselines' concurrency (pgbench -c ${PGBENCH_CLIENTS}), right after the minimal write's round ${round}`]
      }, await measure(b, [{ connections: PGBENCH_CLIENTS, requests, duration: b.time.pair, route: 'POST /transactions' }]))
      rounds.push({ post, minimal })
      // Without pgbench there is nothing to pair with: one run gives the API's cost.
      if (minimal === undefined) break
    }
    // The round whose ratio is the median stands for the comparison (without pgbench, the one round there is).
    const paired = rounds.filter((r): r is { post: RunRecord, minimal: BaselineRecord } => r.minimal !== undefined && r.minimal.rps > 0)
      .map((r) => ({ ...r, ratio: r.post.load.rps / r.minimal.rps }))
    const median = medianBy(paired, (r) => r.ratio)
    const atPgbench = median?.post ?? (rounds[0] as { post: RunRecord }).post

    goal(b, { id: 'post-rps', label: 'POST /transactions at 1,000 connections', measured: post.label, value: post.load.rps, unit: 'req/s', target: { op: '>=', value: 1200 }, note: `p99 ${post.load.latency.p99.toFixed(0)} ms` })
    const ceiling = findBaseline(b, 'pgbench-one-statement')
    const ours = findBaseline(b, 'pgbench-post-transaction')
    const minimal = findBaseline(b, 'pgbench-minimal-ledger')
    if (ceiling !== undefined) ratio(b, 'post-vs-ceiling', 'POST /transactions vs pgbench one-statement ceiling', side(post), side(ceiling), 0.8, 'pgbench: 50 clients through the same PgBouncer')
    if (ours !== undefined) {
      const label = 'POST /transactions vs pgbench post_transaction()'
      ratio(b, 'post-vs-statement', label, side(post), side(ours), undefined, 'what HTTP, auth, validation, rate limiting and Node add to our own statement')
      cpuRatio(b, 'post-vs-statement', label, side(post), side(ours), 'db', 'database work per money write')
      cpuRatio(b, 'post-vs-statement-stack', 'POST /transactions (whole stack) vs pgbench post_transaction() (database only)', side(post), side(ours), 'stack', 'what the API adds per write')
    }
    const label = 'POST /transactions vs a minimal ledger write'
    if (median !== undefined) {
      // At pgbench's concurrency: both sides then run the same number of writes at once.
      check(b, {
        id: 'post-vs-minimal',
        label,
        measured: `${atPgbench.label} (median of ${paired.length} paired rounds)`,
        reference: median.minimal.label,
        measuredValue: atPgbench.load.rps,
        referenceValue: median.minimal.rps,
        value: median.ratio,
        unit: 'ratio',
        target: { op: '>=', value: 1 },
        note: `rounds in order: ${paired.map((r) => `${r.post.load.rps.toFixed(0)}/${r.minimal.rps.toFixed(0)} = ${r.ratio.toFixed(2)}x`).join(', ')}; ` +
          'pgbench: 50 clients through the same PgBouncer, bench_minimal.transfer() on tables of its own (bench/pgbench/minimal-ledger.sql)'
      })
      cpuRatio(b, 'post-vs-minimal', label, side(atPgbench), side(median.minimal), 'db', 'database work per money write: post_transaction() vs the minimal function')
    }
    if (minimal !== undefined) {
      ratio(b, 'post-1000-vs-minimal', `${label} (${post.connections} connections)`, side(post), side(minimal), undefined,
        `the API at ${post.connections} connections, the minimal write at pgbench's ${PGBENCH_CLIENTS}: what the API makes of a crowd`)
    }
    for (const run of [post, ...rounds.map((r) => r.post)]) {
      const batches = formatHistogram(run.samples?.writeBatchSize)
      run.notes.push(run.samples?.writeBatchSize === undefined
        ? 'write batches: - (the API exports no ledger_write_batch_size histogram)'
        : `write batches: ${batches.count}, mean ${batches.mean} writes per batch, p50 ${batches.p50}, p99 ${batches.p99}`)
    }
    apiCpuGoal(b, 'post-api-cpu', 'POST /transactions: API CPU per request', atPgbench, 0.18)
    if (ours !== undefined && minimal !== undefined) {
      // Both sides are pgbench, so this is the function alone: what post_transaction()'s checks, triggers, indexes
      // and outbox cost beyond the minimal write.
      const label = 'post_transaction() vs the minimal ledger write (both pgbench)'
      ratio(b, 'statement-vs-minimal', label, side(ours), side(minimal), undefined,
        'the same call shape, clients and PgBouncer; below 1: what our function does beyond the work a transfer must do')
      cpuRatio(b, 'statement-vs-minimal', label, side(ours), side(minimal), 'db', 'database CPU per write')
    }
    if (ceiling !== undefined && ours !== undefined) {
      ratio(b, 'statement-vs-ceiling', 'post_transaction() vs one-statement CTE (both pgbench)', side(ours), side(ceiling), undefined,
        'above 1: PL/pgSQL caches the plans of the function\'s statements per connection, while the CTE statement is parsed and planned on every call (no prepared statements through PgBouncer 1.18)')
    }
  }
}
