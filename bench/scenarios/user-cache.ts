// user-cache: GET /users/:id served from the cache (10 warm ids) and missing it (each id read once), next to a bare
// Fastify route, a bare route that runs the API's rate-limit script (the one Redis round trip every API request
// makes) and redis-benchmark GET.
import { bareBaseline, redisBaseline } from '../lib/baselines.ts'
import { apiCpuGoal, CONNECTIONS, cpuRatio, findBaseline, measure, ratio, record, side, warmUp, type Scenario } from '../lib/context.ts'
import { getRequests, sequentialGets } from '../lib/traffic.ts'

const pct = (v: number | null | undefined) => v === null || v === undefined ? '-' : `${(v * 100).toFixed(0)} %`

export const scenario: Scenario = {
  id: 'user-cache',
  async run (b) {
    await bareBaseline(b, CONNECTIONS)
    await bareBaseline(b, CONNECTIONS, true)
    await redisBaseline(b)
    const targets = b.callers.slice(0, 10)
    const hits = getRequests(b.callers.slice(10), () => `/users/${targets[Math.floor(Math.random() * targets.length)]!.id}`, 'GET /users/:id (hit)')
    await warmUp(b, [{ connections: CONNECTIONS, requests: hits }])
    const hitRun = record(b, { id: 'user-cache-hits', scenario: 'user-cache', label: 'user-cache: hits (10 warm ids)', connections: CONNECTIONS },
      await measure(b, [{ connections: CONNECTIONS, requests: hits, duration: b.time.pair, route: 'GET /users/:id (hit)' }]))
    apiCpuGoal(b, 'user-cache-api-cpu', 'cached GET /users/:id: API CPU per request', hitRun, 0.06)
    const bareLimiter = findBaseline(b, `bare-limiter-${CONNECTIONS}`)
    if (bareLimiter !== undefined) {
      // What a cached read costs beyond the one Redis round trip every API request makes (the limiter's).
      const label = 'cached GET /users/:id vs bare Fastify + the rate-limit round trip'
      ratio(b, 'user-cache-vs-bare-limiter', label, side(hitRun), side(bareLimiter), undefined, 'the reference runs the same token-bucket script through the same client settings, and nothing else')
      cpuRatio(b, 'user-cache-vs-bare-limiter', label, side(hitRun), side(bareLimiter), 'api', 'API process vs bare process with the limiter')
    }

    const [reader] = b.callers
    const warmIds = b.seeded.profileIds.slice(0, 1000)
    const missIds = b.seeded.profileIds.slice(1000)
    await warmUp(b, [{ connections: CONNECTIONS, requests: sequentialGets(reader!, warmIds.map((id) => `/users/${id}`), 'warm') }])
    const misses = sequentialGets(reader!, missIds.map((id) => `/users/${id}`), 'GET /users/:id (miss)')
    const missRun = record(b, { id: 'user-cache-misses', scenario: 'user-cache', label: `user-cache: misses (${missIds.length.toLocaleString('en-US')} ids, each read once)`, connections: CONNECTIONS },
      await measure(b, [{ connections: CONNECTIONS, requests: misses, amount: missIds.length, route: 'GET /users/:id (miss)' }]))
    const bare = findBaseline(b, `bare-${CONNECTIONS}`)
    if (bare !== undefined) {
      ratio(b, 'user-cache-vs-bare', 'cached GET /users/:id vs bare Fastify', side(hitRun), side(bare), 0.4, 'same connections')
      cpuRatio(b, 'user-cache-vs-bare', 'cached GET /users/:id vs bare Fastify', side(hitRun), side(bare), 'api', 'API process vs bare process')
    }
    ratio(b, 'user-cache-miss-vs-hit', 'GET /users/:id misses vs hits', side(missRun), side(hitRun), undefined,
      `app-side hit share: hits run ${pct(hitRun.samples?.appCache.user?.hitShare)}, misses run ${pct(missRun.samples?.appCache.user?.hitShare)}`)
    const redisGet = findBaseline(b, 'redis-get')
    if (redisGet !== undefined) {
      ratio(b, 'user-cache-vs-redis', 'cached GET /users/:id vs redis-benchmark GET', side(hitRun), side(redisGet), undefined, 'each API request also runs the rate-limit script (EVALSHA) and a cache GET')
    }
  }
}
