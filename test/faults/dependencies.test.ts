// Fault tests stop and start real processes of the local stack, so they run alone, one file at a time,
// after the main suite (see scripts/test.ts).
import t from 'tap'
import { controlServiceSync } from '../../scripts/local-stack.ts'
import { buildTestApp, createUser, hasLocalStack } from '../helper.ts'
import { assertTelemetrySettled, injectSender, READINESS_BOUND_MS, untilNotOk } from './support.ts'

const skip = hasLocalStack ? false : 'needs the local stack started by scripts/test.ts'

t.test('ready turns 503 within about 2 s, names the dependency that is down and recovers without a restart', { skip }, async (t) => {
  const app = await buildTestApp(t)
  await app.ready()
  const ready = untilNotOk(injectSender(app))

  for (const service of ['redis', 'pgbouncer'] as const) {
    t.equal((await app.inject({ method: 'GET', url: '/health/ready' })).statusCode, 200, `${service} up: 200`)
    controlServiceSync('stop', service)
    try {
      const down = await ready({ method: 'GET', url: '/health/ready' })
      t.equal(down.status, 503, `${service} down: 503 after ${Math.round(down.ms)} ms (the background round, not the call, probes)`)
      t.ok(down.ms < READINESS_BOUND_MS, `within ${READINESS_BOUND_MS} ms`)
      const checks = (down.body as { checks: Record<string, string> }).checks
      t.equal(checks[service === 'pgbouncer' ? 'postgres' : 'redis'], 'down', `${service} is named`)
      t.equal(checks[service === 'pgbouncer' ? 'redis' : 'postgres'], 'ok', 'the other is still ok')
    } finally {
      controlServiceSync('start', service)
    }
    // The clients reconnect by themselves; give them a bounded moment to do it.
    let status = 0
    for (let attempt = 0; attempt < 50 && status !== 200; attempt++) {
      status = (await app.inject({ method: 'GET', url: '/health/ready' })).statusCode
      if (status !== 200) await new Promise((resolve) => setTimeout(resolve, 100))
    }
    t.equal(status, 200, `${service} back: 200 again`)
    await assertTelemetrySettled(t, app)
  }
})

t.test('with Redis stopped, reads are served from PostgreSQL', { skip }, async (t) => {
  const app = await buildTestApp(t)
  const alice = await createUser(app, { name: 'Alice' })
  const bob = await createUser(app)
  const before = (await app.metrics.dependencyErrors.get()).values.reduce((sum, v) => sum + v.value, 0)
  controlServiceSync('stop', 'redis')
  try {
    const response = await app.inject({ method: 'GET', url: `/users/${alice.id}`, headers: { authorization: bob.authorization } })
    t.equal(response.statusCode, 200)
    t.equal(response.json().name, 'Alice')
    const after = (await app.metrics.dependencyErrors.get()).values.reduce((sum, v) => sum + v.value, 0)
    t.ok(after > before, 'the cache failure is counted')
  } finally {
    controlServiceSync('start', 'redis')
  }
  await assertTelemetrySettled(t, app)
})

t.test('with Redis stopped the rate limiter fails open and counts it, or fails closed when configured', { skip }, async (t) => {
  const open = await buildTestApp(t, { RATE_LIMIT_STANDARD_CAPACITY: '60' })
  const closed = await buildTestApp(t, { RATE_LIMIT_STANDARD_CAPACITY: '60', RATE_LIMIT_FAIL_OPEN: 'false' })
  const user = await createUser(open)
  await closed.ready()
  const failures = async () => (await open.metrics.dependencyErrors.get()).values
    .filter((v) => v.labels.operation === 'rate_limit').reduce((sum, v) => sum + v.value, 0)
  const before = await failures()
  controlServiceSync('stop', 'redis')
  try {
    const served = await open.inject({ method: 'GET', url: '/balances', headers: { authorization: user.authorization } })
    t.equal(served.statusCode, 200, 'fail open: the request is served')
    t.ok(await failures() > before, 'the failure is counted')
    const refused = await closed.inject({ method: 'GET', url: '/balances', headers: { authorization: user.authorization } })
    t.equal(refused.statusCode, 503, 'fail closed: 503')
    t.match(refused.headers['content-type'], /problem\+json/)
  } finally {
    controlServiceSync('start', 'redis')
  }
  await assertTelemetrySettled(t, open)
  await assertTelemetrySettled(t, closed)
})
