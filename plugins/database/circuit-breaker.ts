/**
 * A circuit breaker for one database pool.
 *
 * - Closed: every statement goes through; connection-class failures in a row are counted (any answer from the
 *   database, an SQL error or a statement timeout included, resets the run). `failureThreshold` of them open it.
 * - Open: new statements are refused at once (no connect attempt, no queueing behind postgres.js's reconnect
 *   backoff), so requests get their 503 in microseconds instead of waiting for a connection that cannot come.
 * - Half-open, `openMs` after opening: the breaker sends one probe of its own (`select 1` through the same pool)
 *   while statements are still refused; no caller waits on it. An answer closes the breaker; a connection failure
 *   (or no answer within `probeTimeoutMs`) opens it for another `openMs`.
 *
 * Healthy traffic costs one comparison per statement and a closure to report its outcome; no extra round trip.
 */
export type BreakerState = 'closed' | 'open' | 'half_open'

export interface BreakerOptions {
  /** Connection-class failures in a row that open the breaker. */
  failureThreshold: number
  /** How long it stays open before the probe is sent. */
  openMs: number
  /** A probe that has not settled after this long counts as failed. */
  probeTimeoutMs: number
  /** Decides which failures count: connection failures, not SQL errors or statement timeouts. */
  isConnectionFailure: (error: unknown) => boolean
  /** Sends one statement through the pool; resolves when the database answered. */
  probe: () => Promise<unknown>
  onStateChange?: (state: BreakerState, previous: BreakerState) => void
}

/** The error a refused statement rejects with; errors.ts maps its code to 503 with Retry-After. */
export class CircuitOpenError extends Error {
  readonly code = 'DATABASE_CIRCUIT_OPEN'
  constructor () {
    super('The database is unreachable; the statement was not sent (circuit breaker open).')
    this.name = 'CircuitOpenError'
  }
}

/** Reports one statement's outcome; calling it again does nothing (postgres.js may settle a query twice). */
export type Settle = (error: unknown) => void

export class CircuitBreaker {
  state: BreakerState = 'closed'
  private failures = 0
  private timer: NodeJS.Timeout | undefined
  private stopped = false
  private readonly options: BreakerOptions

  constructor (options: BreakerOptions) {
    this.options = options
  }

  /** Called when a statement is about to need a connection: false refuses it, else report its outcome. */
  admit (): Settle | false {
    if (this.state !== 'closed') return false
    let settled = false
    return (error) => {
      if (settled) return
      settled = true
      this.record(error)
    }
  }

  /** True while statements are refused; for `begin` and `reserve`, whose outcome is not observed. */
  refusing (): boolean {
    return this.state !== 'closed'
  }

  /** The pool is ending: no more probes. */
  stop () {
    this.stopped = true
    clearTimeout(this.timer)
  }

  private record (error: unknown) {
    if (error === undefined || !this.options.isConnectionFailure(error)) {
      this.failures = 0
      return
    }
    // Statements admitted before the breaker opened may still fail afterwards: only the probe moves it then.
    if (this.state !== 'closed') return
    this.failures++
    if (this.failures >= this.options.failureThreshold) this.open()
  }

  private open () {
    this.failures = 0
    this.transition('open')
    clearTimeout(this.timer)
    if (this.stopped) return
    this.timer = setTimeout(() => { this.probe().catch(() => {}) }, this.options.openMs)
    // A breaker must never keep the process alive (tests, CLI scripts, a shutdown in progress).
    this.timer.unref()
  }

  private async probe () {
    if (this.stopped) return
    this.transition('half_open')
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((resolve, reject) => {
      timer = setTimeout(() => reject(Object.assign(new Error('probe timed out'), { code: 'CONNECT_TIMEOUT' })), this.options.probeTimeoutMs)
      timer.unref()
    })
    let down: boolean
    try {
      await Promise.race([this.options.probe(), timeout])
      down = false
    } catch (error) {
      down = this.options.isConnectionFailure(error)
    } finally {
      clearTimeout(timer)
    }
    if (this.stopped) return
    if (down) this.open()
    else this.transition('closed')
  }

  private transition (state: BreakerState) {
    if (this.state === state) return
    const previous = this.state
    this.state = state
    this.options.onStateChange?.(state, previous)
  }
}
