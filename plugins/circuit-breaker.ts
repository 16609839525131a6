/**
 * A circuit breaker for one database pool. Closed, every statement goes through and connection-class failures in
 * a row are counted; `failureThreshold` of them open it. Open, new statements are refused at once (no connect
 * attempt, no queueing behind a reconnect backoff), so requests get their 503 in microseconds instead of waiting
 * for a connection that cannot come. After `openMs` it is half-open: the next statement is let through as the
 * probe and every other one is still refused; the probe's outcome closes it (the database answered, even with an
 * SQL error) or opens it again for another `openMs`. Healthy traffic costs two comparisons per statement.
 */
export type BreakerState = 'closed' | 'open' | 'half_open'

export interface BreakerOptions {
  /** Connection-class failures in a row that open the breaker. */
  failureThreshold: number
  /** How long it stays open before one probe statement is let through. */
  openMs: number
  /** A probe that has not settled after this long no longer blocks the next one (bounded by the connect timeout). */
  probeTimeoutMs: number
  /** Decides which failures count: connection failures, not SQL errors or statement timeouts. */
  isConnectionFailure: (error: unknown) => boolean
  onStateChange?: (state: BreakerState) => void
  now?: () => number
}

/** The error a refused statement rejects with; errors.ts maps its code to 503 with Retry-After. */
export class CircuitOpenError extends Error {
  readonly code = 'DATABASE_CIRCUIT_OPEN'
  constructor () {
    super('The database is unreachable; the statement was not sent (circuit breaker open).')
    this.name = 'CircuitOpenError'
  }
}

/** What admit() hands out: `false` refuses; a ticket's settle() reports the statement's outcome exactly once. */
export interface Ticket {
  readonly probe: boolean
  settle: (error: unknown) => void
}

export class CircuitBreaker {
  state: BreakerState = 'closed'
  private failures = 0
  private openedAt = 0
  private probeStartedAt = -1
  private readonly options: BreakerOptions
  private readonly now: () => number

  constructor (options: BreakerOptions) {
    this.options = options
    this.now = options.now ?? (() => performance.now())
  }

  /** Called when a statement is about to need a connection. */
  admit (): Ticket | false {
    if (this.state === 'closed') return this.ticket(false)
    const now = this.now()
    if (this.state === 'open') {
      if (now - this.openedAt < this.options.openMs) return false
      this.transition('half_open')
    }
    if (this.probeStartedAt >= 0 && now - this.probeStartedAt < this.options.probeTimeoutMs) return false
    this.probeStartedAt = now
    return this.ticket(true)
  }

  /** True when a statement would be refused right now; takes no probe slot (for `begin`, which is not observed). */
  refusing (): boolean {
    return this.state !== 'closed'
  }

  private ticket (probe: boolean): Ticket {
    let settled = false
    return {
      probe,
      settle: (error) => {
        if (settled) return
        settled = true
        this.record(error, probe)
      }
    }
  }

  private record (error: unknown, probe: boolean) {
    const down = error !== undefined && this.options.isConnectionFailure(error)
    if (probe) this.probeStartedAt = -1
    if (!down) {
      // Any answer from the database, an SQL error included, shows it is reachable.
      this.failures = 0
      if (this.state !== 'closed' && probe) this.transition('closed')
      return
    }
    if (probe) {
      this.open()
      return
    }
    // Statements admitted before the breaker opened may still fail afterwards: only the probe moves it then.
    if (this.state !== 'closed') return
    this.failures++
    if (this.failures >= this.options.failureThreshold) this.open()
  }

  private open () {
    this.openedAt = this.now()
    this.failures = 0
    this.transition('open')
  }

  private transition (state: BreakerState) {
    if (this.state === state && state !== 'open') return
    const changed = this.state !== state
    this.state = state
    if (changed) this.options.onStateChange?.(state)
  }
}
