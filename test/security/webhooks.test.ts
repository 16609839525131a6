// Webhooks against hostile callers: other principals' endpoints are invisible, the per-principal limit holds under
// a race, URLs and bodies are validated before anything is written, secrets are shown once, and nobody receives
// the events of transactions that are not theirs.
import { randomUUID } from 'node:crypto'
import net, { type AddressInfo } from 'node:net'
import t from 'tap'
import type { App } from '../../app.ts'
import { WEBHOOK_DELIVER } from '../../routes/webhooks/delivery-jobs.ts'
import { HOST_NOT_PUBLIC, MAX_URL_LENGTH } from '../../routes/webhooks/outbound.ts'
import { startDnsServer } from '../dns-server.ts'
import { buildTestApp, createClient, createUser, drainJobs, fund, registerWebhookEndpoint, testSql, type TestClient, type TestUser } from '../helper.ts'

const post = (app: App, caller: TestUser | TestClient, payload: unknown) =>
  app.inject({ method: 'POST', url: '/webhook-endpoints', headers: { authorization: caller.authorization }, payload: payload as Record<string, unknown> })

// Names resolve through a DNS server of this file's own on loopback; the production policy's apps point at it.
const PUBLIC_V4 = '93.184.215.14' // answered, never dialled
const dns = await startDnsServer({
  'hooks.public.test': { a: [PUBLIC_V4] },
  'internal.test': { a: ['10.0.0.5'] },
  'metadata.test': { a: ['169.254.169.254'] },
  'loopback.test': { a: ['127.0.0.1'], aaaa: ['::1'] },
  'half-private.test': { a: [PUBLIC_V4, '192.168.0.7'] },
  'silent.test': 'drop',
  'broken.test': 'servfail',
  // Public when registered, loopback when delivered to (DNS rebinding).
  'rebind.test': (query) => (query.seen === 0 ? { a: [PUBLIC_V4] } : { a: ['127.0.0.1'] })
})
t.teardown(dns.close)
const productionPolicy = { WEBHOOK_ALLOW_PRIVATE_TARGETS: 'false', WEBHOOK_DNS_SERVERS: dns.server, WEBHOOK_DNS_TIMEOUT_MS: '500' }

async function endpointCount (sql: ReturnType<typeof testSql>, principalId: string) {
  const [row] = await sql`select count(*)::int as n from webhook_endpoints where principal_id = ${principalId}`
  return row?.n as number
}

t.test('another principal\'s endpoint is 404 on every route, and stays', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const [victim, attacker] = [await createUser(app), await createUser(app)]
  const client = await createClient(app, ['events:read'])
  const created = (await post(app, victim, { url: 'http://127.0.0.1:9/hooks' })).json() as { id: string }
  for (const caller of [attacker, client]) {
    for (const [method, url] of [['DELETE', `/webhook-endpoints/${created.id}`], ['GET', `/webhook-endpoints/${created.id}/deliveries`]] as const) {
      const response = await app.inject({ method, url, headers: { authorization: caller.authorization } })
      t.equal(response.statusCode, 404, `${method} ${url} as ${caller === client ? 'a client' : 'another user'}`)
      t.notMatch(response.body, '127.0.0.1:9', 'nothing of the endpoint is revealed')
    }
    const list = await app.inject({ method: 'GET', url: '/webhook-endpoints', headers: { authorization: caller.authorization } })
    t.same(list.json().data, [])
  }
  t.equal(await endpointCount(sql, victim.id), 1)
  t.equal((await app.inject({ method: 'GET', url: '/webhook-endpoints' })).statusCode, 401, 'no token, no list')
})

t.test('a cursor of one endpoint\'s deliveries is refused on another\'s', async (t) => {
  const app = await buildTestApp(t)
  const [alice, bob] = [await createUser(app), await createUser(app)]
  await fund(app, alice, 100)
  const mine = (await post(app, alice, { url: 'http://127.0.0.1:9/a' })).json() as { id: string }
  const other = (await post(app, bob, { url: 'http://127.0.0.1:9/b' })).json() as { id: string }
  for (let i = 0; i < 3; i++) {
    await app.inject({ method: 'POST', url: '/transactions', headers: { authorization: alice.authorization, 'idempotency-key': randomUUID() }, payload: { kind: 'transfer', toUserId: bob.id, amount: 1, currency: 'USD' } })
  }
  const page = (await app.inject({ method: 'GET', url: `/webhook-endpoints/${mine.id}/deliveries?limit=1`, headers: { authorization: alice.authorization } })).json()
  t.type(page.nextCursor, 'string')
  const carried = await app.inject({ method: 'GET', url: `/webhook-endpoints/${other.id}/deliveries?limit=1&cursor=${page.nextCursor}`, headers: { authorization: bob.authorization } })
  t.equal(carried.statusCode, 400)
  // Its deliveries to the closed port are dropped with it, so no worker retries them after the test.
  await app.inject({ method: 'DELETE', url: `/webhook-endpoints/${mine.id}`, headers: { authorization: alice.authorization } })
})

t.test('the 11th endpoint is refused, even when registrations race', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const user = await createUser(app)
  const answers = await Promise.all(Array.from({ length: 14 }, (_, i) => post(app, user, { url: `http://127.0.0.1:9/hook-${i}` })))
  t.equal(answers.filter((r) => r.statusCode === 201).length, 10)
  const refused = answers.filter((r) => r.statusCode !== 201)
  t.equal(refused.length, 4)
  for (const response of refused) {
    t.equal(response.statusCode, 409)
    t.equal(response.json().type.endsWith('webhook_endpoint_limit'), true)
  }
  t.equal(await endpointCount(sql, user.id), 10)
  t.equal((await post(app, user, { url: 'http://127.0.0.1:9/eleven' })).statusCode, 409)
})

t.test('bad URLs and bodies are a 400 with a field error and write nothing', async (t) => {
  // Production policy: https and public addresses only (the address table itself is outbound.ts's test).
  const app = await buildTestApp(t, productionPolicy)
  const sql = testSql(t)
  const user = await createUser(app)
  const badUrls = [
    'http://example.com/hooks', 'https://127.0.0.1/hooks', 'https://localhost/hooks', 'https://10.0.0.1/',
    'https://169.254.169.254/latest/meta-data', 'https://[::1]/', 'https://user:pass@example.com/', 'ftp://example.com/',
    'javascript:alert(1)', 'not a url', ''
  ]
  for (const url of badUrls) {
    const response = await post(app, user, { url })
    t.equal(response.statusCode, 400, url)
    t.match(response.headers['content-type'], /application\/problem\+json/)
    t.ok((response.json().errors as Array<{ path: string }>).some((e) => e.path === 'url'), `${url}: the url field is named`)
  }
  for (const body of [{}, { url: 'https://example.com/', events: [] }, { url: 'https://example.com/', events: ['transaction.deleted'] },
    { url: 'https://example.com/', secret: 'whsec_mine' }, { url: 'https://example.com/'.padEnd(3000, 'a') }, { url: 42 }]) {
    t.equal((await post(app, user, body)).statusCode, 400, JSON.stringify(body).slice(0, 80))
  }
  t.equal(await endpointCount(sql, user.id), 0)
})

t.test('the URL length is measured on the normalised URL that is stored: one that grows past the bound is a 400 at url, never a 500', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const user = await createUser(app)
  // 1,000 x "é" is 1,019 characters as sent and 6,019 once percent-encoded (what the URL parser gives and the table stores).
  const grown = `http://127.0.0.1:9/${'é'.repeat(1000)}`
  t.ok(grown.length <= 2048 && new URL(grown).href.length > 2048, 'short as sent, long as stored')
  const response = await post(app, user, { url: grown })
  t.equal(response.statusCode, 400)
  t.match(response.headers['content-type'], /application\/problem\+json/)
  t.same(response.json().errors, [{ path: 'url', message: 'must be a URL of at most 2048 characters' }])
  t.equal(await endpointCount(sql, user.id), 0)
  // The bound is exact on the stored form: 2,048 characters once normalised is kept, 2,049 is refused.
  const ofLength = (length: number) => {
    const head = `http://127.0.0.1:9/${'é'.repeat(300)}` // 1,819 characters once encoded
    return head + 'a'.repeat(length - new URL(head).href.length)
  }
  const longest = await post(app, user, { url: ofLength(2048) })
  t.equal(longest.statusCode, 201, longest.body.slice(0, 200))
  const [stored] = await sql`select length(url)::int as length from webhook_endpoints where principal_id = ${user.id}`
  t.equal(stored?.length, 2048)
  const over = await post(app, user, { url: ofLength(2049) })
  t.equal(over.statusCode, 400)
  t.same(over.json().errors, [{ path: 'url', message: 'must be a URL of at most 2048 characters' }])
  t.equal(await endpointCount(sql, user.id), 1)
  // One bound: the table's CHECK is the constant the API checks against.
  const [check] = await sql`select pg_get_constraintdef(oid) as def from pg_constraint where conname = 'webhook_endpoints_url_check'`
  t.match(check?.def, `length(url) <= ${MAX_URL_LENGTH}`)
})

t.test('registration refuses every name that does not resolve to public addresses only with one answer, so internal names cannot be probed', async (t) => {
  const app = await buildTestApp(t, productionPolicy)
  const sql = testSql(t)
  const user = await createUser(app)
  const hosts = ['no-such-name.test', 'internal.test', 'metadata.test', 'loopback.test', 'half-private.test', 'silent.test', 'broken.test', 'localhost']
  const bodies = new Set<string>()
  for (const host of hosts) {
    const response = await post(app, user, { url: `https://${host}/hooks` })
    t.equal(response.statusCode, 400, host)
    t.match(response.headers['content-type'], /application\/problem\+json/)
    t.same(response.json().errors, [{ path: 'url', message: HOST_NOT_PUBLIC }], host)
    const { instance: _instance, ...rest } = response.json() as Record<string, unknown>
    bodies.add(JSON.stringify(rest))
  }
  t.equal(bodies.size, 1, 'the same answer for every one of them')
  t.equal(await endpointCount(sql, user.id), 0, 'nothing written')
  t.ok(hosts.filter((host) => host !== 'localhost').every((host) => dns.queries.some((query) => query.name === host)), 'each name was asked of the loopback server')
  const created = await post(app, user, { url: 'https://hooks.public.test/ledger' })
  t.equal(created.statusCode, 201)
  t.equal(await endpointCount(sql, user.id), 1)
})

t.test('a name re-pointed to loopback after registration is refused at the delivery\'s connection (DNS rebinding)', async (t) => {
  const app = await buildTestApp(t, productionPolicy)
  const sql = testSql(t)
  // Anything reaching this listener would be the SSRF: it counts connections and answers nothing.
  let connections = 0
  const listener = net.createServer((socket) => { connections++; socket.destroy() })
  await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise((resolve) => listener.close(resolve)))
  const user = await createUser(app)
  const endpoint = await registerWebhookEndpoint(t, app, user, `https://rebind.test:${(listener.address() as AddressInfo).port}/hook`)
  await fund(app, user, 100)
  const [delivery] = await sql<{ id: string }[]>`select id::text from webhook_deliveries where endpoint_id = ${endpoint.id}`
  t.ok(delivery !== undefined, 'a delivery was queued')
  const run = await drainJobs(app, { kinds: [WEBHOOK_DELIVER], matching: [{ deliveryId: delivery?.id }], maxSteps: 1 })
  t.equal(run.steps, 1)
  t.match(String(run.errors[0]), /refused_address/)
  t.equal(connections, 0, 'nothing reached the loopback listener')
  const [row] = await sql`select status, attempts, last_status_code from webhook_deliveries where id = ${delivery?.id ?? '0'}`
  t.same(row, { status: 'pending', attempts: 1, last_status_code: null }, 'recorded as a failed attempt, retried later')
  const answered = dns.queries.filter((query) => query.name === 'rebind.test' && query.type === 'A')
  t.ok(answered.length >= 2 && answered.some((query) => query.seen > 0), 'the connection asked again and got loopback')
})

t.test('a user may not register as anyone else, and a client needs events:read', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const user = await createUser(app)
  const fundsOnly = await createClient(app, ['funds:write'])
  t.equal((await post(app, user, { url: 'http://127.0.0.1:9/x', principalId: randomUUID() })).statusCode, 400, 'no mass assignment')
  t.equal((await post(app, fundsOnly, { url: 'http://127.0.0.1:9/x' })).statusCode, 403)
  t.equal((await app.inject({ method: 'GET', url: '/webhook-endpoints', headers: { authorization: fundsOnly.authorization } })).statusCode, 403)
  t.equal(await endpointCount(sql, fundsOnly.id), 0)
})

t.test('the secret is shown once; the API role cannot read deliveries it should not write', async (t) => {
  const app = await buildTestApp(t)
  const user = await createUser(app)
  const created = (await post(app, user, { url: 'http://127.0.0.1:9/s' })).json() as { id: string, secret: string }
  t.match(created.secret, /^whsec_/)
  for (const url of ['/webhook-endpoints', `/webhook-endpoints/${created.id}/deliveries`]) {
    const body = (await app.inject({ method: 'GET', url, headers: { authorization: user.authorization } })).body
    t.notMatch(body, created.secret.slice(6, 20), `${url} never carries the secret`)
  }
  // ledger_api may not forge deliveries (post_transaction writes them) nor rewrite an endpoint's secret.
  await t.rejects(app.db`insert into webhook_deliveries (event_id, endpoint_id, type, transaction_id) values (gen_random_uuid(), ${created.id}, 'x', 1)`, { code: '42501' })
  await t.rejects(app.db`update webhook_endpoints set secret = ${'whsec_' + 'A'.repeat(44)} where id = ${created.id}`, { code: '42501' })
  await t.rejects(app.db`update webhook_deliveries set transaction_id = 1 where endpoint_id = ${created.id}`, { code: '42501' })
})

t.test('events of other users\' transactions are never queued for you', async (t) => {
  // Asserted on the outbox itself (what post_transaction wrote), not by running deliveries: a delivery can only
  // ever go where a delivery row points.
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const [eve, alice, bob] = [await createUser(app), await createUser(app), await createUser(app)]
  const bank = await createClient(app, ['funds:write'])
  const eavesdroppingClient = await createClient(app, ['events:read'])
  const eveHook = (await post(app, eve, { url: 'http://127.0.0.1:9/eve' })).json() as { id: string }
  const clientHook = (await post(app, eavesdroppingClient, { url: 'http://127.0.0.1:9/client' })).json() as { id: string }
  const aliceHook = (await post(app, alice, { url: 'http://127.0.0.1:9/alice' })).json() as { id: string }
  await fund(app, alice, 100, 'USD', { client: bank })
  const transfer = await app.inject({ method: 'POST', url: '/transactions', headers: { authorization: alice.authorization, 'idempotency-key': randomUUID() }, payload: { kind: 'transfer', toUserId: bob.id, amount: 5, currency: 'USD' } })
  t.equal(transfer.statusCode, 201)
  const rows = await sql`select endpoint_id from webhook_deliveries where endpoint_id in ${sql([eveHook.id, clientHook.id, aliceHook.id])}`
  t.same(rows.map((r) => r.endpoint_id), [aliceHook.id, aliceHook.id], 'alice\'s two transactions reach only alice\'s endpoint')
  // Nothing is left to be retried against the closed port once the test ends.
  await sql`delete from webhook_endpoints where id = ${aliceHook.id}`
  const list = (await app.inject({ method: 'GET', url: `/webhook-endpoints/${eveHook.id}/deliveries`, headers: { authorization: eve.authorization } })).json()
  t.same(list.data, [])
})

t.test('the API role cannot queue events itself: queue_transaction_webhooks() runs only inside post_transaction()', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const [alice, bob] = [await createUser(app), await createUser(app)]
  const hook = (await post(app, alice, { url: 'http://127.0.0.1:9/forged' })).json() as { id: string }
  const bank = await createClient(app, ['funds:write'])
  const deposit = (await fund(app, alice, 7, 'USD', { client: bank })).json() as { id: string }
  // As whoever holds the API role's credentials: queue alice's transaction again, or bob's money as alice's event.
  await t.rejects(app.db`select queue_transaction_webhooks(${deposit.id}::bigint, null, ${alice.id}::uuid, null)`, { code: '42501' }, 'no EXECUTE for the API role')
  await t.rejects(app.db`select queue_transaction_webhooks(${deposit.id}::bigint, ${bob.id}::uuid, ${alice.id}::uuid, ${bank.id}::uuid)`, { code: '42501' })
  const [fn] = await sql<{ definer: boolean, config: string, public: boolean }[]>`
    select prosecdef as definer, array_to_string(proconfig, ',') as config,
           exists (select 1 from aclexplode(coalesce(proacl, acldefault('f', proowner))) a where a.grantee = 0 and a.privilege_type = 'EXECUTE') as public
      from pg_proc where proname = 'queue_transaction_webhooks'`
  t.same(fn, { definer: false, config: 'search_path=pg_catalog, pg_temp', public: false }, 'its caller\'s rights, pinned search_path, no PUBLIC execute')
  const [queued] = await sql<{ n: number }[]>`select count(*)::int as n from webhook_deliveries where endpoint_id = ${hook.id}`
  t.equal(queued?.n, 1, 'the deposit queued its one event, through post_transaction(); the refused calls queued none')
  await sql`delete from webhook_endpoints where id = ${hook.id}`
})

t.test('PATCH /webhook-endpoints/:id: only the owner, only { enabled: boolean }, nothing else changes', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const [owner, attacker] = [await createUser(app), await createUser(app)]
  const client = await createClient(app, ['events:read'])
  const fundsOnly = await createClient(app, ['funds:write'])
  const created = (await post(app, owner, { url: 'http://127.0.0.1:9/patched' })).json() as { id: string, url: string }
  const patch = (caller: { authorization: string } | null, id: string, payload: unknown, contentType = 'application/json') => app.inject({
    method: 'PATCH',
    url: `/webhook-endpoints/${id}`,
    headers: { ...(caller === null ? {} : { authorization: caller.authorization }), 'content-type': contentType },
    payload: typeof payload === 'string' ? payload : JSON.stringify(payload)
  })
  const state = async () => (await sql`select url, secret, principal_id, disabled_at, consecutive_failures from webhook_endpoints where id = ${created.id}`)[0]
  const before = await state()

  for (const caller of [attacker, client]) {
    const response = await patch(caller, created.id, { enabled: false })
    t.equal(response.statusCode, 404, 'another principal\'s endpoint does not exist for them')
    t.notMatch(response.body, '127.0.0.1:9')
  }
  t.equal((await patch(fundsOnly, created.id, { enabled: false })).statusCode, 403, 'events:read is needed')
  t.equal((await patch(null, created.id, { enabled: false })).statusCode, 401)
  t.equal((await patch(owner, randomUUID(), { enabled: true })).statusCode, 404, 'an unknown id')

  for (const body of [{}, { enabled: 'true' }, { enabled: 1 }, { enabled: null }, { enabled: true, url: 'http://127.0.0.1:9/elsewhere' },
    { enabled: true, secret: 'whsec_mine' }, { enabled: true, principalId: attacker.id }, { enabled: true, consecutiveFailures: 0 }, [true]]) {
    const response = await patch(owner, created.id, body)
    t.equal(response.statusCode, 400, JSON.stringify(body))
    t.match(response.headers['content-type'], /application\/problem\+json/)
  }
  t.equal((await patch(owner, created.id, '{"enabled": tru')).statusCode, 400, 'malformed JSON')
  t.equal((await patch(owner, created.id, 'enabled=true', 'application/x-www-form-urlencoded')).statusCode, 415)
  t.equal((await patch(owner, 'not-a-uuid', { enabled: true })).statusCode, 400)
  t.same(await state(), before, 'nothing changed')

  const own = await patch(owner, created.id, { enabled: false })
  t.equal(own.statusCode, 200)
  t.match(await state(), { url: created.url, secret: before?.secret, principal_id: owner.id, disabled_at: Date })
})

t.test('the API role may change an endpoint\'s health, never its URL, secret or owner; the lane functions are its only', async (t) => {
  const app = await buildTestApp(t)
  const user = await createUser(app)
  const created = (await post(app, user, { url: 'http://127.0.0.1:9/role' })).json() as { id: string }
  for (const column of ['url', 'principal_id', 'principal_kind', 'events', 'created_at']) {
    await t.rejects(app.db.unsafe(`update webhook_endpoints set ${column} = ${column} where id = $1`, [created.id]), { code: '42501' }, `no UPDATE of ${column}`)
  }
  await app.db`update webhook_endpoints set consecutive_failures = 0, failing_since = null, disabled_at = null, last_claimed_at = null where id = ${created.id}`
  // A job's endpoint is post_transaction()'s to write: the API role cannot point a job at another endpoint.
  await t.rejects(app.db`update jobs set endpoint_id = ${created.id} where false`, { code: '42501' }, 'no UPDATE of jobs.endpoint_id')
  await t.rejects(app.db`insert into jobs (kind, payload, endpoint_id) values ('feed.fan_out', '{}', ${created.id})`, { code: '42501' }, 'no INSERT of jobs.endpoint_id')
  // Executable by the API role (granted), and by nobody else: PUBLIC's default EXECUTE was revoked.
  const grants = await app.db<{ fn: string, public: boolean, api: boolean }[]>`
    select p.proname as fn,
           exists (select 1 from aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a where a.grantee = 0 and a.privilege_type = 'EXECUTE') as public,
           has_function_privilege('ledger_api', p.oid, 'EXECUTE') as api
      from pg_proc p
     where p.proname in ('claim_webhook_jobs', 'record_webhook_attempt', 'disable_webhook_endpoint') order by p.proname`
  t.same(grants, [
    { fn: 'claim_webhook_jobs', public: false, api: true },
    { fn: 'disable_webhook_endpoint', public: false, api: true },
    { fn: 'record_webhook_attempt', public: false, api: true }
  ])
  const settings = await app.db<{ fn: string, config: string | null, definer: boolean }[]>`
    select proname as fn, array_to_string(proconfig, ',') as config, prosecdef as definer from pg_proc
     where proname in ('claim_webhook_jobs', 'record_webhook_attempt', 'disable_webhook_endpoint') order by proname`
  for (const row of settings) {
    t.equal(row.definer, false, `${row.fn} runs with the caller's rights`)
    t.equal(row.config, 'search_path=pg_catalog, pg_temp', `${row.fn} pins search_path, pg_temp last`)
  }
})
