// abuse: one standard-tier caller sends ~1,000 requests a minute beside the mixed load at 1,000 connections: it
// is refused with 429 once its bucket (60, refill 1/s) is empty, and the others' p99 stays that of mixed-1000.
import type autocannon from 'autocannon'
import { BIG_CONNECTIONS, check, findRun, goal, record, sample, warmUp, type Scenario } from '../lib/context.ts'
import { Recorder, runLoad, summarize } from '../lib/load.ts'
import { mixedRequests } from '../lib/traffic.ts'

export const scenario: Scenario = {
  id: 'abuse',
  async run (b) {
    const requests = mixedRequests(b.world)
    const statuses: number[] = []
    let first429: Record<string, unknown> | undefined
    const abuserRequests: autocannon.Request[] = [{
      method: 'GET',
      path: `/users/${b.callers[0]!.id}`,
      headers: { authorization: `Bearer ${b.abuser.token}` },
      onResponse: (status, _body, _context, headers) => {
        statuses.push(status)
        if (status === 429 && first429 === undefined) {
          const h = headers as Record<string, unknown> | undefined
          first429 = { after: statuses.length - 1, retryAfter: h?.['retry-after'], limit: h?.['ratelimit-limit'], remaining: h?.['ratelimit-remaining'], reset: h?.['ratelimit-reset'] }
        }
      }
    }]
    await warmUp(b, [{ connections: BIG_CONNECTIONS, requests }])
    // Two instances with a recorder each under one sampler: the runs share their CPU and database samples.
    const s = await sample(b)
    const began = performance.now()
    const [others, abuser] = await Promise.all([
      runLoad(b.api.url, { connections: BIG_CONNECTIONS, duration: b.time.long, requests, route: 'mixed' }, new Recorder()),
      runLoad(b.api.url, { connections: 1, duration: b.time.long, overallRate: 17, requests: abuserRequests, route: 'abuser GET /users/:id' }, new Recorder())
    ])
    const wallS = (performance.now() - began) / 1000
    const samples = await s.stop()
    const ok = statuses.filter((st) => st >= 200 && st < 300).length
    const limited = statuses.filter((st) => st === 429).length
    const othersRun = record(b, { id: 'abuse-others', scenario: 'abuse', label: 'abuse: the others (mixed)', connections: BIG_CONNECTIONS },
      { load: summarize([others.result], others.recorder, wallS), samples })
    const abuserRun = record(b, {
      id: 'abuse-abuser',
      scenario: 'abuse',
      label: 'abuse: the abuser (standard tier, ~1,000/min)',
      connections: 1,
      overallRate: 17,
      sharedSamples: true,
      notes: [`${statuses.length} requests: ${ok} admitted, ${limited} refused with 429; first 429 after ${String(first429?.after ?? '-')} admitted requests (bucket 60, refill 1/s); ` +
        `429 headers: Retry-After ${String(first429?.retryAfter ?? '-')}, RateLimit-Limit ${String(first429?.limit ?? '-')}, RateLimit-Remaining ${String(first429?.remaining ?? '-')}`]
    }, { load: summarize([abuser.result], abuser.recorder, wallS), samples })
    const expectedAdmitted = 60 + b.time.long
    goal(b, {
      id: 'abuse-limited',
      label: 'abuse: abuser admitted before 429s (bucket 60 + 1/s)',
      measured: abuserRun.label,
      value: ok,
      unit: 'count',
      target: { op: '<=', value: expectedAdmitted + 2 },
      reference: expectedAdmitted,
      note: `${limited} of ${statuses.length} refused with 429; first 429 after ${String(first429?.after ?? 'none')} requests`
    })
    const mixed = findRun(b, 'mixed-1000')
    if (mixed === undefined) return
    check(b, {
      id: 'abuse-others-p99',
      label: 'abuse: others\' p99 vs mixed-1000 p99',
      measured: othersRun.label,
      reference: mixed.label,
      measuredValue: othersRun.load.latency.p99,
      referenceValue: mixed.load.latency.p99,
      value: othersRun.load.latency.p99 / mixed.load.latency.p99,
      unit: 'ratio',
      target: { op: '<=', value: 1.25 },
      note: `others' errors ${othersRun.load.errors}, non-2xx ${othersRun.load.non2xx} (mixed: ${mixed.load.errors}, ${mixed.load.non2xx}); 1.25x allows for run-to-run noise`
    })
  }
}
