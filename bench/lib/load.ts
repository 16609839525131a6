// autocannon, driven programmatically, with our own latency recorder: autocannon's histogram rounds to whole
// milliseconds, and it cannot tell which route a response belonged to. Every response event is recorded here
// with its exact duration, under the route tag that setupRequest put in the connection's context.
import autocannon from 'autocannon'

export interface Percentiles { count: number, mean: number, p50: number, p90: number, p99: number, max: number }
export interface RouteStats extends Percentiles { statusCodes: Record<string, number> }

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
  /** By arrival time, when the recorder kept windows. */
  windows?: Window[]
}

/** One slice of a run's wall time: the responses that arrived in it, whatever their route. */
export interface Window extends Percentiles { fromS: number, non2xx: number }

/**
 * Latencies (ms) and status counts per route; with `windowMs`, also by arrival time in windows of that length
 * counted from the recorder's creation (the first minute of a process, ten seconds at a time).
 */
export class Recorder {
  private readonly routes = new Map<string, { ms: number[], codes: Record<string, number> }>()
  private readonly slices: Array<{ ms: number[], non2xx: number }> = []
  private readonly createdAt = performance.now()
  private readonly windowMs: number | undefined

  constructor (windowMs?: number) {
    this.windowMs = windowMs
  }

  record (route: string, status: number, ms: number) {
    let entry = this.routes.get(route)
    if (entry === undefined) this.routes.set(route, entry = { ms: [], codes: {} })
    entry.ms.push(ms)
    entry.codes[status] = (entry.codes[status] ?? 0) + 1
    if (this.windowMs !== undefined) {
      const index = Math.floor((performance.now() - this.createdAt) / this.windowMs)
      for (let i = this.slices.length; i <= index; i++) this.slices.push({ ms: [], non2xx: 0 })
      const slice = this.slices[index]!
      slice.ms.push(ms)
      if (status < 200 || status > 299) slice.non2xx++
    }
  }

  windows (): Window[] {
    const length = (this.windowMs ?? 0) / 1000
    return this.slices.map((slice, i) => ({ fromS: i * length, non2xx: slice.non2xx, ...percentiles(slice.ms) }))
  }

  all (): Percentiles {
    return percentiles([...this.routes.values()].flatMap((entry) => entry.ms))
  }

  perRoute (): Record<string, RouteStats> {
    const sorted = [...this.routes].sort(([a], [b]) => a.localeCompare(b, 'en', { numeric: true }))
    return Object.fromEntries(sorted.map(([route, entry]) => [route, { ...percentiles(entry.ms), statusCodes: entry.codes }]))
  }
}

export function percentiles (values: number[]): Percentiles {
  if (values.length === 0) return { count: 0, mean: 0, p50: 0, p90: 0, p99: 0, max: 0 }
  const sorted = Float64Array.from(values).sort()
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] ?? 0
  const sum = sorted.reduce((a, b) => a + b, 0)
  return { count: sorted.length, mean: sum / sorted.length, p50: at(0.5), p90: at(0.9), p99: at(0.99), max: sorted[sorted.length - 1] ?? 0 }
}

export interface LoadSpec {
  connections: number
  requests: autocannon.Request[]
  /** Tag for responses whose setupRequest left none in the context. */
  route: string
  /** Seconds; ignored when `amount` is set. */
  duration?: number | undefined
  /** Stop after this many requests. */
  amount?: number | undefined
  overallRate?: number | undefined
  /** Requests per second per connection: each connection waits for its answer, then for the rest of its second. */
  connectionRate?: number | undefined
}

interface ContextCarrier { requestIterator?: { context?: { route?: unknown } } }

/** Sets the route tag that the recorder files this request's response under. */
export function tagRoute (context: object, route: string) {
  (context as { route?: string }).route = route
}

/** Runs one autocannon instance; `recorder` may be shared by instances that run side by side. */
export function runLoad (url: string, spec: LoadSpec, recorder = new Recorder()): Promise<{ result: autocannon.Result, recorder: Recorder, wallS: number }> {
  return new Promise((resolve, reject) => {
    const started = performance.now()
    // Statuses are counted, never bailed on: a 429 or a 422 is part of what is measured.
    const options: autocannon.Options = { url, connections: spec.connections, requests: spec.requests, timeout: 10 }
    if (spec.amount !== undefined) options.amount = spec.amount
    else options.duration = spec.duration ?? 10
    if (spec.overallRate !== undefined) options.overallRate = spec.overallRate
    if (spec.connectionRate !== undefined) options.connectionRate = spec.connectionRate
    const instance = autocannon(options, (error, result) => {
      if (error !== null && error !== undefined) reject(error)
      else resolve({ result, recorder, wallS: (performance.now() - started) / 1000 })
    })
    instance.on('response', (client, statusCode, _bytes, responseTime) => {
      const tag = (client as unknown as ContextCarrier).requestIterator?.context?.route
      recorder.record(typeof tag === 'string' ? tag : spec.route, statusCode, responseTime)
    })
  })
}

/** Sums several autocannon results (instances run side by side over the same wall time) into one. */
export function summarize (results: autocannon.Result[], recorder: Recorder, wallS: number): LoadResult {
  const statusCodes: Record<string, number> = {}
  let requests = 0
  for (const result of results) {
    for (const [code, stat] of Object.entries(result.statusCodeStats ?? {})) {
      statusCodes[code] = (statusCodes[code] ?? 0) + (stat.count ?? 0)
      requests += stat.count ?? 0
    }
  }
  const sum = (field: 'errors' | 'timeouts' | 'non2xx') => results.reduce((total, result) => total + result[field], 0)
  const durationS = Math.max(...results.map((r) => r.duration), 0) || wallS
  const windows = recorder.windows()
  return {
    requests,
    durationS,
    rps: requests / durationS,
    latency: recorder.all(),
    statusCodes,
    non2xx: sum('non2xx'),
    errors: sum('errors'),
    timeouts: sum('timeouts'),
    perRoute: recorder.perRoute(),
    ...(windows.length > 0 ? { windows } : {})
  }
}
