import { context, INVALID_SPAN_CONTEXT, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Context, type Span } from '@opentelemetry/api'
import type { Sql } from '../../plugins/database/index.ts'
import { MAX_BATCH, postTransaction, postTransactions, type PostOutcome, type PostRequest, type PostResult } from './repository.ts'

const tracer = trace.getTracer('ledger-api/ledger')

/** SQLSTATEs that guarantee the failed statement wrote nothing and that a retry may succeed: deadlock, serialization. */
const RETRYABLE = new Set(['40P01', '40001'])
const isRetryable = (error: unknown) => RETRYABLE.has(String((error as { code?: unknown } | null)?.code))
const isRetryableResult = (result: PostResult | undefined) => result !== undefined && !result.ok && isRetryable(result.error)

/** A single call that loses a deadlock (only possible against a batch, on a shared key or reference) is tried this often. */
const SINGLE_ATTEMPTS = 3

interface Waiting {
  request: PostRequest
  /** The request's async context: its server span (for links) and whatever else rides in it. */
  context: Context
  resolve: (outcome: PostOutcome) => void
  reject: (error: unknown) => void
}

export interface GroupCommitOptions {
  sql: Sql
  keyTtlS: number
  /** The most requests one database call carries (1: every request is its own post_transaction() call). */
  maxBatch: number
  /**
   * The most calls this process keeps in flight at once. The first takes whatever waits; each further one leaves
   * only with a full batch (maxBatch requests waiting), so a backlog drains in parallel while a light load still
   * makes one call at a time with everything that queued behind it.
   */
  maxInFlight: number
  /** Told the size of every call it makes (1 for a single post_transaction()). */
  observeBatch?: (size: number) => void
  /** Told the queue's length whenever it changes. */
  observeQueue?: (length: number) => void
}

/**
 * Coalesces concurrent money writes into fewer database calls (group commit). A request leaves at once when no call
 * is in flight, alone, through post_transaction(): nothing ever waits for a timer. While a call is in flight,
 * requests queue; when it returns, everything queued (up to maxBatch) leaves as one post_transactions() call, one
 * round trip and one commit for all of them. Once a full batch waits, it leaves at once on a further call, up to
 * maxInFlight: a call is slowest when the database is busiest (it also waits for a pooled connection behind the
 * reads), and a backlog of writes held to one call at a time would then wait seconds while reads do not. Each
 * request still gets its own answer: its refusal is its own, and it is exactly what its single call would have
 * given.
 *
 * A batch that fails as a whole with an error guaranteeing nothing was written (deadlock, serialization failure) is
 * retried request by request; any other failure (connection lost, timeout) may have committed, so each request fails
 * as its single call would, and the client's retry with the same Idempotency-Key is what makes it safe.
 */
export class GroupCommit {
  readonly #options: GroupCommitOptions
  readonly #queue: Waiting[] = []
  #inFlight = 0

  constructor (options: GroupCommitOptions) {
    if (!Number.isInteger(options.maxBatch) || options.maxBatch < 1 || options.maxBatch > MAX_BATCH) {
      throw new RangeError(`maxBatch must be 1 to ${MAX_BATCH}`)
    }
    if (!Number.isInteger(options.maxInFlight) || options.maxInFlight < 1) throw new RangeError('maxInFlight must be at least 1')
    this.#options = options
  }

  /** Posts one request; resolves or rejects exactly as postTransaction() would for it. */
  post (request: PostRequest): Promise<PostOutcome> {
    return new Promise((resolve, reject) => {
      this.#queue.push({ request, context: context.active(), resolve, reject })
      this.#dispatch()
      this.#options.observeQueue?.(this.#queue.length)
    })
  }

  /** Requests waiting for a call slot (for tests and diagnostics). */
  get queued (): number {
    return this.#queue.length
  }

  #dispatch () {
    const { maxBatch, maxInFlight } = this.#options
    while (this.#queue.length > 0 && this.#inFlight < maxInFlight && (this.#inFlight === 0 || this.#queue.length >= maxBatch)) {
      const batch = this.#queue.splice(0, maxBatch)
      this.#options.observeQueue?.(this.#queue.length)
      this.#inFlight++
      this.#options.observeBatch?.(batch.length)
      let released = false
      // Called once the slot's database work is over, before the members' answers are handed out: each answer's
      // continuation (serializing and sending the reply) runs synchronously when resolved, so freeing the slot
      // after them would keep the next batch from the database for as long as the whole batch takes to answer.
      const release = () => {
        if (released) return
        released = true
        this.#inFlight--
        this.#dispatch()
      }
      const run = batch.length === 1 ? this.#single(batch[0] as Waiting, release) : this.#batch(batch, release)
      run.finally(release)
    }
  }

  /**
   * One request through post_transaction(), in its own request's context (its span parents the statement's).
   * `release` is called when no more database work is left for it, before its answer.
   */
  async #single (waiting: Waiting, release?: () => void): Promise<void> {
    const { sql, keyTtlS } = this.#options
    const { poster, key, body } = waiting.request
    for (let attempt = 1; ; attempt++) {
      let outcome: PostOutcome
      try {
        outcome = await context.with(waiting.context, () => postTransaction(sql, poster, key, body, keyTtlS))
      } catch (error) {
        if (attempt < SINGLE_ATTEMPTS && isRetryable(error)) continue
        release?.()
        waiting.reject(error)
        return
      }
      release?.()
      waiting.resolve(outcome)
      return
    }
  }

  async #batch (batch: Waiting[], release: () => void): Promise<void> {
    const span = batchSpan(batch)
    let results: PostResult[]
    try {
      results = await context.with(trace.setSpan(ROOT_CONTEXT, span), () =>
        postTransactions(this.#options.sql, batch.map((waiting) => waiting.request), this.#options.keyTtlS))
    } catch (error) {
      span.setStatus({ code: SpanStatusCode.ERROR, message: String((error as { code?: unknown }).code ?? 'batch failed') })
      span.end()
      // Retried request by request, which keeps the slot taken until the last retry ends.
      if (isRetryable(error)) {
        await Promise.all(batch.map((waiting) => this.#single(waiting)))
        return
      }
      release()
      for (const waiting of batch) waiting.reject(error)
      return
    }
    span.end()
    // The deadlock detector chose these requests' waits inside the batch: only their subtransactions were rolled
    // back. They are retried alone, and keep the slot taken until they end.
    const retries = batch.filter((_, index) => isRetryableResult(results[index]))
    if (retries.length === 0) release()
    results.forEach((result, index) => {
      const waiting = batch[index] as Waiting
      if (result.ok) waiting.resolve(result.outcome)
      else if (!isRetryable(result.error)) waiting.reject(result.error)
    })
    await Promise.all(retries.map((waiting) => this.#single(waiting)))
  }
}

/**
 * The span a batch's statement runs under. It belongs to no single request (whichever request's turn it was says
 * nothing about the others), so it starts a trace of its own, linked to each member's span, and each member's span
 * is linked back to it. With no member recorded (not sampled, or no tracing), nothing is recorded for the batch
 * either: a non-recording span keeps the statement from starting a trace of its own.
 */
function batchSpan (batch: readonly Waiting[]): Span {
  const members = batch.flatMap((waiting) => {
    const span = trace.getSpan(waiting.context)
    return span === undefined ? [] : [span]
  })
  if (!members.some((span) => span.isRecording())) return trace.wrapSpanContext(INVALID_SPAN_CONTEXT)
  const span = tracer.startSpan('ledger.post_transactions', {
    kind: SpanKind.INTERNAL,
    attributes: { 'ledger.batch.size': batch.length },
    links: members.map((member) => ({ context: member.spanContext() }))
  }, ROOT_CONTEXT)
  for (const member of members) member.addLink({ context: span.spanContext() })
  return span
}
