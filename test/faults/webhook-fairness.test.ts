// No principal can slow anyone else down (the contract's Events and webhooks): through two real `node worker.ts`
// processes, one principal with 10 endpoints that hang, fail at once or answer after 9 s causes a burst of 200
// events (2,000 deliveries), and meanwhile another principal's first attempts still leave within 5 s of their
// commits and a post still reaches 1,000 followers' feeds within 5 s. Runs after the main suite, alone
// (scripts/test.ts), so the workers here see only this file's jobs.
import { randomUUID } from 'node:crypto'
import t, { type Test } from 'tap'
import type { App } from '../../app.ts'
import { buildTestApp, createUser, fund, hasLocalStack, makeFollowers, registerWebhookEndpoint, testSql, type TestUser } from '../helper.ts'
import { startReceiver, type Behaviour } from '../webhook-receiver.ts'
import { sleep, startWorker, waitFor } from './support.ts'

const skip = hasLocalStack ? false : 'needs the local stack started by scripts/test.ts'
const CONTRACT_MS = 5000
const ATTACK_ENDPOINTS = 10
const BURST = 200
const VICTIM_EVENTS = 24
// The worker's production defaults (support.ts's startWorker shortens retries for other files): a failing
// endpoint's retries come back as they would in production.
const WORKER_ENV = { JOB_RETRY_BASE_MS: '5000', JOB_RETRY_MAX_DELAY_S: '3600' }

type TestSql = ReturnType<typeof testSql>

/** `count` transfers of 1 from `from` to `to` in one statement, through post_transaction() (the API's own call). */
async function burst (sql: TestSql, from: TestUser, to: TestUser, count: number) {
  const prefix = randomUUID()
  await sql`
    select (post_transaction(null, ${from.id}::uuid, ${prefix} || '-' || g, 'fp', 'transfer', 1, 'USD', ${to.id}::uuid, null, null, 86400)).outcome
      from generate_series(1, ${count}::int) g`
}

function transfer (app: App, from: TestUser, to: TestUser) {
  return app.inject({ method: 'POST', url: '/transactions', headers: { authorization: from.authorization, 'idempotency-key': randomUUID() }, payload: { kind: 'transfer', toUserId: to.id, amount: 1, currency: 'USD' } })
}

async function attack (t: Test, name: string, behaviour: Behaviour) {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const [attacker, victim, sink, author] = [await createUser(app), await createUser(app), await createUser(app), await createUser(app)]
  await fund(app, attacker, BURST)
  await fund(app, victim, VICTIM_EVENTS)
  const followers = await makeFollowers(author.id, 1000)

  const hostile = await startReceiver(behaviour)
  t.teardown(hostile.close)
  const sent = new Map<string, number>()
  const arrived = new Map<string, number>()
  const good = await startReceiver((_n, received) => {
    const id = (JSON.parse(received.body) as { data: { id: string } }).data.id
    if (!arrived.has(id)) arrived.set(id, received.arrivedAt)
    return { status: 200 }
  })
  t.teardown(good.close)
  const hostileEndpoints = []
  for (let i = 0; i < ATTACK_ENDPOINTS; i++) hostileEndpoints.push(await registerWebhookEndpoint(t, app, attacker, `${hostile.url}?endpoint=${i}`))
  await registerWebhookEndpoint(t, app, victim, good.url)

  const workers = await Promise.all([startWorker(t, WORKER_ENV), startWorker(t, WORKER_ENV)])
  await burst(sql, attacker, sink, BURST)
  // The attack is under way: the hostile receiver is taking attempts.
  t.ok(await waitFor(async () => hostile.received.length >= ATTACK_ENDPOINTS, 10_000, 20) >= 0, `${name}: the attacker's endpoints are being tried`)

  let feed: Promise<number> = Promise.resolve(-1)
  for (let i = 0; i < VICTIM_EVENTS; i++) {
    const started = performance.now()
    const response = await transfer(app, victim, sink)
    t.equal(response.statusCode, 201, `${name}: the victim's transfer ${i + 1}`)
    sent.set(response.json().id as string, started)
    if (i === 5) {
      const postSent = performance.now()
      const posted = await app.inject({ method: 'POST', url: '/posts', headers: { authorization: author.authorization }, payload: { body: `during the ${name} attack` } })
      t.equal(posted.statusCode, 201, `${name}: the author's post`)
      const postId = posted.json().id as string
      // Watched from now on, beside the victim's transfers: the time from the post to its last feed.
      feed = waitFor(async () => {
        const [row] = await sql<{ n: number }[]>`select count(*)::int as n from feed_items where post_id = ${postId}`
        return row?.n === followers.length + 1
      }, 20_000, 50).then((ms) => ms < 0 ? -1 : Math.round(performance.now() - postSent))
    }
    await sleep(400)
  }
  const feedLagMs = await feed
  await waitFor(async () => arrived.size === sent.size, 15_000, 50)

  const lags = [...sent].map(([id, at]) => arrived.has(id) ? Math.round(arrived.get(id)! - at) : Infinity).sort((a, b) => a - b)
  const peaks = [...hostile.peakOpen.values()]
  t.comment(JSON.stringify({
    attack: name,
    victimFirstAttemptLagMs: lags.map((ms) => (Number.isFinite(ms) ? ms : 'never')),
    victimArrived: `${arrived.size}/${sent.size}`,
    feedMsFor1000Followers: feedLagMs,
    attackerAttemptsSeen: hostile.received.length,
    attackerPeakOpenPerEndpoint: peaks
  }))
  t.equal(arrived.size, sent.size, `${name}: every one of the victim's ${sent.size} events arrived`)
  t.ok(lags.every((ms) => ms < CONTRACT_MS), `${name}: every first attempt of the victim left within 5 s of its commit (slowest ${lags.at(-1)} ms)`)
  t.ok(feedLagMs >= 0 && feedLagMs < CONTRACT_MS, `${name}: the post reached all 1,000 followers' feeds within 5 s (${feedLagMs} ms)`)
  t.ok(peaks.length === ATTACK_ENDPOINTS && peaks.every((peak) => peak <= 4), `${name}: at most WEBHOOK_ENDPOINT_CONCURRENCY (4) attempts at once per endpoint across both workers (${peaks.join(', ')})`)

  for (const worker of workers) await worker.kill()
  await sql`
    delete from jobs where kind = 'webhook.deliver'
       and payload->>'deliveryId' in (select id::text from webhook_deliveries where endpoint_id = any(${hostileEndpoints.map((e) => e.id)}::uuid[]))`
}

t.test('10 endpoints that never answer, 200 events: the others still get their webhooks and feeds within 5 s', { skip }, async (t) => {
  await attack(t, 'hang', () => 'hang')
})

t.test('10 endpoints that answer 500 at once, 200 events: the others still get their webhooks and feeds within 5 s', { skip }, async (t) => {
  await attack(t, 'answer 500', () => ({ status: 500 }))
})

t.test('10 endpoints that answer after 9 s, 200 events: the others still get their webhooks and feeds within 5 s', { skip }, async (t) => {
  await attack(t, 'answer after 9 s', () => ({ status: 200, delayMs: 9000 }))
})
