// mixed-1000: the production-like mix at 1,000 connections, next to a bare Fastify route at the same connections.
import { bareBaseline } from '../lib/baselines.ts'
import { BIG_CONNECTIONS, findBaseline, measure, ratio, record, side, warmUp, type Scenario } from '../lib/context.ts'
import { mixedRequests } from '../lib/traffic.ts'

export const scenario: Scenario = {
  id: 'mixed-1000',
  async run (b) {
    await bareBaseline(b, BIG_CONNECTIONS)
    const requests = mixedRequests(b.world)
    await warmUp(b, [{ connections: BIG_CONNECTIONS, requests }])
    const run = record(b, {
      id: 'mixed-1000',
      scenario: 'mixed-1000',
      label: 'mixed-1000',
      connections: BIG_CONNECTIONS,
      notes: ['mix: 30 % GET /users/:id (others), 25 % GET /transactions, 25 % GET /feed (default page, cached), 20 % POST /transactions (deposit/withdrawal/transfer)']
    }, await measure(b, [{ connections: BIG_CONNECTIONS, requests, route: 'mixed' }]))
    const bare = findBaseline(b, `bare-${BIG_CONNECTIONS}`)
    if (bare !== undefined) ratio(b, 'mixed-vs-bare', 'mixed-1000 vs bare Fastify (1,000 conns)', side(run), side(bare), undefined, '')
  }
}
