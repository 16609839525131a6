// What one `npm run bench` carries from set-up to report (the Bench context every scenario receives), and the
// helpers that measure with it: warm-up, a measured run under the sampler, the in-flight check after it, the run
// record, and the checks (ratios and targets) of the report.
import type { Redis } from 'ioredis'
import type postgres from 'postgres'
import type { AuthOptions } from '../../plugins/auth/index.ts'
import { Recorder, runLoad, summarize, type LoadResult, type LoadSpec } from './load.ts'
import type { NodeServer } from './processes.ts'
import { compare, cpuPerRequest, type BaselineRecord, type Comparison, type RunRecord } from './report.ts'
import { startSampler, type SampleResult } from './samplers.ts'
import { stackPids, type BenchEnv, type SeedResult, type SeedSizes } from './setup.ts'
import type { Caller, TrafficWorld } from './traffic.ts'

export const BIG_CONNECTIONS = 1000
/**
 * Seconds of load a newly started API process gets before anything is measured on it: at 1,000 connections its first
 * seconds are a backlog of their own (4-7 s on the 2-core machine), which first-minute measures and the steady-state
 * scenarios must not. Both modes, since the full mode's warm-up is shorter than that too.
 */
export const FRESH_PROCESS_WARM_S = 10
export const CONNECTIONS = 100
export const PGBENCH_CLIENTS = 50

/** One file of bench/scenarios: `id` is what `--only` selects. */
export interface Scenario {
  id: string
  run: (bench: Bench) => Promise<void>
}

export interface Bench {
  quick: boolean
  sizes: SeedSizes
  /** Seconds: long runs, paired runs (compared with each other), warm-ups, pgbench runs. */
  time: { long: number, pair: number, warm: number, pgbench: number }
  /** `--soak <minutes>`: how long first-minute keeps its load going afterwards to watch RSS. */
  soakMinutes?: number | undefined
  env: BenchEnv
  seeded: SeedResult
  /** Superuser connection to the maintenance database (drop/create, pg_stat_activity). */
  admin: postgres.Sql
  redis: Redis
  api: NodeServer
  /** The API's environment, for scenarios that start the real entry point with it. */
  serverEnv: NodeJS.ProcessEnv
  /** Node's flags for every API process the bench starts (`--cpu-prof`: a CPU profile of each). */
  serverNodeArgs: string[]
  jwt: AuthOptions
  metricsToken: string
  callers: Caller[]
  abuser: Caller
  bigUser: Caller
  smallUser: Caller
  world: TrafficWorld
  /** Started child processes, stopped on SIGINT/SIGTERM. */
  children: Set<NodeServer>
  log: (line: string) => void
  runs: RunRecord[]
  baselines: BaselineRecord[]
  comparisons: Comparison[]
  /** Runs after which an *_in_flight gauge of the API did not return to 0. */
  inFlightLeaks: string[]
}

export interface Measured { load: LoadResult, samples: SampleResult }

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * Starts sampling around the API, or around another server's pid (with its metrics when `metricsUrl` is given: an
 * API process of its own), or around no process.
 */
export function sample (b: Bench, target: { pid: number | undefined, metricsUrl?: string } | 'api' = 'api') {
  const metricsUrl = target === 'api' ? `${b.api.url}/metrics` : target.metricsUrl
  return startSampler({
    admin: b.admin,
    database: b.env.database,
    redis: b.redis,
    ...(metricsUrl === undefined ? {} : { metricsUrl, metricsToken: b.metricsToken }),
    groups: { apiPid: () => target === 'api' ? b.api.pid : target.pid, ...stackPids(b.env.stackDir) }
  })
}

export async function warmUp (b: Bench, specs: Array<Omit<LoadSpec, 'route'>>, url = b.api.url, durationS = b.time.warm) {
  await Promise.all(specs.map((spec) => runLoad(url, { ...spec, route: 'warm-up', amount: undefined, duration: durationS })))
}

/** Runs several autocannon instances side by side (started `staggerMs` apart) under one sampler. */
export async function measure (b: Bench, specs: LoadSpec[], options: { staggerMs?: number, server?: NodeServer, windowMs?: number, scrapeMetrics?: boolean } = {}): Promise<Measured> {
  const server = options.server ?? b.api
  const s = await sample(b, server === b.api ? 'api' : { pid: server.pid, ...(options.scrapeMetrics === true ? { metricsUrl: `${server.url}/metrics` } : {}) })
  const began = performance.now()
  const recorder = new Recorder(options.windowMs)
  const results = await Promise.all(specs.map(async (spec, i) => {
    if (i > 0) await sleep((options.staggerMs ?? 0) * i)
    return (await runLoad(server.url, { duration: b.time.long, ...spec }, recorder)).result
  }))
  const load = summarize(results, recorder, (performance.now() - began) / 1000)
  const samples = await s.stop()
  if (server.child.exitCode !== null) throw new Error(`the API exited with ${server.child.exitCode} during a run`)
  if (server === b.api) await checkInFlightSettled(b, specs.map((spec) => spec.route).join(' + '))
  return { load, samples }
}

/**
 * After each run against the API (autocannon closes its connections at the end, some with requests in flight):
 * every `*_in_flight` gauge returns to 0 within a few seconds, the scrape itself aside. A gauge that stays up, or
 * goes negative, is a leak in the accounting that would page someone during an incident.
 */
async function checkInFlightSettled (b: Bench, label: string, timeoutMs = 5000) {
  const started = performance.now()
  let gauges: Record<string, number> = {}
  while (performance.now() - started < timeoutMs) {
    const text = await (await fetch(`${b.api.url}/metrics`, { headers: { authorization: `Bearer ${b.metricsToken}` } })).text()
    gauges = {}
    for (const match of text.matchAll(/^([a-z_:]+_in_flight)(?:\{[^}]*\})? (\S+)$/gm)) gauges[match[1]!] = (gauges[match[1]!] ?? 0) + Number(match[2])
    // The scrape is itself a request in flight.
    if (gauges.ledger_http_requests_in_flight !== undefined) gauges.ledger_http_requests_in_flight -= 1
    if (Object.values(gauges).every((value) => value === 0)) return
    await sleep(100)
  }
  b.inFlightLeaks.push(`${label}: ${JSON.stringify(gauges)}`)
  b.log(`in-flight gauges did not return to 0 after ${label}: ${JSON.stringify(gauges)}`)
}

export function record (b: Bench, run: Omit<RunRecord, 'load' | 'samples' | 'notes'> & { notes?: string[] }, m: Measured): RunRecord {
  const recorded: RunRecord = { notes: [], ...run, load: m.load, samples: m.samples }
  b.runs.push(recorded)
  const l = m.load
  const cpu = Object.fromEntries(Object.entries(m.samples.cpu).map(([k, v]) => [k, Number(v.toFixed(2))]))
  b.log(`${run.label}: ${l.rps.toFixed(0)} req/s, p50 ${l.latency.p50.toFixed(2)} ms, p99 ${l.latency.p99.toFixed(2)} ms, max ${l.latency.max.toFixed(0)} ms, ` +
    `statuses ${JSON.stringify(l.statusCodes)}, errors ${l.errors} (timeouts ${l.timeouts}), peak PG ${m.samples.peakPgConnections}, ` +
    `RSS ${m.samples.peakApiRssMb.toFixed(0)} MB, cpu ${JSON.stringify(cpu)}`)
  return recorded
}

/** The item whose value is the median (the lower middle of an even count): paired rounds stand for their comparison by it. */
export function medianBy<T> (items: readonly T[], value: (item: T) => number): T | undefined {
  return items.toSorted((x, y) => value(x) - value(y))[Math.floor((items.length - 1) / 2)]
}

export const findRun = (b: Bench, id: string) => b.runs.find((r) => r.id === id)
export const findBaseline = (b: Bench, id: string) => b.baselines.find((r) => r.id === id)

/** Either side of a comparison: a scenario run or a baseline. */
export interface Side { label: string, rps: number, samples: SampleResult | undefined }
export const side = (r: RunRecord | BaselineRecord): Side => ({ label: r.label, rps: 'load' in r ? r.load.rps : r.rps, samples: r.samples })

export function check (b: Bench, c: Omit<Comparison, 'met'>) {
  b.comparisons.push(compare(c))
}

/** A single value held to a bound (a count, a latency, a rate), with no measured reference. */
export function goal (b: Bench, c: { id: string, label: string, measured: string, value: number, unit: Comparison['unit'], target: Comparison['target'], reference?: number, note: string }) {
  check(b, { ...c, reference: '', measuredValue: c.value, referenceValue: c.reference ?? c.target?.value ?? 0 })
}

/** Throughput: measured req/s over reference req/s (above 1: the measured side is faster). */
export function ratio (b: Bench, id: string, label: string, measured: Side, reference: Side, target: number | undefined, note: string) {
  const bound = target === undefined ? undefined : { op: '>=' as const, value: target }
  check(b, { id, label, measured: measured.label, reference: reference.label, measuredValue: measured.rps, referenceValue: reference.rps, value: measured.rps / reference.rps, unit: 'ratio', target: bound, note })
}

/**
 * The same comparison by CPU cost instead of throughput: reference CPU ms per request / measured CPU ms per request
 * (so, like a throughput ratio, above 1 means the measured side is cheaper). Robust to other work on the machine.
 */
export function cpuRatio (b: Bench, id: string, label: string, measured: Side, reference: Side, part: 'api' | 'db' | 'stack', note: string) {
  const m = cpuPerRequest(measured.samples, measured.rps)
  const r = cpuPerRequest(reference.samples, reference.rps)
  if (m === undefined || r === undefined || m[part] <= 0) return
  const detail = `${m[part].toFixed(3)} vs ${r[part].toFixed(3)} CPU ms per request; ${note}`
  check(b, { id: `${id}-cpu`, label: `${label} (by ${part} CPU ms per request)`, measured: measured.label, reference: reference.label, measuredValue: m[part], referenceValue: r[part], value: r[part] / m[part], unit: 'ratio', target: undefined, note: detail })
}

/** The API process's CPU per request, absolute, on the bench machine. */
export function apiCpuGoal (b: Bench, id: string, label: string, run: RunRecord, targetMs: number) {
  const per = cpuPerRequest(run.samples, run.load.rps)
  if (per === undefined) return
  const note = `${per.api.toFixed(3)} ms at ${run.load.rps.toFixed(0)} req/s (API process CPU seconds / requests)`
  goal(b, { id, label, measured: run.label, value: per.api, unit: 'ms', target: { op: '<=', value: targetMs }, note })
}
