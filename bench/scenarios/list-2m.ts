// list-2m: GET /transactions for a user with 2M transactions (first page, walked cursors and deep cursors) vs a
// user with 50: keyset pagination should make them cost the same.
import type autocannon from 'autocannon'
import { createCursorCodec } from '../../plugins/auth/cursors.ts'
import { CONNECTIONS, cpuRatio, measure, ratio, record, side, warmUp, type Bench, type Scenario } from '../lib/context.ts'
import { tagRoute } from '../lib/load.ts'
import { idsAtDepths } from '../lib/setup.ts'
import type { Caller } from '../lib/traffic.ts'

export const LIST_LIMIT = 25
const page = (cursor?: string) => `/transactions?limit=${LIST_LIMIT}${cursor === undefined ? '' : `&cursor=${cursor}`}`

/** The next-page cursors of the caller's first `pages` pages, as a client walking the list gets them. */
async function walkCursors (b: Bench, caller: Caller, pages: number): Promise<string[]> {
  const cursors: string[] = []
  for (let i = 0; i < pages; i++) {
    const response = await fetch(`${b.api.url}${page(cursors.at(-1))}`, { headers: { authorization: `Bearer ${caller.token}` } })
    if (!response.ok) throw new Error(`walking cursors: ${response.status} ${await response.text()}`)
    const { nextCursor } = await response.json() as { nextCursor: string | null }
    if (nextCursor === null) break
    cursors.push(nextCursor)
  }
  return cursors
}

/** One request entry per path, cycled in order, each tagged with its own route. */
const cycle = (caller: Caller, paths: Array<[string, string]>): autocannon.Request[] => paths.map(([tag, path]) => ({
  setupRequest: (request: autocannon.Request, context: object) => {
    tagRoute(context, `GET /transactions ${tag}`)
    return { ...request, method: 'GET', path, headers: { authorization: `Bearer ${caller.token}` } } as autocannon.Request
  }
}))

export const scenario: Scenario = {
  id: 'list-2m',
  async run (b) {
    const walked = await walkCursors(b, b.bigUser, 5)
    const codec = createCursorCodec(b.jwt.secret)
    const depths = [0.001, 0.05, 0.5, 0.95].map((f) => Math.floor(b.sizes.bigUserTransactions * f))
    const deep = (await idsAtDepths(b.env, b.bigUser.id, depths)).map(({ id }) => codec.encode(`transactions:${b.bigUser.id}`, { before: id }))
    const big = cycle(b.bigUser, [
      ['page 1', page()],
      ...walked.map((c): [string, string] => [`pages 2-${walked.length + 1} (walked)`, page(c)]),
      ...deep.map((c, i): [string, string] => [`depth ${depths[i]!} (minted)`, page(c)])
    ])
    const small = cycle(b.smallUser, [['page 1', page()], ...(await walkCursors(b, b.smallUser, 1)).map((c): [string, string] => ['page 2', page(c)])])
    const run = async (id: string, label: string, requests: autocannon.Request[], route: string, notes: string[]) => {
      await warmUp(b, [{ connections: CONNECTIONS, requests }])
      return record(b, { id, scenario: 'list-2m', label, connections: CONNECTIONS, notes },
        await measure(b, [{ connections: CONNECTIONS, requests, duration: b.time.pair, route }]))
    }
    const bigRun = await run('list-2m-big', `list-2m: ${(b.sizes.bigUserTransactions / 1e6).toString()}M-row user`, big, 'GET /transactions (big)',
      [`limit ${LIST_LIMIT}; cycles the first page, ${walked.length} walked cursors and ${deep.length} deep cursors (depths ${depths.join(', ')}, signed with the bench's secret)`])
    const smallRun = await run('list-2m-small', `list-2m: ${b.sizes.smallUserTransactions}-row user`, small, 'GET /transactions (small)', [`limit ${LIST_LIMIT}; first page and second page`])
    ratio(b, 'list-2m', 'list-2m: big user req/s vs 50-row user', side(bigRun), side(smallRun), 0.8,
      `p99 ${bigRun.load.latency.p99.toFixed(2)} vs ${smallRun.load.latency.p99.toFixed(2)} ms`)
    cpuRatio(b, 'list-2m', 'list-2m: big user vs 50-row user', side(bigRun), side(smallRun), 'db', 'PostgreSQL + PgBouncer work per page')
  }
}
