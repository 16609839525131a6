// fixed-rate: the mixed load at a fixed 1,000 req/s, its arrivals spread over each second like real traffic, and
// the same rate sent in one burst at the top of each second.
import { CONNECTIONS, goal, measure, record, warmUp, type Scenario } from '../lib/context.ts'
import { mixedRequests } from '../lib/traffic.ts'

export const scenario: Scenario = {
  id: 'fixed-rate',
  async run (b) {
    // autocannon paces each connection with a 1 s timer, so all connections of one instance burst together at the
    // start of every second. Ten instances of 10 connections x 100 req/s, started 100 ms apart, spread the
    // arrivals over the second; the single-instance variant shows the burst effect.
    const requests = mixedRequests(b.world)
    const instances = 10
    const specs = Array.from({ length: instances }, () => ({ connections: CONNECTIONS / instances, requests, overallRate: 1000 / instances, route: 'mixed' }))
    await warmUp(b, specs)
    const run = record(b, {
      id: 'fixed-rate',
      scenario: 'fixed-rate',
      label: 'fixed-rate: 1,000 req/s (10 staggered instances)',
      connections: CONNECTIONS,
      overallRate: 1000,
      notes: ['the same mix as mixed-1000; 10 autocannon instances x 10 connections x 100 req/s, started 100 ms apart']
    }, await measure(b, specs, { staggerMs: 1000 / instances }))
    goal(b, {
      id: 'fixed-rate-p99',
      label: 'fixed 1,000 req/s: p99',
      measured: run.label,
      value: run.load.latency.p99,
      unit: 'ms',
      target: { op: '<', value: 25 },
      note: `achieved ${run.load.rps.toFixed(0)} req/s; p50 ${run.load.latency.p50.toFixed(2)} ms, max ${run.load.latency.max.toFixed(1)} ms`
    })
    await warmUp(b, [{ connections: CONNECTIONS, requests, overallRate: 1000 }])
    const burst = record(b, {
      id: 'fixed-rate-burst',
      scenario: 'fixed-rate',
      label: 'fixed-rate: 1,000 req/s (one instance, bursts each second)',
      connections: CONNECTIONS,
      overallRate: 1000,
      notes: ['autocannon overallRate 1000 over 100 connections = 10 req/s per connection, all sent at the top of each second']
    }, await measure(b, [{ connections: CONNECTIONS, requests, overallRate: 1000, route: 'mixed' }]))
    goal(b, {
      id: 'fixed-rate-burst-p99',
      label: 'fixed 1,000 req/s in 1 s bursts: p99',
      measured: burst.label,
      value: burst.load.latency.p99,
      unit: 'ms',
      target: undefined,
      reference: 25,
      note: `achieved ${burst.load.rps.toFixed(0)} req/s: what a burst of 100 concurrent requests costs`
    })
  }
}
