import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { Sql } from '../database/index.ts'
import type { Metrics } from '../metrics/index.ts'
import { MAX_ACCESS_TOKEN_AGE_S } from './index.ts'

declare module 'fastify' {
  interface FastifyInstance {
    revocations: RevocationList
  }
}

/**
 * Tokens that must stop working before they expire: a revoked service client (`client:<id>`), an ended session
 * (`session:<id>`: logout, password change, refresh token replay) and a removed user (`user:<id>`). The revocations table is the source of truth; each API process keeps the
 * recent rows in memory and re-reads what changed every `pollMs`, so checking a token is a Map lookup and costs
 * no round trip per request, while a revocation written by any process (or the operator's command) reaches every
 * process within one poll. Rows older than the longest token lifetime no longer matter (those tokens expired).
 *
 * Fail closed: when the list could not be refreshed for `maxStalenessMs`, `isStale()` is true and the auth hook
 * answers 503 instead of trusting a list that may miss a revocation.
 */
export interface RevocationList {
  /** Whether any of the token's subjects (`client:<id>`, `session:<id>`, ...) was revoked. */
  isRevoked: (subjects: readonly string[]) => boolean
  isStale: () => boolean
  /** Milliseconds since the list was last read (Infinity before the first read). */
  ageMs: () => number
  /** Records a revocation in the database and in this process at once. */
  revoke: (sql: Sql, subject: string) => Promise<void>
  /**
   * Applies revocations another statement just committed (a session ended inside a larger transaction) to this
   * process at once; the other processes read them at their next poll.
   */
  markRevoked: (subjects: readonly string[]) => void
  /** Reads revocations written since the last refresh (the poller calls it; tests may too). */
  refresh: () => Promise<void>
  close: () => void
}

export interface RevocationOptions {
  db: Sql
  pollMs: number
  maxStalenessMs: number
  /** The longest a token lives: older revocations are dropped from memory. */
  maxTokenAgeS: number
  onError: (error: unknown) => void
}

/**
 * A revoking transaction stamps its row with its own start time and may commit a little after a poll that
 * started later, so every poll re-reads this much before the previous one (transactions are bounded by the
 * database's statement and idle-in-transaction timeouts, 5 s and 10 s).
 */
const OVERLAP_S = 30

export function createRevocationList (options: RevocationOptions): RevocationList {
  const revoked = new Map<string, number>()
  let since: Date | undefined
  let refreshedAt = -Infinity
  let timer: NodeJS.Timeout | undefined
  let inFlight: Promise<void> | undefined

  const forget = (now: number) => {
    const oldest = now - options.maxTokenAgeS * 1000
    for (const [subject, at] of revoked) if (at < oldest) revoked.delete(subject)
  }

  async function load () {
    const from = since ?? new Date(0)
    // The extra row carries the server's clock even when nothing was revoked.
    const rows = await options.db<{ subject: string | null, revoked_at: Date | null, now: Date }[]>`
      select subject, revoked_at, now() as now from revocations
       where revoked_at > greatest(${from.toISOString()}::timestamptz, now() - make_interval(secs => ${options.maxTokenAgeS}))
      union all
      select null::text, null::timestamptz, now()`
    let serverNow: Date | undefined
    for (const row of rows) {
      if (row.subject === null) serverNow = row.now
      else if (row.revoked_at !== null) revoked.set(row.subject, row.revoked_at.getTime())
    }
    if (serverNow !== undefined) since = new Date(serverNow.getTime() - OVERLAP_S * 1000)
    refreshedAt = Date.now()
    forget(serverNow?.getTime() ?? Date.now())
  }

  const list: RevocationList = {
    isRevoked (subjects) {
      if (revoked.size === 0) return false
      for (const subject of subjects) if (revoked.has(subject)) return true
      return false
    },
    isStale: () => Date.now() - refreshedAt > options.maxStalenessMs,
    ageMs: () => Date.now() - refreshedAt,
    async revoke (sql, subject) {
      await sql`
        insert into revocations (subject) values (${subject})
        on conflict (subject) do update set revoked_at = now()`
      revoked.set(subject, Date.now())
    },
    markRevoked (subjects) {
      const now = Date.now()
      for (const subject of subjects) revoked.set(subject, now)
    },
    refresh () {
      // One refresh at a time: a slow database must not pile up polls.
      inFlight ??= load().finally(() => { inFlight = undefined })
      return inFlight
    },
    close () {
      clearTimeout(timer)
      timer = undefined
    }
  }

  const poll = () => {
    timer = setTimeout(() => {
      list.refresh().catch(options.onError).finally(() => { if (timer !== undefined) poll() })
    }, options.pollMs)
    timer.unref()
  }
  poll()
  return list
}

export interface RevocationPluginOptions {
  pollMs: number
  maxStalenessMs: number
  maxTokenAgeS: number
}

async function revocationsPlugin (app: FastifyInstance, options: RevocationPluginOptions) {
  const metrics: Metrics = app.metrics
  let lastLogged = 0
  const list = createRevocationList({
    db: app.db,
    ...options,
    onError: (error) => {
      metrics.dependencyErrors.inc({ dependency: 'postgres', operation: 'revocations_refresh' })
      const now = Date.now()
      if (now - lastLogged > 10_000) {
        lastLogged = now
        app.log.warn({ err: error }, 'cannot refresh the token revocation list')
      }
    }
  })
  app.decorate('revocations', list)
  // Read at each scrape; before the first successful read the list is as stale as it gets (+Inf).
  metrics.readAtScrape.revocationListAgeS = () => list.ageMs() / 1000
  app.addHook('onClose', async () => list.close())
  // A process that cannot read the list at boot still starts; it answers 503 to tokens until the first poll works.
  await list.refresh().catch((error: unknown) => app.log.warn({ err: error }, 'token revocation list not loaded at boot'))
}

/** The plugin's options from the configuration. */
export const autoConfig = (app: FastifyInstance): RevocationPluginOptions => ({
  pollMs: app.config.REVOCATION_POLL_MS,
  maxStalenessMs: app.config.REVOCATION_MAX_STALENESS_S * 1000,
  maxTokenAgeS: MAX_ACCESS_TOKEN_AGE_S
})

export default fp(revocationsPlugin, { name: 'revocations', dependencies: ['database', 'metrics'] })
