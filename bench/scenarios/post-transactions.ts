// post-transactions: transfers only, at 1,000 connections and at pgbench's 50, against the database baselines run
// just before: the one-statement CTE (a ceiling no checked write reaches), our own post_transaction() statement,
// and the minimal ledger write (what any transfer must do: key, ordered locks, funds check, two balances, the
// transaction and its entries), so the gap to the last is what our API and our function add to the necessary work.
import { databaseBaselines } from '../lib/baselines.ts'
import { formatHistogram } from '../lib/histogram.ts'
import { apiCpuGoal, BIG_CONNECTIONS, cpuRatio, findBaseline, goal, measure, PGBENCH_CLIENTS, ratio, record, side, warmUp, type Scenario } from '../lib/context.ts'
import { mixedRequests } from '../lib/traffic.ts'

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
    const atPgbench = record(b, {
      id: 'post-transactions-50',
      scenario: 'post-transactions',
      label: `post-transactions (transfers, ${PGBENCH_CLIENTS} connections)`,
      connections: PGBENCH_CLIENTS,
      notes: [`the same transfers at the database baselines' concurrency (pgbench -c ${PGBENCH_CLIENTS})`]
    }, await measure(b, [{ connections: PGBENCH_CLIENTS, requests, duration: b.time.pair, route: 'POST /transactions' }]))

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
    if (minimal !== undefined) {
      // At pgbench's concurrency: both sides then run the same number of writes at once.
      const label = 'POST /transactions vs a minimal ledger write'
      ratio(b, 'post-vs-minimal', label, side(atPgbench), side(minimal), 0.6,
        'pgbench: 50 clients through the same PgBouncer, bench_minimal.transfer() on tables of its own (bench/pgbench/minimal-ledger.sql)')
      cpuRatio(b, 'post-vs-minimal', label, side(atPgbench), side(minimal), 'db', 'database work per money write: post_transaction() vs the minimal function')
      ratio(b, 'post-1000-vs-minimal', `${label} (${post.connections} connections)`, side(post), side(minimal), undefined,
        `the API at ${post.connections} connections, the minimal write at pgbench's ${PGBENCH_CLIENTS}: what the API makes of a crowd`)
    }
    for (const run of [post, atPgbench]) {
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
