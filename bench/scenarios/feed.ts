// feed: the feed page with its authors joined in one query vs the N+1 loader (one query per post's author, the
// bench-only route of test/feed-n-plus-one.ts), both uncached.
import { CONNECTIONS, cpuRatio, measure, ratio, record, side, warmUp, type Scenario } from '../lib/context.ts'
import { getRequests } from '../lib/traffic.ts'

/** Not the default 20: the default first page is cached, and this compares the database paths. */
export const FEED_LIMIT = 19

export const scenario: Scenario = {
  id: 'feed',
  async run (b) {
    const measured = async (id: string, label: string, path: string) => {
      const requests = getRequests(b.callers, () => `${path}?limit=${FEED_LIMIT}`, `GET ${path}?limit=${FEED_LIMIT}`)
      await warmUp(b, [{ connections: CONNECTIONS, requests }])
      return record(b, { id, scenario: 'feed', label, connections: CONNECTIONS },
        await measure(b, [{ connections: CONNECTIONS, requests, duration: b.time.pair, route: `GET ${path}` }]))
    }
    const join = await measured('feed-join', `feed: JOIN (limit ${FEED_LIMIT}, uncached)`, '/feed')
    const naive = await measured('feed-n-plus-one', `feed: N+1 (limit ${FEED_LIMIT})`, '/bench/feed-n-plus-one')
    ratio(b, 'feed-join-vs-n-plus-one', 'feed JOIN vs N+1', side(join), side(naive), 5, `p99 ${join.load.latency.p99.toFixed(1)} vs ${naive.load.latency.p99.toFixed(1)} ms`)
    cpuRatio(b, 'feed-join-vs-n-plus-one', 'feed JOIN vs N+1', side(join), side(naive), 'stack', 'API + PostgreSQL + PgBouncer + Redis')
  }
}
