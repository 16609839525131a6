import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import type { App } from '../../app.ts'
import { buildTestApp, createClient, createUser, fund, registerWebhookEndpoint, testSql, type TestClient, type TestUser } from '../helper.ts'
import { WEBHOOK_DELIVER } from '../../routes/webhook-endpoints/jobs.ts'
import { purgeDeliveries } from '../../routes/webhook-endpoints/queries.ts'
import { startReceiver, verifyStandardWebhook } from '../webhook-receiver.ts'

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
    await app.worker.runDue({ kinds: [WEBHOOK_DELIVER] })
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
  t.same(list.json().data, [{ id: created.id, url: created.url, events: created.events, createdAt: created.createdAt }])
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

  await app.worker.runDue({ kinds: [WEBHOOK_DELIVER] })
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
  await app.worker.runDue({ kinds: [WEBHOOK_DELIVER] })
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
  await app.worker.runDue({ kinds: [WEBHOOK_DELIVER] })
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
