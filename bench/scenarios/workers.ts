// workers: scale-out on one machine. The same mixed load against the real entry point, `node server.ts`, with
// WORKERS=1 and WORKERS=2 (node:cluster), one after the other. On a 2-core machine the workers share the cores with
// PostgreSQL, PgBouncer, Redis and the load generator, so the speed-up says where the next limit is.
import { fileURLToPath } from 'node:url'
import { BIG_CONNECTIONS, FRESH_PROCESS_WARM_S, measure, ratio, record, side, warmUp, type Scenario } from '../lib/context.ts'
import { startNodeServer } from '../lib/processes.ts'
import type { RunRecord } from '../lib/report.ts'
import { mixedRequests } from '../lib/traffic.ts'

export const scenario: Scenario = {
  id: 'workers',
  async run (b) {
    const requests = mixedRequests(b.world)
    const measured: RunRecord[] = []
    for (const workers of [1, 2]) {
      const server = await startNodeServer(fileURLToPath(new URL('../../server.ts', import.meta.url)), { ...b.serverEnv, WORKERS: String(workers) }, { ipc: false, nodeArgs: b.serverNodeArgs })
      b.children.add(server)
      try {
        await warmUp(b, [{ connections: BIG_CONNECTIONS, requests }], server.url, FRESH_PROCESS_WARM_S)
        measured.push(record(b, {
          id: `mixed-workers-${workers}`,
          scenario: 'mixed-workers',
          label: `mixed-1000, server.ts WORKERS=${workers}`,
          connections: BIG_CONNECTIONS,
          notes: [`node server.ts with WORKERS=${workers}${workers > 1 ? ' (node:cluster primary + workers, each with its own pool and its own sockets on the port)' : ''}; the same mix as mixed-1000; API CPU and RSS columns sum the primary and its workers`]
        }, await measure(b, [{ connections: BIG_CONNECTIONS, requests, route: 'mixed' }], { server })))
      } finally {
        await server.stop()
        b.children.delete(server)
      }
    }
    const [one, two] = measured
    ratio(b, 'workers-speedup', 'mixed-1000: WORKERS=2 vs WORKERS=1 (speed-up)', side(two!), side(one!), undefined,
      'both workers share 2 cores with PostgreSQL, PgBouncer, Redis and autocannon; see the CPU columns for who is busy')
  }
}
