import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import type { App } from '../../../app.ts'
import { buildTestApp, createClient, createUser, fund, registerWebhookEndpoint, testSql, type TestClient, type TestUser } from '../../helper.ts'
import { WEBHOOK_DELIVER } from '../../../routes/webhooks/delivery-jobs.ts'
import { purgeDeliveries } from '../../../routes/webhooks/repository.ts'
import { startReceiver, verifyStandardWebhook } from '../../webhook-receiver.ts'

// Retries come due within a few tens of milliseconds, and attempts time out fast, so the schedule runs in the test.
const fastRetries = { JOB_RETRY_BASE_MS: '40', JOB_RETRY_MAX_DELAY_S: '1', WEBHOOK_TIMEOUT_MS: '300' }

function transfer (app: App, from: TestUser, to: TestUser, amount: number, key: string = randomUUID()) {
  return app.inject({ method: 'POST', url: '/transactions', headers: { authorization: from.authorization, 'idempotency-key': key }, payload: { kind: 'transfer', toUserId: to.id, amount, currency: 'USD' } })
}

async function deliveries (app: App, caller: TestUser | TestClient, endpointId: string) {
  const response = await app.inject({ method: 'GET', url: `/webhook-endpoints/${endpointId}/deliveries`, headers: { authorization: caller.authorization } })
  return response.json().data as Array<{ eventId: string, status: string, attempts: number, lastStatusCode: number | null, nextAttemptAt: string | null, transactionId: string }>
}

/** Runs due jobs until `done` holds (retries come due a little later), bounded. */
async function runUntil (app: App, done: () => boolean | Promise<boolean>, rounds = 100) {
  for (let round = 0; round < rounds; round++) {
    await app.jobs.runDue({ kinds: [WEBHOOK_DELIVER] })
    if (await done()) return true
    await sleep(30)
  }
  return false
}

t.test('register, list without secrets, delete; the endpoint answers 404 to everyone else', async (t) => {
  const app = await buildTestApp(t)
  const receiver = await startReceiver()
  t.teardown(receiver.close)
  const [alice, bob] = [await createUser(app), await createUser(app)]
  const created = await registerWebhookEndpoint(t, app, alice, receiver.url)
  t.match(created.secret, /^whsec_[A-Za-z0-9+/]{43}=$/, 'whsec_ and base64 of 32 random bytes')
  t.same(created.events, ['transaction.created'], 'the default subscription')
  t.equal(Buffer.from(created.secret.slice(6), 'base64').length, 32)

  const list = await app.inject({ method: 'GET', url: '/webhook-endpoints', headers: { authorization: alice.authorization } })
  t.equal(list.statusCode, 200)
  t.same(list.json().data, [{
    id: created.id, url: created.url, events: created.events, status: 'enabled', consecutiveFailures: 0, failingSince: null, disabledAt: null, createdAt: created.createdAt
  }])
  t.notMatch(list.body, /whsec_/, 'the secret is never listed')

  const others = await app.inject({ method: 'GET', url: '/webhook-endpoints', headers: { authorization: bob.authorization } })
  t.same(others.json().data, [])
  t.equal((await app.inject({ method: 'DELETE', url: `/webhook-endpoints/${created.id}`, headers: { authorization: bob.authorization } })).statusCode, 404)
  t.equal((await app.inject({ method: 'GET', url: `/webhook-endpoints/${created.id}/deliveries`, headers: { authorization: bob.authorization } })).statusCode, 404)
  const deleted = await app.inject({ method: 'DELETE', url: `/webhook-endpoints/${created.id}`, headers: { authorization: alice.authorization } })
  t.equal(deleted.statusCode, 204)
  t.equal(deleted.body, '')
  t.equal((await app.inject({ method: 'DELETE', url: `/webhook-endpoints/${created.id}`, headers: { authorization: alice.authorization } })).statusCode, 404)
})

t.test('a transfer is delivered to both sides, signed, with the transaction exactly as the API returns it', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const receiver = await startReceiver()
  t.teardown(receiver.close)
  const [alice, bob, carol] = [await createUser(app), await createUser(app), await createUser(app)]
  await fund(app, alice, 1000)
  const aliceHook = await registerWebhookEndpoint(t, app, alice, receiver.url)
  const bobHook = await registerWebhookEndpoint(t, app, bob, receiver.url)
  const carolHook = await registerWebhookEndpoint(t, app, carol, receiver.url)

  const posted = await transfer(app, alice, bob, 250)
  t.equal(posted.statusCode, 201)
  const id = posted.json().id as string
  const [queued] = await sql`select count(*)::int as n from webhook_deliveries where transaction_id = ${id}`
  t.equal(queued?.n, 2, 'one delivery per interested principal with an endpoint, written with the transaction')

  t.ok(await runUntil(app, () => receiver.received.length >= 2))
  t.equal(receiver.received.length, 2, 'carol, whom the transaction does not touch, gets nothing')
  const fetched = (await app.inject({ method: 'GET', url: `/transactions/${id}`, headers: { authorization: alice.authorization } })).json()
  const secrets = new Map([[aliceHook.secret, 'alice'], [bobHook.secret, 'bob']])
  const verifiedBy = new Set<string>()
  for (const received of receiver.received) {
    const body = JSON.parse(received.body)
    t.same(body.data, fetched, 'data is the transaction as GET /transactions/:id returns it')
    t.equal(body.type, 'transaction.created')
    t.equal(body.id, received.id, 'the payload id is the webhook-id')
    t.equal(body.timestamp, fetched.createdAt)
    t.equal(received.headers['content-type'], 'application/json')
    for (const [secret, who] of secrets) if (verifyStandardWebhook(secret, received)) verifiedBy.add(who)
    t.notOk(verifyStandardWebhook(carolHook.secret, received), 'another secret does not verify it')
    t.notOk(verifyStandardWebhook(aliceHook.secret, { ...received, body: received.body.replace('250', '251') }) && verifyStandardWebhook(bobHook.secret, { ...received, body: received.body.replace('250', '251') }), 'a changed body does not verify')
  }
  t.same([...verifiedBy].sort(), ['alice', 'bob'], 'each event is signed with its own endpoint\'s secret')
  t.not(receiver.received[0]?.id, receiver.received[1]?.id, 'one event per principal')

  const [aliceDelivery] = await deliveries(app, alice, aliceHook.id)
  t.match(aliceDelivery, { transactionId: id, status: 'delivered', attempts: 1, lastStatusCode: 200, nextAttemptAt: null })
  t.same(await deliveries(app, carol, carolHook.id), [])
  const [left] = await sql`select count(*)::int as n from jobs j where j.kind = 'webhook.deliver' and (j.payload->>'deliveryId')::bigint in (select id from webhook_deliveries where transaction_id = ${id})`
  t.equal(left?.n, 0, 'the queue holds nothing for it once delivered')
})

t.test('a replayed or refused request emits nothing', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const receiver = await startReceiver()
  t.teardown(receiver.close)
  const [alice, bob] = [await createUser(app), await createUser(app)]
  await fund(app, alice, 100)
  await registerWebhookEndpoint(t, app, alice, receiver.url)
  const key = randomUUID()
  t.equal((await transfer(app, alice, bob, 10, key)).statusCode, 201)
  const replay = await transfer(app, alice, bob, 10, key)
  t.equal(replay.headers['idempotent-replayed'], 'true')
  t.equal((await transfer(app, alice, bob, 1000)).statusCode, 422, 'insufficient funds')
  const [row] = await sql`select count(*)::int as n from webhook_deliveries d join transactions t on t.id = d.transaction_id where t.from_user_id = ${alice.id}`
  t.equal(row?.n, 1, 'only the one created transaction has an event')
})

t.test('a receiver answering 500 then 200 gets the same webhook-id again, and the history shows both attempts', async (t) => {
  const app = await buildTestApp(t, fastRetries)
  const receiver = await startReceiver((n) => ({ status: n === 0 ? 500 : 200 }))
  t.teardown(receiver.close)
  const [alice, bob] = [await createUser(app), await createUser(app)]
  await fund(app, alice, 100)
  const hook = await registerWebhookEndpoint(t, app, alice, receiver.url)
  t.equal((await transfer(app, alice, bob, 10)).statusCode, 201)

  await app.jobs.runDue({ kinds: [WEBHOOK_DELIVER] })
  t.equal(receiver.received.length, 1)
  const [failed] = await deliveries(app, alice, hook.id)
  t.match(failed, { status: 'pending', attempts: 1, lastStatusCode: 500 })
  t.ok(failed?.nextAttemptAt !== null && Date.parse(failed!.nextAttemptAt!) > Date.now() - 1000, 'the next attempt is scheduled')

  t.ok(await runUntil(app, () => receiver.unique.size === 1))
  t.equal(receiver.received.length, 2)
  t.equal(receiver.received[1]?.id, receiver.received[0]?.id, 'the same webhook-id on the retry')
  t.ok(verifyStandardWebhook(hook.secret, receiver.received[1]!))
  t.match((await deliveries(app, alice, hook.id))[0], { status: 'delivered', attempts: 2, lastStatusCode: 200, nextAttemptAt: null })
})

t.test('a hanging receiver times out and is retried', async (t) => {
  const app = await buildTestApp(t, fastRetries)
  const receiver = await startReceiver((n) => n === 0 ? 'hang' : { status: 204 })
  t.teardown(receiver.close)
  const [alice, bob] = [await createUser(app), await createUser(app)]
  await fund(app, alice, 100)
  const hook = await registerWebhookEndpoint(t, app, alice, receiver.url)
  t.equal((await transfer(app, alice, bob, 10)).statusCode, 201)
  const started = Date.now()
  await app.jobs.runDue({ kinds: [WEBHOOK_DELIVER] })
  t.ok(Date.now() - started < 5000, 'the attempt was cut at the timeout')
  t.match((await deliveries(app, alice, hook.id))[0], { status: 'pending', attempts: 1, lastStatusCode: null })
  t.ok(await runUntil(app, () => receiver.unique.size === 1))
  t.match((await deliveries(app, alice, hook.id))[0], { status: 'delivered', attempts: 2, lastStatusCode: 204 })
})

t.test('a redirect is a failed attempt and is never followed', async (t) => {
  const app = await buildTestApp(t, fastRetries)
  const target = await startReceiver()
  t.teardown(target.close)
  const receiver = await startReceiver(() => ({ status: 307, headers: { location: target.url } }))
  t.teardown(receiver.close)
  const [alice, bob] = [await createUser(app), await createUser(app)]
  await fund(app, alice, 100)
  const hook = await registerWebhookEndpoint(t, app, alice, receiver.url)
  t.equal((await transfer(app, alice, bob, 10)).statusCode, 201)
  await app.jobs.runDue({ kinds: [WEBHOOK_DELIVER] })
  t.equal(receiver.received.length, 1)
  t.equal(target.received.length, 0, 'the location was not followed')
  t.match((await deliveries(app, alice, hook.id))[0], { status: 'pending', attempts: 1, lastStatusCode: 307 })
})

t.test('after the retry window a delivery is marked failed and leaves the queue', async (t) => {
  const app = await buildTestApp(t, { ...fastRetries, JOB_RETRY_WINDOW_S: '1' })
  const sql = testSql(t)
  const receiver = await startReceiver(() => ({ status: 503 }))
  t.teardown(receiver.close)
  const [alice, bob] = [await createUser(app), await createUser(app)]
  await fund(app, alice, 100)
  const hook = await registerWebhookEndpoint(t, app, alice, receiver.url)
  const id = (await transfer(app, alice, bob, 10)).json().id as string
  t.ok(await runUntil(app, async () => (await deliveries(app, alice, hook.id))[0]?.status === 'failed', 200))
  const [delivery] = await deliveries(app, alice, hook.id)
  t.match(delivery, { status: 'failed', lastStatusCode: 503, nextAttemptAt: null })
  t.ok(delivery!.attempts >= 2, `retried within the window (${delivery!.attempts} attempts)`)
  t.equal(receiver.received.length, delivery!.attempts, 'every attempt recorded')
  t.ok(new Set(receiver.received.map((r) => r.id)).size === 1)
  const [left] = await sql`select count(*)::int as n from jobs where (payload->>'deliveryId')::bigint in (select id from webhook_deliveries where transaction_id = ${id})`
  t.equal(left?.n, 0)
})

t.test('a service client with events:read receives the transactions it posted', async (t) => {
  const app = await buildTestApp(t)
  const receiver = await startReceiver()
  t.teardown(receiver.close)
  const user = await createUser(app)
  const client = await createClient(app, ['funds:write', 'events:read'])
  const hook = await registerWebhookEndpoint(t, app, client, receiver.url)
  const posted = await fund(app, user, 500, 'USD', { client })
  t.ok(await runUntil(app, () => receiver.received.length >= 1))
  t.equal(JSON.parse(receiver.received[0]!.body).data.id, posted.json().id)
  t.ok(verifyStandardWebhook(hook.secret, receiver.received[0]!))

  const withoutScope = await createClient(app, ['funds:write'])
  const refused = await app.inject({ method: 'POST', url: '/webhook-endpoints', headers: { authorization: withoutScope.authorization }, payload: { url: receiver.url } })
  t.equal(refused.statusCode, 403, 'events:read is needed')
})

t.test('deliveries are listed newest first, in cursor pages', async (t) => {
  const app = await buildTestApp(t)
  const receiver = await startReceiver()
  t.teardown(receiver.close)
  const [alice, bob] = [await createUser(app), await createUser(app)]
  await fund(app, alice, 100)
  const hook = await registerWebhookEndpoint(t, app, alice, receiver.url)
  const ids: string[] = []
  for (let i = 0; i < 5; i++) ids.push((await transfer(app, alice, bob, 1)).json().id)
  const seen: string[] = []
  let cursor: string | null = null
  do {
    const response = await app.inject({ method: 'GET', url: `/webhook-endpoints/${hook.id}/deliveries?limit=2${cursor === null ? '' : `&cursor=${cursor}`}`, headers: { authorization: alice.authorization } })
    t.equal(response.statusCode, 200)
    const page = response.json() as { data: Array<{ transactionId: string, status: string }>, nextCursor: string | null }
    t.ok(page.data.length <= 2)
    seen.push(...page.data.map((d) => d.transactionId))
    cursor = page.nextCursor
  } while (cursor !== null)
  t.same(seen, [...ids].reverse())
})

t.test('finished deliveries past retention are purged; pending ones never are', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const receiver = await startReceiver()
  t.teardown(receiver.close)
  const [alice, bob] = [await createUser(app), await createUser(app)]
  await fund(app, alice, 100)
  const hook = await registerWebhookEndpoint(t, app, alice, receiver.url)
  for (let i = 0; i < 2; i++) t.equal((await transfer(app, alice, bob, 1)).statusCode, 201)
  const [first] = await sql`select id from webhook_deliveries where endpoint_id = ${hook.id} order by id limit 1`
  // One delivered, one still pending; both made to look 8 days old.
  await sql`update webhook_deliveries set status = 'delivered', created_at = now() - interval '8 days' where id = ${first!.id}`
  await sql`update webhook_deliveries set created_at = now() - interval '8 days' where endpoint_id = ${hook.id} and id <> ${first!.id}`
  let purged = 0
  for (let i = 0; i < 20; i++) {
    const n = await purgeDeliveries(app.db, 7 * 86_400, 1000)
    purged += n
    if (n < 1000) break
  }
  t.ok(purged >= 1)
  const rows = await sql`select status from webhook_deliveries where endpoint_id = ${hook.id}`
  t.same(rows.map((r) => r.status), ['pending'], 'the delivered one is gone, the pending one stays')
})

/** This endpoint's deliveries as `matching` fragments for runDue: the test runs only its own jobs. */
async function jobsOf (sql: ReturnType<typeof testSql>, endpointId: string) {
  const rows = await sql<{ id: string }[]>`select id::text from webhook_deliveries where endpoint_id = ${endpointId}`
  return rows.map((row) => ({ deliveryId: row.id }))
}

async function endpointOf (app: App, caller: TestUser | TestClient, endpointId: string) {
  const list = await app.inject({ method: 'GET', url: '/webhook-endpoints', headers: { authorization: caller.authorization } })
  return (list.json().data as Array<Record<string, unknown>>).find((endpoint) => endpoint.id === endpointId)
}

t.test('an attempt in progress already counts in the deliveries list, with no next attempt until it ends', async (t) => {
  const app = await buildTestApp(t, { ...fastRetries, WEBHOOK_TIMEOUT_MS: '1500' })
  const sql = testSql(t)
  const receiver = await startReceiver(() => 'hang')
  t.teardown(receiver.close)
  const [alice, bob] = [await createUser(app), await createUser(app)]
  await fund(app, alice, 100)
  const hook = await registerWebhookEndpoint(t, app, alice, receiver.url)
  t.equal((await transfer(app, alice, bob, 10)).statusCode, 201)
  const running = app.jobs.runDue({ kinds: [WEBHOOK_DELIVER], matching: await jobsOf(sql, hook.id) })
  t.ok(await runUntilReceived(() => receiver.received.length === 1), 'the attempt is at the receiver')
  t.match((await deliveries(app, alice, hook.id))[0], { status: 'pending', attempts: 1, lastStatusCode: null, nextAttemptAt: null }, 'counted while it runs')
  await running
  const [after] = await deliveries(app, alice, hook.id)
  t.match(after, { status: 'pending', attempts: 1, lastStatusCode: null })
  t.ok(after?.nextAttemptAt !== null && Date.parse(after!.nextAttemptAt!) > Date.now() - 1000, 'the retry is scheduled once it timed out')
})

t.test('endpoint health: failures in a row are listed, a delivery clears them; 3 days of failures disable it; PATCH re-enables', async (t) => {
  const app = await buildTestApp(t, fastRetries)
  const sql = testSql(t)
  const receiver = await startReceiver(() => ({ status: 500 }))
  t.teardown(receiver.close)
  const [alice, bob] = [await createUser(app), await createUser(app)]
  await fund(app, alice, 100)
  const hook = await registerWebhookEndpoint(t, app, alice, receiver.url)
  for (let i = 0; i < 2; i++) t.equal((await transfer(app, alice, bob, 1)).statusCode, 201)
  await app.jobs.runDue({ kinds: [WEBHOOK_DELIVER], matching: await jobsOf(sql, hook.id) })
  const failing = await endpointOf(app, alice, hook.id)
  t.match(failing, { status: 'enabled', consecutiveFailures: 2, disabledAt: null })
  t.ok(typeof failing?.failingSince === 'string', 'failing since the first failure')

  receiver.behaviour = () => ({ status: 200 })
  t.ok(await runUntil(app, async () => (await endpointOf(app, alice, hook.id))?.consecutiveFailures === 0))
  t.match(await endpointOf(app, alice, hook.id), { status: 'enabled', consecutiveFailures: 0, failingSince: null }, 'one delivery clears the run')

  // Three days of failures, compressed: the run began 72 hours ago, and the next failure ends it.
  receiver.behaviour = () => ({ status: 500 })
  for (let i = 0; i < 3; i++) t.equal((await transfer(app, alice, bob, 1)).statusCode, 201)
  await app.jobs.runDue({ kinds: [WEBHOOK_DELIVER], matching: await jobsOf(sql, hook.id), limit: 1 })
  await sql`update webhook_endpoints set failing_since = now() - interval '72 hours 1 minute' where id = ${hook.id}`
  const disabledBefore = (await app.metrics.webhookEndpointsDisabled.get()).values[0]?.value ?? 0
  await app.jobs.runDue({ kinds: [WEBHOOK_DELIVER], matching: await jobsOf(sql, hook.id), limit: 1 })
  const disabled = await endpointOf(app, alice, hook.id)
  t.match(disabled, { status: 'disabled' }, 'disabled after failing every attempt for 3 days')
  t.ok(typeof disabled?.disabledAt === 'string')
  t.ok((disabled?.consecutiveFailures as number) >= 2)
  const list = await deliveries(app, alice, hook.id)
  const undelivered = list.filter((d) => d.status !== 'delivered')
  t.ok(undelivered.length >= 3 && undelivered.every((d) => d.status === 'failed' && d.nextAttemptAt === null), 'its pending deliveries are failed')
  const [queued] = await sql<{ n: number }[]>`select count(*)::int as n from jobs where endpoint_id = ${hook.id}`
  t.equal(queued?.n, 0, 'and their jobs are gone')
  t.equal((await app.metrics.webhookEndpointsDisabled.get()).values[0]?.value, disabledBefore + 1, 'ledger_webhook_endpoints_disabled_total counts it')

  t.equal((await transfer(app, alice, bob, 1)).statusCode, 201)
  t.equal((await deliveries(app, alice, hook.id)).length, list.length, 'a disabled endpoint is sent nothing new')

  receiver.behaviour = () => ({ status: 200 })
  const enabled = await app.inject({ method: 'PATCH', url: `/webhook-endpoints/${hook.id}`, headers: { authorization: alice.authorization }, payload: { enabled: true } })
  t.equal(enabled.statusCode, 200)
  t.match(enabled.json(), { id: hook.id, status: 'enabled', consecutiveFailures: 0, failingSince: null, disabledAt: null })
  t.notOk('secret' in enabled.json(), 'no secret in the answer')
  const id = (await transfer(app, alice, bob, 1)).json().id as string
  t.ok(await runUntil(app, async () => (await deliveries(app, alice, hook.id)).some((d) => d.transactionId === id && d.status === 'delivered')), 'delivery resumes with the next event')
})

t.test('its owner can disable an endpoint: pending deliveries fail and nothing more is sent', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const receiver = await startReceiver()
  t.teardown(receiver.close)
  const [alice, bob] = [await createUser(app), await createUser(app)]
  await fund(app, alice, 100)
  const hook = await registerWebhookEndpoint(t, app, alice, receiver.url)
  t.equal((await transfer(app, alice, bob, 1)).statusCode, 201)
  const response = await app.inject({ method: 'PATCH', url: `/webhook-endpoints/${hook.id}`, headers: { authorization: alice.authorization }, payload: { enabled: false } })
  t.equal(response.statusCode, 200)
  t.match(response.json(), { status: 'disabled', disabledAt: String })
  t.match(await deliveries(app, alice, hook.id), [{ status: 'failed', attempts: 0, nextAttemptAt: null }])
  const [queued] = await sql<{ n: number }[]>`select count(*)::int as n from jobs where endpoint_id = ${hook.id}`
  t.equal(queued?.n, 0)
  t.equal(receiver.received.length, 0)
  t.equal((await app.inject({ method: 'PATCH', url: `/webhook-endpoints/${hook.id}`, headers: { authorization: alice.authorization }, payload: { enabled: false } })).statusCode, 200, 'again: still disabled')
})

async function runUntilReceived (done: () => boolean, timeoutMs = 5000) {
  const started = Date.now()
  while (Date.now() - started < timeoutMs) {
    if (done()) return true
    await sleep(10)
  }
  return false
}
