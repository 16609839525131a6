// first-minute: the "day-5 load" (1,000 connections, each sending one request and then thinking until its next
// second, the production mix) against an API process that has just started, and against the same process after it
// sat idle longer than its pool's idle timeout; p99 per 10 s window, errors, RSS at start and end. With
// `--soak <minutes>` the load then keeps going on that process, and RSS per minute says whether memory settles.
//
// Each run lasts the whole minute in both modes: p99 over half a minute would hold the first seconds' warm-up to twice
// the weight the target gives it. Before the fresh process starts, the load generator itself runs the same load for
// a few seconds against the bench's long-running API: autocannon's own code is then optimised, as it is in a full
// bench run where this scenario comes last, and its start-up does not count against the process under test.
//
// The full run idles 11 minutes: past the pool's idle timeout when one is set (DATABASE_IDLE_TIMEOUT_S; the default
// keeps idle connections), PgBouncer's server_idle_timeout (600 s) and the user cache's TTL (300 s), as a quiet night
// would. `--quick` idles 35 s, past the feed cache's TTL (30 s plus jitter); when the API runs with a pool idle
// timeout, quick starts the process with it shortened to 3 s so that it passes too. PgBouncer's server_idle_timeout
// and the user cache's TTL do not pass in quick mode. BENCH_FIRST_MINUTE_IDLE_S sets another idle period, to find
// which of those a slow idle minute waits on.
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { fileURLToPath } from 'node:url'
import { goal, measure, record, sleep, warmUp, type Bench, type Scenario } from '../lib/context.ts'
import type { LoadSpec } from '../lib/load.ts'
import { startNodeServer, type NodeServer } from '../lib/processes.ts'
import type { RunRecord } from '../lib/report.ts'
import { rssMb } from '../lib/samplers.ts'
import { mixedRequests } from '../lib/traffic.ts'

export const WINDOW_S = 10
/** The day-5 load's connections; BENCH_FIRST_MINUTE_CONNECTIONS lowers it on a machine that cannot carry 1,000 req/s. */
const CONNECTIONS = Number(process.env.BENCH_FIRST_MINUTE_CONNECTIONS ?? 1000)
const INSTANCES = 10
/** p99 over the first minute of a process, fresh or idle, held to the issue's bound. */
const FIRST_MINUTE_P99_MS = 500

/** Least-squares slope of `values` (one per minute), in units per minute. */
export function slopePerStep (values: number[]): number {
  const n = values.length
  if (n < 2) return 0
  const meanX = (n - 1) / 2
  const meanY = values.reduce((a, b) => a + b, 0) / n
  let num = 0
  let den = 0
  values.forEach((y, x) => { num += (x - meanX) * (y - meanY); den += (x - meanX) ** 2 })
  return num / den
}

/**
 * The day-5 load: autocannon paces each connection with its own 1 s timer, and the connections of one instance
 * start together, so one instance of 1,000 would send all its requests at the top of each second. Ten instances of
 * 100, started 100 ms apart, spread the arrivals over the second as think time does.
 */
function dayFive (b: Bench, durationS: number): { specs: LoadSpec[], staggerMs: number } {
  const requests = mixedRequests(b.world)
  const specs = Array.from({ length: INSTANCES }, () => ({ connections: CONNECTIONS / INSTANCES, requests, connectionRate: 1, duration: durationS, route: 'mixed' }))
  return { specs, staggerMs: 1000 / INSTANCES }
}

/**
 * The load generator's own event-loop delay, its maximum per window: autocannon times a response when its callback
 * runs, so a stalled client adds its stall to every route's latency alike.
 */
function clientLoopDelay (windowMs: number) {
  const histogram = monitorEventLoopDelay({ resolution: 10 })
  histogram.enable()
  const maxima: number[] = []
  const timer = setInterval(() => { maxima.push(histogram.max / 1e6); histogram.reset() }, windowMs)
  return {
    stop (): number[] {
      clearInterval(timer)
      maxima.push(histogram.max / 1e6)
      histogram.disable()
      return maxima
    }
  }
}

async function firstMinute (b: Bench, server: NodeServer, id: string, label: string, durationS: number, notes: string[]): Promise<RunRecord> {
  const startMb = rssMb(server.pid)
  const { specs, staggerMs } = dayFive(b, durationS)
  const clientDelay = clientLoopDelay(WINDOW_S * 1000)
  let clientMaxima: number[]
  let measured
  try {
    measured = await measure(b, specs, { server, staggerMs, windowMs: WINDOW_S * 1000, scrapeMetrics: true })
  } finally {
    clientMaxima = clientDelay.stop()
  }
  const endMb = rssMb(server.pid)
  const caches = Object.entries(measured.samples.appCache).map(([name, c]) => `${name} ${((c.hitShare ?? 0) * 100).toFixed(0)} % of ${c.hit + c.miss}`).join(', ')
  const statements = Object.entries(measured.samples.sqlStatements).sort(([, x], [, y]) => y.count * y.meanMs - x.count * x.meanMs).slice(0, 4)
    .map(([name, v]) => `${name} ${v.meanMs.toFixed(1)} ms x ${v.count}`).join(', ')
  const run = record(b, {
    id,
    scenario: 'first-minute',
    label,
    connections: CONNECTIONS,
    overallRate: CONNECTIONS,
    notes: [...notes, `cache hits: ${caches || '-'}; SQL statements, mean time including the wait for a pooled connection: ${statements || '-'}`,
      `the load generator's longest event-loop delay per ${WINDOW_S} s window: ${clientMaxima.map((ms) => ms.toFixed(0)).join(', ')} ms`],
    rss: { startMb, endMb }
  }, measured)
  const windows = (run.load.windows ?? []).map((w) => `${w.fromS}-${w.fromS + WINDOW_S} s: ${w.p99.toFixed(0)} ms (${w.count})`).join(', ')
  b.log(`${label}: p99 per ${WINDOW_S} s window: ${windows}; RSS ${startMb.toFixed(0)} -> ${endMb.toFixed(0)} MB; ` +
    `load generator's longest event-loop delay per window: ${clientMaxima.map((ms) => ms.toFixed(0)).join(', ')} ms`)
  goal(b, {
    id: `${id}-p99`,
    label: `${label}: p99`,
    measured: run.label,
    value: run.load.latency.p99,
    unit: 'ms',
    target: { op: '<', value: FIRST_MINUTE_P99_MS },
    note: `p99 per ${WINDOW_S} s window: ${windows}; ${run.load.errors} socket errors, RSS ${startMb.toFixed(0)} -> ${endMb.toFixed(0)} MB`
  })
  return run
}

/** The load kept going for `minutes`; RSS read every minute, and its slope over the last half. */
async function soak (b: Bench, server: NodeServer, minutes: number) {
  const perMinuteMb: number[] = [rssMb(server.pid)]
  const timer = setInterval(() => { perMinuteMb.push(rssMb(server.pid)) }, 60_000)
  const { specs, staggerMs } = dayFive(b, minutes * 60)
  let measured
  try {
    measured = await measure(b, specs, { server, staggerMs, windowMs: 60_000, scrapeMetrics: true })
  } finally {
    clearInterval(timer)
  }
  perMinuteMb.push(rssMb(server.pid))
  const lastHalf = perMinuteMb.slice(Math.floor(perMinuteMb.length / 2))
  const slopeMbPerMin = slopePerStep(lastHalf)
  const run = record(b, {
    id: 'first-minute-soak',
    scenario: 'first-minute',
    label: `first-minute: soak, ${minutes} min of the day-5 load`,
    connections: CONNECTIONS,
    overallRate: CONNECTIONS,
    notes: [`RSS per minute (MB): ${perMinuteMb.map((v) => v.toFixed(0)).join(', ')}; slope over the last half ${slopeMbPerMin.toFixed(2)} MB/min`],
    rss: { startMb: perMinuteMb[0]!, endMb: perMinuteMb.at(-1)!, perMinuteMb, slopeMbPerMin }
  }, measured)
  goal(b, {
    id: 'first-minute-soak-rss-slope',
    label: 'soak: RSS slope over the last half',
    measured: run.label,
    value: slopeMbPerMin,
    unit: 'count',
    target: undefined,
    note: `MB per minute; RSS per minute (MB): ${perMinuteMb.map((v) => v.toFixed(0)).join(', ')}; p99 per minute: ${(run.load.windows ?? []).map((w) => w.p99.toFixed(0)).join(', ')} ms`
  })
}

export const scenario: Scenario = {
  id: 'first-minute',
  async run (b) {
    const durationS = 60
    const idleS = Number(process.env.BENCH_FIRST_MINUTE_IDLE_S ?? (b.quick ? 35 : 11 * 60))
    const lifetimeS = 2 * durationS + idleS + (b.soakMinutes ?? 0) * 60 + 300
    const shortened = b.quick && Number(b.serverEnv.DATABASE_IDLE_TIMEOUT_S ?? 0) > 0
    const env = { ...b.serverEnv, BENCH_SERVER_MAX_S: String(lifetimeS), ...(shortened ? { DATABASE_IDLE_TIMEOUT_S: '3' } : {}) }
    await warmUp(b, dayFive(b, 5).specs, b.api.url, 5)
    const server = await startNodeServer(fileURLToPath(new URL('../server.ts', import.meta.url)), env, { nodeArgs: b.serverNodeArgs })
    b.children.add(server)
    try {
      await firstMinute(b, server, 'first-minute-fresh', 'first-minute: fresh process', durationS, [
        `the day-5 load (${CONNECTIONS} connections x 1 req/s, the mixed-1000 mix) as soon as /health/ready answers 200 on a new bench/server.ts process`
      ])
      b.log(`first-minute: idle ${idleS} s`)
      await sleep(idleS * 1000)
      await firstMinute(b, server, 'first-minute-idle', `first-minute: after ${idleS >= 60 ? `${idleS / 60} min` : `${idleS} s`} idle`, durationS, [
        `the same load on the same process after ${idleS} s without requests${shortened ? ` (quick: started with DATABASE_IDLE_TIMEOUT_S=3 instead of ${b.serverEnv.DATABASE_IDLE_TIMEOUT_S}, so the pool's idle timeout passed)` : ''}` +
          (b.quick ? '; PgBouncer\'s server_idle_timeout (600 s) and the user cache\'s TTL did not pass' : '')
      ])
      if (b.soakMinutes !== undefined) await soak(b, server, b.soakMinutes)
    } finally {
      await server.stop()
      b.children.delete(server)
    }
  }
}
