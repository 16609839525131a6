// autocannon, driven programmatically, with our own latency recorder: autocannon's histogram rounds to whole
// milliseconds, and it cannot tell which route a response belonged to. Every response event is recorded here
// with its exact duration, under the route tag that setupRequest put in the connection's context.
import autocannon from 'autocannon'

export interface Percentiles {
  count: number
  mean: number
  p50: number
  p90: number
  p99: number
  max: number
}

export interface RouteStats extends Percentiles {
  statusCodes: Record<string, number>
}

export interface LoadResult {
  requests: number
  durationS: number
  rps: number
  latency: Percentiles
  statusCodes: Record<string, number>
  non2xx: number
  /** autocannon's error count: socket errors (refused, reset) and timeouts together. */
  errors: number
  timeouts: number
  perRoute: Record<string, RouteStats>
}

/** Growable list of latencies (ms) per route, plus status counts. */
export class Recorder {
  private readonly latencies = new Map<string, number[]>()
  private readonly statuses = new Map<string, Record<string, number>>()

  record (route: string, status: number, ms: number) {
    let list = this.latencies.get(route)
    if (list === undefined) {
      list = []
      this.latencies.set(route, list)
      this.statuses.set(route, {})
    }
    list.push(ms)
    const codes = this.statuses.get(route)!
    codes[status] = (codes[status] ?? 0) + 1
  }

  all (): Percentiles {
    const merged: number[] = []
    for (const list of this.latencies.values()) for (const ms of list) merged.push(ms)
    return percentiles(merged)
  }

  routes (): Record<string, RouteStats> {
    const out: Record<string, RouteStats> = {}
    for (const [route, list] of [...this.latencies].sort(([a], [b]) => a.localeCompare(b, 'en', { numeric: true }))) {
      out[route] = { ...percentiles(list), statusCodes: this.statuses.get(route) ?? {} }
    }
    return out
  }
}

export function percentiles (values: number[]): Percentiles {
  if (values.length === 0) return { count: 0, mean: 0, p50: 0, p90: 0, p99: 0, max: 0 }
  const sorted = Float64Array.from(values).sort()
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] ?? 0
  let sum = 0
  for (const v of sorted) sum += v
  return {
    count: sorted.length,
    mean: sum / sorted.length,
    p50: at(0.5),
    p90: at(0.9),
    p99: at(0.99),
    max: sorted[sorted.length - 1] ?? 0
  }
}

export interface LoadSpec {
  url: string
  connections: number
  /** Seconds; ignored when `amount` is set. */
  duration?: number
  /** Stop after this many requests. */
  amount?: number
  overallRate?: number
  requests: autocannon.Request[]
  /** Route tag used when setupRequest left none in the context. */
  defaultRoute: string
  timeoutS?: number
}

interface ContextCarrier { requestIterator?: { context?: { route?: unknown } } }

/** Sets the route tag that the recorder files this request's response under. */
export function tagRoute (context: object, route: string) {
  (context as { route?: string }).route = route
}

/** Runs one autocannon instance; `recorder` may be shared by instances that run side by side. */
export function runLoad (spec: LoadSpec, recorder = new Recorder()): Promise<{ result: autocannon.Result, recorder: Recorder, wallS: number }> {
  return new Promise((resolve, reject) => {
    const started = performance.now()
    const options: autocannon.Options = {
      url: spec.url,
      connections: spec.connections,
      requests: spec.requests,
      // Statuses are counted, never bailed on: a 429 or a 422 is part of what is measured.
      timeout: spec.timeoutS ?? 10
    }
    if (spec.amount !== undefined) options.amount = spec.amount
    else options.duration = spec.duration ?? 10
    if (spec.overallRate !== undefined) options.overallRate = spec.overallRate
    const instance = autocannon(options, (error, result) => {
      if (error !== null && error !== undefined) reject(error)
      else resolve({ result, recorder, wallS: (performance.now() - started) / 1000 })
    })
    instance.on('response', (client, statusCode, _bytes, responseTime) => {
      const tag = (client as unknown as ContextCarrier).requestIterator?.context?.route
      recorder.record(typeof tag === 'string' ? tag : spec.defaultRoute, statusCode, responseTime)
    })
  })
}

/** Sums several autocannon results (instances run side by side over the same wall time) into one. */
export function summarize (results: autocannon.Result[], recorder: Recorder, wallS: number): LoadResult {
  const statusCodes: Record<string, number> = {}
  let requests = 0
  let errors = 0
  let timeouts = 0
  let non2xx = 0
  for (const result of results) {
    errors += result.errors
    timeouts += result.timeouts
    non2xx += result.non2xx
    for (const [code, stat] of Object.entries(result.statusCodeStats ?? {})) {
      statusCodes[code] = (statusCodes[code] ?? 0) + (stat.count ?? 0)
      requests += stat.count ?? 0
    }
  }
  const durationS = Math.max(...results.map((r) => r.duration), 0) || wallS
  return {
    requests,
    durationS,
    rps: requests / durationS,
    latency: recorder.all(),
    statusCodes,
    non2xx,
    errors,
    timeouts,
    perRoute: recorder.routes()
  }
}
