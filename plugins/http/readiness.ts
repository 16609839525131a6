import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'

declare module 'fastify' {
  interface FastifyInstance {
    readiness: Readiness
  }
}

export type CheckResult = 'ok' | 'down'

export interface ReadinessResult {
  ok: boolean
  checks: { postgres: CheckResult, redis: CheckResult }
  /** When the probes behind this result finished (ms since the epoch). */
  at: number
}

export interface Readiness {
  /** The last probes' result; while the app closes, not ready whatever the dependencies say. */
  current: () => ReadinessResult
  /** Called with every result whose readiness or checks differ from the previous one (cluster.ts relays them). */
  onChange: (listener: (result: ReadinessResult) => void) => void
  /** Probe rounds run so far (tests count them against the statements the app sent). */
  rounds: () => number
  /**
   * Not ready, whatever the dependencies say, until the returned function is called: what the process still has
   * to do before it should take traffic (its warm-up). Listeners hear both changes.
   */
  hold: () => () => void
}

export interface ReadinessOptions {
  /** Time between the end of one probe round and the start of the next. */
  intervalMs: number
  /** A probe not answered within this long counts as down (a hung dependency must not stall readiness). */
  timeoutMs: number
}

const notYet: ReadinessResult = { ok: false, checks: { postgres: 'down', redis: 'down' }, at: 0 }

/**
 * Readiness from a result refreshed in the background: one `select 1` through PgBouncer and one Redis PING per
 * round, at most one round in flight, whatever the number of /health/ready calls (a flood of them takes no database
 * connection and no Redis round trip). The `select 1` has a connection of its own (app.dbProbe), so it says whether
 * the database answers, not how long the pool's queue is: a process under load stays ready, and an orchestrator
 * does not take traffic away from every busy replica at once. The first round runs before the app is ready, so a listening server
 * always has a real result (never an optimistic default). A probe still pending from an earlier round (the
 * dependency hangs) is not sent again: it counts as down, so a hung dependency holds one connection, not one per
 * round.
 */
async function readinessPlugin (app: FastifyInstance, options: ReadinessOptions) {
  let result = notYet
  let closing = false
  let rounds = 0
  let holds = 0
  let timer: NodeJS.Timeout | undefined
  const listeners: Array<(result: ReadinessResult) => void> = []
  const pending = { postgres: false, redis: false }

  async function probe (name: keyof typeof pending, send: () => Promise<unknown>): Promise<CheckResult> {
    if (pending[name]) return 'down'
    pending[name] = true
    const sent = send().finally(() => { pending[name] = false })
    let timeout: NodeJS.Timeout | undefined
    try {
      await Promise.race([sent, new Promise((resolve, reject) => { timeout = setTimeout(() => reject(new Error('timeout')), options.timeoutMs) })])
      return 'ok'
    } catch {
      return 'down'
    } finally {
      clearTimeout(timeout)
    }
  }

  async function round () {
    const [postgres, redis] = await Promise.all([
      probe('postgres', () => app.dbProbe()),
      probe('redis', () => app.redis.ping())
    ])
    rounds++
    const next = { ok: postgres === 'ok' && redis === 'ok', checks: { postgres, redis }, at: Date.now() }
    const changed = next.ok !== result.ok || postgres !== result.checks.postgres || redis !== result.checks.redis
    result = next
    if (!changed) return
    if (next.ok) app.log.info({ checks: next.checks }, 'ready')
    else app.log.warn({ checks: next.checks }, 'not ready: a dependency does not answer')
    notify()
  }

  const current = () => closing || holds > 0 ? { ...result, ok: false } : result
  function notify () {
    const effective = current()
    for (const listener of listeners) listener(effective)
  }

  function schedule () {
    timer = setTimeout(() => {
      round().catch((error: unknown) => app.log.error({ err: error }, 'readiness round failed')).finally(() => {
        if (!closing) schedule()
      })
    }, options.intervalMs)
    timer.unref()
  }

  app.decorate('readiness', {
    current,
    onChange: (listener: (result: ReadinessResult) => void) => { listeners.push(listener) },
    rounds: () => rounds,
    hold: () => {
      holds++
      notify()
      let released = false
      return () => {
        if (released) return
        released = true
        holds--
        notify()
      }
    }
  })
  app.addHook('onReady', async () => {
    await round()
    schedule()
  })
  // Not ready from the moment the drain starts, so the ops port's probe takes the pod out of rotation at once.
  app.addHook('preClose', async () => {
    closing = true
    clearTimeout(timer)
    notify()
  })
}

/** A round at most every second, each probe bounded, so a dependency gone is seen within about 2 s. */
export const autoConfig = (): ReadinessOptions => ({ intervalMs: 1000, timeoutMs: 900 })

export default fp(readinessPlugin, { name: 'readiness', dependencies: ['database', 'redis'] })
