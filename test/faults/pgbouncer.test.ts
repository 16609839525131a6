// PgBouncer stopped in the middle of a load and started again. Runs after the main suite, alone
// (scripts/test.ts), against the stack that script controls.
import { monitorEventLoopDelay } from 'node:perf_hooks'
import t from 'tap'
import { buildTestApp, createUser, hasLocalStack, testSql } from '../helper.ts'
import { outageUnderLoad, untilReady } from './support.ts'

const skip = hasLocalStack ? false : 'needs the local stack started by scripts/test.ts'

t.test('PgBouncer stopped mid-load: fast 503s, recovery by itself, every key applied exactly once', { skip }, async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  await untilReady(app)
  const users = [await createUser(app), await createUser(app), await createUser(app), await createUser(app)]
  // Connection refused and reset come back at once; the slowest honest answer is a connect attempt that PgBouncer
  // accepted while shutting down, failed by DATABASE_CONNECT_TIMEOUT_S (5 s). 7 s is that plus slack, not a hang.
  // When the breaker opened, from its state gauge: the 503s from then on are the breaker's own.
  let openedAt = Infinity
  const gauge = app.metrics.dbCircuitState
  const set = gauge.set.bind(gauge) as (labels: { pool: string }, value: number) => void
  gauge.set = ((labels: { pool: string }, value: number) => {
    if (value === 2 && openedAt === Infinity) openedAt = performance.now()
    set(labels, value)
  }) as typeof gauge.set
  // The load generator shares this process's event loop with the app: when the machine is overloaded, every
  // answer (a 503 included) waits for the loop. Measured so that a slow machine is told apart from a slow path.
  const lag = monitorEventLoopDelay({ resolution: 5 })
  lag.enable()
  const { client, recoveryMs } = await outageUnderLoad(t, {
    fault: 'pgbouncer stopped',
    service: 'pgbouncer',
    outageMs: 2000,
    latencyBoundMs: 7000,
    app,
    users,
    sql
  })
  // The circuit breaker: while PgBouncer refuses connections, new requests fail at once instead of
  // queueing behind reconnect attempts, and one probe at a time notices its return.
  const percentile = (values: number[], p: number) => {
    const sorted = [...values].sort((a, b) => a - b)
    return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? -1
  }
  const outage503 = client.samples.filter((s) => s.phase === 'outage' && s.status === 503 && !s.route.startsWith('GET /health'))
  const breaker503 = outage503.filter((s) => s.endedAt - s.ms >= openedAt).map((s) => s.ms)
  const all503 = outage503.map((s) => s.ms)
  const refused = (await app.metrics.dbCircuitRefused.get()).values[0]?.value ?? 0
  const state = (await app.metrics.dbCircuitState.get()).values.find((v) => v.labels.pool === 'primary')?.value
  const p99 = percentile(breaker503, 0.99)
  lag.disable()
  const lagP99Ms = lag.percentile(99) / 1e6
  t.comment(JSON.stringify({
    breaker: {
      outage503s: all503.length,
      p50Ms: round(percentile(all503, 0.5)),
      p99Ms: round(percentile(all503, 0.99)),
      maxMs: round(Math.max(...all503)),
      afterOpen503s: breaker503.length,
      afterOpenP50Ms: round(percentile(breaker503, 0.5)),
      afterOpenP99Ms: round(p99),
      refusedStatements: refused,
      recoveryMs,
      eventLoopLagP99Ms: round(lagP99Ms),
      eventLoopLagMaxMs: round(lag.max / 1e6)
    }
  }))
  t.ok(breaker503.length >= 20, `many requests met the open breaker as 503s (${breaker503.length})`)
  t.ok(refused > 0, `the breaker opened and refused statements without sending them (${refused})`)
  // What the breaker changes is the order of magnitude: without it a request waited for the connect timeout (up to
  // 2.5 s seen, 5 s possible); with it a refusal is answered at once. The test holds that (under 500 ms at p99, on
  // any machine, however busy); the figure itself (target 50 ms, about 20 ms on a quiet machine) is a timing
  // target, so it is reported in the comment above and measured by the bench, not asserted on a shared CI core.
  t.ok(p99 >= 0 && p99 < 500, `p99 of the 503s once the breaker is open is far below the connect timeout (${round(p99)} ms; target 50 ms, event loop p99 ${round(lagP99Ms)} ms)`)
  t.ok(recoveryMs >= 0 && recoveryMs < 2000, `recovered within 2 s of PgBouncer's return (${recoveryMs} ms)`)
  t.equal(state, 0, 'the breaker is closed again')
})

const round = (ms: number) => Math.round(ms * 10) / 10
