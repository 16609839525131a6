// session-check: every authenticated request checks its session and its user against the revocation list
// (plugins/auth/revocations.ts), a Map each process refreshes in the background, so the check should cost nothing
// measurable and no round trip. The same cached GET /users/:id load runs twice in the same API process: with the
// list empty, then after 10,000 ended sessions and 1,000 ended users were written (as the owner, as logout,
// password changes and user removal write them) and the API loaded them, which a canary session among them proves:
// its token turns 401 before the second run starts. The list cannot be emptied in a running process (rows leave
// memory only when their tokens have expired), so the order is fixed: empty first, and this scenario runs last.
import { randomUUID } from 'node:crypto'
import postgres from 'postgres'
import { check, CONNECTIONS, cpuRatio, measure, ratio, record, side, sleep, warmUp, type Scenario } from '../lib/context.ts'
import type { RunRecord } from '../lib/report.ts'
import { getRequests, signTokens } from '../lib/traffic.ts'

const ENDED_SESSIONS = 10_000
const ENDED_USERS = 1000

/** Redis commands + database transactions per request, and the breakdown, from a run's samples. */
function roundTripsPerRequest (run: RunRecord): { total: number, text: string } | undefined {
  const trips = run.samples?.roundTrips
  const requests = run.load.requests
  if (trips === undefined || trips.pgTransactions === undefined || requests === 0) return undefined
  const redisCalls = Object.values(trips.redisCommands).reduce((a, b) => a + b, 0)
  const byCommand = Object.entries(trips.redisCommands).sort(([, a], [, b]) => b - a).map(([command, calls]) => `${command} ${(calls / requests).toFixed(3)}`).join(', ')
  return {
    total: (redisCalls + trips.pgTransactions) / requests,
    text: `Redis ${(redisCalls / requests).toFixed(3)} (${byCommand || 'none'}), PostgreSQL transactions ${(trips.pgTransactions / requests).toFixed(3)}`
  }
}

export const scenario: Scenario = {
  id: 'session-check',
  async run (b) {
    const owner = postgres(b.env.directUrl, { max: 1, onnotice: () => {} })
    try {
      const held = async () => (await owner<{ n: number }[]>`select count(*)::int as n from revocations`)[0]!.n
      const targets = b.callers.slice(0, 10)
      const hits = getRequests(b.callers.slice(10), () => `/users/${targets[Math.floor(Math.random() * targets.length)]!.id}`, 'GET /users/:id (hit)')
      const run = async (id: string, revocations: number, notes: string[]) => {
        await warmUp(b, [{ connections: CONNECTIONS, requests: hits }])
        return record(b, { id, scenario: 'session-check', label: `session-check: cached GET /users/:id, ${revocations.toLocaleString('en-US')} revocations held`, connections: CONNECTIONS, notes },
          await measure(b, [{ connections: CONNECTIONS, requests: hits, duration: b.time.pair, route: 'GET /users/:id (hit)' }]))
      }
      const empty = await run('session-check-empty', await held(), ['the same load as user-cache hits; every token has a session id of its own, checked with its user against the list'])

      const canarySession = randomUUID()
      const [canaryToken] = await signTokens(b.jwt, [{ id: b.callers[0]!.id, tier: 'pro', sessionId: canarySession }])
      const probe = async () => (await fetch(`${b.api.url}/users/${targets[0]!.id}`, { headers: { authorization: `Bearer ${canaryToken!}` } })).status
      const before = await probe()
      if (before !== 200) throw new Error(`the canary session's token got ${before} before its session ended`)
      const written = performance.now()
      await owner`
        insert into revocations (subject)
        select 'session:' || gen_random_uuid() from generate_series(1, ${ENDED_SESSIONS})
        union all
        select 'user:' || gen_random_uuid() from generate_series(1, ${ENDED_USERS})
        union all
        select ${`session:${canarySession}`}`
      let status = before
      while (status !== 401) {
        if (performance.now() - written > 10_000) throw new Error(`the API did not refuse an ended session within 10 s (last status ${status})`)
        await sleep(10)
        status = await probe()
      }
      const loadedMs = performance.now() - written
      b.log(`session-check: ${ENDED_SESSIONS + ENDED_USERS + 1} revocations written; the canary's token refused after ${loadedMs.toFixed(0)} ms`)
      const large = await run('session-check-large', await held(), [
        `${ENDED_SESSIONS.toLocaleString('en-US')} ended sessions + ${ENDED_USERS.toLocaleString('en-US')} ended users + 1 canary session written as the owner; ` +
        `the canary's token was refused ${loadedMs.toFixed(0)} ms after the commit (REVOCATION_POLL_MS 500), so the API held them all before this run`
      ])

      ratio(b, 'session-check-rps', 'session check: cached GET /users/:id with 11,001 revocations vs none (req/s)', side(large), side(empty), undefined,
        `p50 ${large.load.latency.p50.toFixed(2)} vs ${empty.load.latency.p50.toFixed(2)} ms, p99 ${large.load.latency.p99.toFixed(2)} vs ${empty.load.latency.p99.toFixed(2)} ms; one after the other on a shared machine, so a few percent either way is noise`)
      cpuRatio(b, 'session-check', 'session check: 11,001 revocations vs none', side(large), side(empty), 'api', 'API process CPU per request; above 1 means the large list is cheaper')
      const largeTrips = roundTripsPerRequest(large)
      const emptyTrips = roundTripsPerRequest(empty)
      if (largeTrips === undefined || emptyTrips === undefined) return
      check(b, {
        id: 'session-check-round-trips',
        label: 'session check: Redis commands + PostgreSQL transactions per request added by 11,001 revocations',
        measured: large.label,
        reference: empty.label,
        measuredValue: largeTrips.total,
        referenceValue: emptyTrips.total,
        value: largeTrips.total - emptyTrips.total,
        unit: 'count',
        // One more call per request would add 1; background polls and the sampler add a few thousandths.
        target: { op: '<', value: 0.1 },
        note: `Redis counts the commands the limiter's script runs (TIME, HMGET, HSET, PEXPIRE) besides its EVALSHA. With the list: ${largeTrips.text}; empty: ${emptyTrips.text}`
      })
    } finally {
      await owner.end({ timeout: 5 })
    }
  }
}
