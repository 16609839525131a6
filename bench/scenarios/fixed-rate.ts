// fixed-rate: the mixed load at a fixed 1,000 req/s, its arrivals spread over each second like real traffic, and
// the same rate sent in one burst at the top of each second.
//
// Group commit must not cost latency at this rate. The reference is the same code sending every money write alone
// (LEDGER_BATCH_MAX=1, as many calls in flight as the pool has connections: one database call per request, as before
// writes were batched), in a second API process measured in paired rounds with the bench's API, back to back; the
// median of the rounds' p99 differences is held to 5 ms, because p99 at this rate drifts by more than that between
// runs minutes apart on this machine.
import { fileURLToPath } from 'node:url'
import { DEFAULT_POOL_MAX } from '../../plugins/database/config.ts'
import { CONNECTIONS, goal, measure, medianBy, record, warmUp, type Bench, type Scenario } from '../lib/context.ts'
import type { LoadSpec } from '../lib/load.ts'
import { startNodeServer } from '../lib/processes.ts'
import type { RunRecord } from '../lib/report.ts'
import { mixedRequests } from '../lib/traffic.ts'

const PAIRED_ROUNDS = 3
/** The most group commit may add to p99 at the fixed rate, against every write alone (median of the rounds). */
const P99_ADDED_MAX_MS = 5

async function pairedWithSingleWrites (b: Bench, specs: LoadSpec[], staggerMs: number) {
  const poolMax = Number(b.serverEnv.DATABASE_POOL_MAX ?? DEFAULT_POOL_MAX)
  const single = await startNodeServer(fileURLToPath(new URL('../server.ts', import.meta.url)), {
    ...b.serverEnv, LEDGER_BATCH_MAX: '1', LEDGER_BATCHES_IN_FLIGHT: String(poolMax)
  }, { nodeArgs: b.serverNodeArgs })
  b.children.add(single)
  const rounds: Array<{ alone: RunRecord, grouped: RunRecord }> = []
  try {
    await warmUp(b, specs, single.url)
    const paced = specs.map((spec) => ({ ...spec, duration: b.time.pair }))
    for (let round = 1; round <= PAIRED_ROUNDS; round++) {
      const alone = record(b, {
        id: `fixed-rate-single-write-${round}`,
        scenario: 'fixed-rate',
        label: `fixed-rate: 1,000 req/s, every money write alone (round ${round})`,
        connections: CONNECTIONS,
        overallRate: 1000,
        notes: [`a second API process with LEDGER_BATCH_MAX=1 and LEDGER_BATCHES_IN_FLIGHT=${poolMax}: one database call per write`]
      }, await measure(b, paced, { staggerMs, server: single }))
      const grouped = record(b, {
        id: `fixed-rate-grouped-${round}`,
        scenario: 'fixed-rate',
        label: `fixed-rate: 1,000 req/s, group commit (round ${round})`,
        connections: CONNECTIONS,
        overallRate: 1000,
        notes: [`the bench's API, right after round ${round} of every write alone`]
      }, await measure(b, paced, { staggerMs }))
      rounds.push({ alone, grouped })
    }
  } finally {
    await single.stop()
    b.children.delete(single)
  }
  const added = (r: { alone: RunRecord, grouped: RunRecord }) => r.grouped.load.latency.p99 - r.alone.load.latency.p99
  const median = medianBy(rounds, added)!
  goal(b, {
    id: 'fixed-rate-p99-added',
    label: 'fixed 1,000 req/s: p99 added by group commit (vs every write alone, median of paired rounds)',
    measured: median.grouped.label,
    value: added(median),
    unit: 'ms',
    target: { op: '<=', value: P99_ADDED_MAX_MS },
    note: `rounds in order, p99 with group commit / every write alone: ${rounds.map((r) => `${r.grouped.load.latency.p99.toFixed(1)} / ${r.alone.load.latency.p99.toFixed(1)} ms`).join(', ')}`
  })
}

export const scenario: Scenario = {
  id: 'fixed-rate',
  async run (b) {
    // autocannon paces each connection with a 1 s timer, so all connections of one instance burst together at the
    // start of every second. Ten instances of 10 connections x 100 req/s, started 100 ms apart, spread the
    // arrivals over the second; the single-instance variant shows the burst effect.
    const requests = mixedRequests(b.world)
    const instances = 10
    const specs = Array.from({ length: instances }, () => ({ connections: CONNECTIONS / instances, requests, overallRate: 1000 / instances, route: 'mixed' }))
    await warmUp(b, specs)
    const run = record(b, {
      id: 'fixed-rate',
      scenario: 'fixed-rate',
      label: 'fixed-rate: 1,000 req/s (10 staggered instances)',
      connections: CONNECTIONS,
      overallRate: 1000,
      notes: ['the same mix as mixed-1000; 10 autocannon instances x 10 connections x 100 req/s, started 100 ms apart']
    }, await measure(b, specs, { staggerMs: 1000 / instances }))
    goal(b, {
      id: 'fixed-rate-p99',
      label: 'fixed 1,000 req/s: p99',
      measured: run.label,
      value: run.load.latency.p99,
      unit: 'ms',
      target: { op: '<', value: 25 },
      note: `achieved ${run.load.rps.toFixed(0)} req/s; p50 ${run.load.latency.p50.toFixed(2)} ms, max ${run.load.latency.max.toFixed(1)} ms`
    })
    await pairedWithSingleWrites(b, specs, 1000 / instances)
    await warmUp(b, [{ connections: CONNECTIONS, requests, overallRate: 1000 }])
    const burst = record(b, {
      id: 'fixed-rate-burst',
      scenario: 'fixed-rate',
      label: 'fixed-rate: 1,000 req/s (one instance, bursts each second)',
      connections: CONNECTIONS,
      overallRate: 1000,
      notes: ['autocannon overallRate 1000 over 100 connections = 10 req/s per connection, all sent at the top of each second']
    }, await measure(b, [{ connections: CONNECTIONS, requests, overallRate: 1000, route: 'mixed' }]))
    goal(b, {
      id: 'fixed-rate-burst-p99',
      label: 'fixed 1,000 req/s in 1 s bursts: p99',
      measured: burst.label,
      value: burst.load.latency.p99,
      unit: 'ms',
      target: undefined,
      reference: 25,
      note: `achieved ${burst.load.rps.toFixed(0)} req/s: what a burst of 100 concurrent requests costs`
    })
  }
}
