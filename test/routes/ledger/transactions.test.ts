import { randomUUID } from 'node:crypto'
import t from 'tap'
import { buildTestApp, createClient, createUser, dbSpans, fund, injectTraced, testSql, type TestClient, type TestUser } from '../../helper.ts'
import type { App } from '../../../app.ts'
import { assertLedgerBalanced, balance, transactionCount } from './support.ts'

/** A user posts transfers; a service client posts deposits and withdrawals. */
function post (app: App, caller: TestUser | TestClient, payload: Record<string, unknown>, key: string = randomUUID()) {
  return app.inject({ method: 'POST', url: '/transactions', headers: { authorization: caller.authorization, 'idempotency-key': key }, payload })
}

/** A deposit or withdrawal body for `user`, with a fresh settlement reference unless one is given. */
const funding = (kind: 'deposit' | 'withdrawal', user: TestUser, amount: number, extra: Record<string, unknown> = {}) =>
  ({ kind, userId: user.id, amount, currency: 'USD', reference: `ref-${randomUUID()}`, ...extra })

t.test('deposit, withdrawal and transfer move exactly the amount', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const processor = await createClient(app)
  const alice = await createUser(app)
  const bob = await createUser(app)

  const deposit = await post(app, processor, funding('deposit', alice, 10_000, { description: 'salary', reference: 'bank-0001' }))
  t.equal(deposit.statusCode, 201)
  const created = deposit.json()
  t.match(created, { kind: 'deposit', amount: 10_000, currency: 'USD', fromUserId: null, toUserId: alice.id, description: 'salary', reference: 'bank-0001' })
  t.match(created.id, /^\d+$/)
  t.equal(deposit.headers.location, `/transactions/${created.id}`)
  t.equal(deposit.headers['idempotent-replayed'], undefined)
  const [row] = await sql`select client_id, reference from transactions where id = ${created.id}`
  t.same(row, { client_id: processor.id, reference: 'bank-0001' }, 'the deposit names the client that posted it')

  const withdrawal = await post(app, processor, funding('withdrawal', alice, 2_500))
  t.equal(withdrawal.statusCode, 201)
  t.match(withdrawal.json(), { kind: 'withdrawal', fromUserId: alice.id, toUserId: null, amount: 2_500 })
  const transfer = await post(app, alice, { kind: 'transfer', amount: 1_000, currency: 'USD', toUserId: bob.id })
  t.equal(transfer.statusCode, 201)
  t.match(transfer.json(), { fromUserId: alice.id, toUserId: bob.id, amount: 1_000, reference: null })

  t.equal(await balance(sql, alice.id), 6_500)
  t.equal(await balance(sql, bob.id), 1_000)
  const balances = await app.inject({ method: 'GET', url: '/balances', headers: { authorization: alice.authorization } })
  t.same(balances.json(), { data: [{ currency: 'USD', balance: 6_500 }] })
  const [entries] = await sql`select count(*)::int as n from entries where transaction_id = ${transfer.json().id}`
  t.equal(entries?.n, 2, 'a transfer has two entries')
  await assertLedgerBalanced(t, sql, [alice.id, bob.id])
})

t.test('a money write is one database round trip', async (t) => {
  const app = await buildTestApp(t)
  const processor = await createClient(app)
  const alice = await createUser(app)
  const bob = await createUser(app)
  for (const [caller, payload] of [
    [processor, funding('deposit', alice, 5, { currency: 'EUR' })],
    [alice, { kind: 'transfer', amount: 5, currency: 'EUR', toUserId: bob.id }]
  ] as const) {
    const { response, spans } = await injectTraced(app, {
      method: 'POST', url: '/transactions', headers: { authorization: caller.authorization, 'idempotency-key': randomUUID() }, payload
    })
    t.equal(response.statusCode, 201)
    t.equal(dbSpans(spans).length, 1, `${payload.kind}: one statement`)
  }
})

t.test('an overdraft is 422 and writes nothing', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const processor = await createClient(app)
  const alice = await createUser(app)
  const bob = await createUser(app)
  await fund(app, alice, 100, 'USD', { client: processor })
  const key = randomUUID()
  const refusals: Array<[TestUser | TestClient, Record<string, unknown>]> = [
    [processor, funding('withdrawal', alice, 101, { reference: 'payout-1' })],
    [alice, { kind: 'transfer', amount: 101, currency: 'USD', toUserId: bob.id }],
    [processor, funding('withdrawal', alice, 1, { currency: 'EUR', reference: 'payout-2' })]
  ]
  for (const [caller, payload] of refusals) {
    const response = await post(app, caller, payload, key)
    t.equal(response.statusCode, 422, JSON.stringify(payload))
    t.equal(response.json().type, 'https://ledger-api.dev/problems/insufficient_funds')
  }
  t.equal(await balance(sql, alice.id), 100)
  t.equal(await balance(sql, bob.id), null)
  t.equal(await transactionCount(sql, alice.id), 1)
  const [keys] = await sql`select count(*)::int as n from idempotency_keys where principal_id in (${alice.id}, ${processor.id})`
  t.equal(keys?.n, 1, 'the refused keys were not kept (only the funding deposit\'s), so a retry after a deposit can succeed')
  const [references] = await sql`select count(*)::int as n from transactions where client_id = ${processor.id} and reference like 'payout-%'`
  t.equal(references?.n, 0, 'and neither were their references')
  await fund(app, alice, 1_000, 'USD', { client: processor })
  t.equal((await post(app, processor, funding('withdrawal', alice, 101, { reference: 'payout-1' }), key)).statusCode, 201)
  t.equal((await post(app, alice, { kind: 'transfer', amount: 101, currency: 'USD', toUserId: bob.id }, key)).statusCode, 201)
})

t.test('bad transfers and bad money are refused before the database', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const processor = await createClient(app)
  const alice = await createUser(app)
  await fund(app, alice, 1_000, 'USD', { client: processor })

  const self = await post(app, alice, { kind: 'transfer', amount: 1, currency: 'USD', toUserId: alice.id })
  t.equal(self.statusCode, 400)
  t.same(self.json().errors.map((e: { path: string }) => e.path), ['toUserId'])
  const unknown = await post(app, alice, { kind: 'transfer', amount: 1, currency: 'USD', toUserId: randomUUID() })
  t.equal(unknown.statusCode, 404)

  const transfer = (extra: Record<string, unknown>) => ({ kind: 'transfer', amount: 1, currency: 'USD', toUserId: randomUUID(), ...extra })
  const invalid: Array<[string, TestUser | TestClient, Record<string, unknown>, string]> = [
    ['float amount', alice, transfer({ amount: 10.5 }), 'amount'],
    ['negative amount', alice, transfer({ amount: -1 }), 'amount'],
    ['zero', processor, funding('deposit', alice, 0), 'amount'],
    ['2^63', processor, funding('deposit', alice, 2 ** 63), 'amount'],
    ['2^53', processor, funding('deposit', alice, 2 ** 53), 'amount'],
    ['amount as string', alice, transfer({ amount: '100' }), 'amount'],
    ['unknown currency', processor, funding('deposit', alice, 1, { currency: 'XYZ' }), 'currency'],
    ['lower-case currency', alice, transfer({ currency: 'usd' }), 'currency'],
    ['unknown kind', alice, { kind: 'refund', amount: 1, currency: 'USD' }, 'kind'],
    ['transfer without recipient', alice, { kind: 'transfer', amount: 1, currency: 'USD' }, 'toUserId'],
    ['deposit without user', processor, { kind: 'deposit', amount: 1, currency: 'USD', reference: 'r-1' }, 'userId'],
    ['deposit without reference', processor, { kind: 'deposit', userId: alice.id, amount: 1, currency: 'USD' }, 'reference'],
    ['reference of 256 characters', processor, funding('deposit', alice, 1, { reference: 'r'.repeat(256) }), 'reference'],
    ['reference with a space', processor, funding('deposit', alice, 1, { reference: 'bank 1' }), 'reference'],
    ['reference with a control character', processor, funding('deposit', alice, 1, { reference: 'bank\u00001' }), 'reference'],
    ['deposit with recipient', processor, funding('deposit', alice, 1, { toUserId: randomUUID() }), ''],
    ['transfer with a reference', alice, transfer({ reference: 'r-2' }), ''],
    ['mass assignment fromUserId', alice, transfer({ fromUserId: randomUUID() }), ''],
    ['mass assignment balance', processor, funding('deposit', alice, 1, { balance: 1e9 }), ''],
    ['NUL in description', alice, transfer({ description: 'a\u0000b' }), 'description']
  ]
  for (const [name, caller, payload, path] of invalid) {
    const response = await post(app, caller, payload)
    t.equal(response.statusCode, 400, name)
    if (path !== '') t.ok(response.json().errors.some((e: { path: string }) => e.path === path), `${name} names ${path}`)
  }
  const noKey = await app.inject({ method: 'POST', url: '/transactions', headers: { authorization: alice.authorization }, payload: transfer({}) })
  t.equal(noKey.statusCode, 400)
  t.same(noKey.json().errors.map((e: { path: string }) => e.path), ['idempotency-key'])
  t.equal(noKey.json().detail, 'A required request header is missing or invalid: idempotency-key is required: 1 to 255 visible ASCII characters, the same on every retry of this request.',
    'the detail says which header and what it needs')
  const longKey = await post(app, alice, transfer({}), 'k'.repeat(256))
  t.equal(longKey.statusCode, 400)
  t.equal(await transactionCount(sql, alice.id), 1, 'nothing was written')
  t.equal(await balance(sql, alice.id), 1_000)
})

t.test('an amount written with a fraction or an exponent is 400, even where it would round to an integer', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const processor = await createClient(app)
  const alice = await createUser(app)
  const bob = await createUser(app)
  await fund(app, alice, 1_000, 'USD', { client: processor })
  // Raw bodies: JSON.stringify would write 1.0 as 1, and JSON.parse would read 1.0000000000000001 as 1.
  const raw = (caller: TestUser | TestClient, body: string) => app.inject({
    method: 'POST',
    url: '/transactions',
    headers: { authorization: caller.authorization, 'idempotency-key': randomUUID(), 'content-type': 'application/json' },
    payload: body
  })
  const transferBody = (amount: string) => `{"kind":"transfer","toUserId":"${bob.id}","amount":${amount},"currency":"USD"}`
  const fundingBody = (kind: 'deposit' | 'withdrawal', amount: string, user: TestUser = alice) =>
    `{"kind":"${kind}","userId":"${user.id}","amount":${amount},"currency":"USD","reference":"ref-${randomUUID()}"}`
  const message = 'must be an integer number of minor units, written without a fraction or exponent'
  for (const literal of ['10.5', '1.0', '1e3', '1E3', '1e+3', '1.0000000000000001', '9007199254740990.7', '-0.0', '100.00', '0.5e1']) {
    for (const [label, caller, body] of [
      ['transfer', alice, transferBody(literal)],
      ['deposit', processor, fundingBody('deposit', literal)],
      ['withdrawal', processor, fundingBody('withdrawal', literal)]
    ] as const) {
      const response = await raw(caller, body)
      t.equal(response.statusCode, 400, `${label} of ${literal}`)
      t.match(response.headers['content-type'], /^application\/problem\+json/)
      t.same(response.json().errors, [{ path: 'amount', message }], `${label} of ${literal} names amount, and only amount`)
    }
  }
  t.equal(await transactionCount(sql, alice.id), 1, 'nothing was written: only the funding deposit')
  t.equal(await transactionCount(sql, bob.id), 0)
  t.equal(await balance(sql, alice.id), 1_000)
  t.equal(await balance(sql, bob.id), null)
  const [keys] = await sql`select count(*)::int as n from idempotency_keys where principal_id in (${alice.id}, ${processor.id})`
  t.equal(keys?.n, 1, 'no idempotency key was kept (only the funding deposit\'s)')

  // The same amounts written as integers are money; a fraction elsewhere in the body does not matter.
  const transfer = await raw(alice, transferBody('100'))
  t.equal(transfer.statusCode, 201, 'an integer literal is accepted')
  t.equal(transfer.json().amount, 100)
  const described = await raw(alice, `{"kind":"transfer","toUserId":"${bob.id}","amount":100,"currency":"USD","description":"1.5e3 of 10.5"}`)
  t.equal(described.statusCode, 201, 'number-like text in a string is just text')
  t.equal(described.json().description, '1.5e3 of 10.5')
  const carol = await createUser(app)
  const deposit = await raw(processor, fundingBody('deposit', '9007199254740990', carol))
  t.equal(deposit.statusCode, 201, 'a large integer literal is accepted exactly')
  t.equal(deposit.json().amount, 9007199254740990)
  t.equal(await balance(sql, carol.id), 9007199254740990)
  t.equal(await balance(sql, alice.id), 800)
  t.equal(await balance(sql, bob.id), 200)
})

t.test('currencies are the active rows of the currencies table, checked without a round trip', async (t) => {
  // Its own code: the table is shared by every test file running at the same time, and none of them uses MNT.
  const code = 'MNT'
  const app = await buildTestApp(t, { CURRENCIES_REFRESH_S: '1' })
  const sql = testSql(t)
  t.teardown(async () => {
    await sql`update currencies set active = true where code = ${code}`
    await app.currencies.refresh()
  })
  const processor = await createClient(app)
  const alice = await createUser(app)
  const notActive = 'is not an active ISO 4217 currency code'
  const deposit = (currency: string) => post(app, processor, funding('deposit', alice, 100, { currency }))
  const refused = async (currency: string, why: string) => {
    const { response, spans } = await injectTraced(app, {
      method: 'POST', url: '/transactions', headers: { authorization: processor.authorization, 'idempotency-key': randomUUID() }, payload: funding('deposit', alice, 100, { currency })
    })
    t.equal(response.statusCode, 400, `${currency}: ${why}`)
    t.same(response.json().errors, [{ path: 'currency', message: notActive }], `${currency} is refused at currency`)
    t.equal(dbSpans(spans).length, 0, `${currency} is refused before the database`)
  }

  t.equal((await deposit('JPY')).statusCode, 201, 'a known, active code works')
  t.equal((await deposit(code)).statusCode, 201, `${code} is active`)
  await refused('XYZ', 'not a currency')
  await refused('CLF', 'an ISO 4217 code the table holds inactive')

  await sql`update currencies set active = false where code = ${code}`
  await app.currencies.refresh()
  await refused(code, 'retired, after a refresh')
  await sql`update currencies set active = true where code = ${code}`
  await app.currencies.refresh()
  t.equal((await deposit(code)).statusCode, 201, 'enabled again')

  // The timer refreshes by itself (every CURRENCIES_REFRESH_S): retired without any call, refused within a few seconds.
  // Probed with a transfer from a user without MNT: 422 (nothing written) while active, 400 once retired.
  await sql`update currencies set active = false where code = ${code}`
  const bob = await createUser(app)
  let status = 0
  for (const started = Date.now(); Date.now() - started < 5000; await new Promise((resolve) => setTimeout(resolve, 100))) {
    status = (await post(app, bob, { kind: 'transfer', amount: 1, currency: code, toUserId: alice.id })).statusCode
    if (status !== 422) break
  }
  t.equal(status, 400, 'the periodic refresh picked up the change')
  t.equal(await balance(sql, alice.id, code), 200, 'the balance held in a retired currency stays')
  t.equal(await balance(sql, alice.id, 'JPY'), 100)
})

t.test('the database refuses a currency the currencies table lacks (foreign keys)', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const processor = await createClient(app)
  const alice = await createUser(app)
  const refusal = (constraint: string) => ({ code: '23503', constraint_name: constraint })
  // The ledger's own write path, called directly: its balance rows carry the key, so nothing is written in XYZ.
  await t.rejects(sql`
    select * from post_transaction(${processor.id}, ${alice.id}, ${randomUUID()}, 'fp', 'deposit', 1, 'XYZ', null, null, ${`fk-${randomUUID()}`}, 86400)`,
  refusal('balances_currency_fkey'), 'no transaction in XYZ')
  const [none] = await sql`select count(*)::int as n from transactions where currency = 'XYZ'`
  t.equal(none?.n, 0)
  await t.rejects(sql`insert into balances (user_id, currency, balance) values (${alice.id}, 'XYZ', 1)`, refusal('balances_currency_fkey'), 'no balance in XYZ')
  await fund(app, alice, 1, 'USD', { client: processor })
  await t.rejects(sql`delete from currencies where code = 'USD'`, { code: '23503' }, 'a currency the ledger holds cannot be deleted (retire it with active = false)')
  const [usd] = await sql`select minor_unit, active from currencies where code = 'USD'`
  t.same(usd, { minor_unit: 2, active: true })
  const [iqd] = await sql`select minor_unit from currencies where code = 'IQD'`
  t.equal(iqd?.minor_unit, 3, 'minor units are ISO 4217\'s, not ICU\'s display digits')
  const [{ count } = { count: 0 }] = await sql<{ count: number }[]>`select count(*)::int as count from currencies where active`
  t.equal(count, 162, 'the 162 codes the API accepted before the table are active')
})

t.test('idempotency: replay, mismatch, and per-principal scope', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const processor = await createClient(app)
  const otherProcessor = await createClient(app)
  const alice = await createUser(app)
  const bob = await createUser(app)
  await fund(app, alice, 10_000, 'USD', { client: processor })
  const key = randomUUID()
  const transfer = { kind: 'transfer', amount: 700, currency: 'USD', toUserId: bob.id }
  const first = await post(app, alice, transfer, key)
  t.equal(first.statusCode, 201)
  const again = await post(app, alice, transfer, key)
  t.equal(again.statusCode, 201)
  t.equal(again.headers['idempotent-replayed'], 'true')
  t.same(again.json(), first.json(), 'the original response, same id')
  const different = await post(app, alice, { ...transfer, amount: 701 }, key)
  t.equal(different.statusCode, 422)
  t.equal(different.json().type, 'https://ledger-api.dev/problems/idempotency_key_reused')

  const deposit = funding('deposit', bob, 5)
  const bobFunded = await post(app, processor, deposit, key)
  t.equal(bobFunded.statusCode, 201, 'keys are scoped per principal: a client may use a key a user used')
  t.not(bobFunded.json().id, first.json().id)
  const replayed = await post(app, processor, deposit, key)
  t.equal(replayed.headers['idempotent-replayed'], 'true')
  t.same(replayed.json(), bobFunded.json(), 'a client\'s replay returns its deposit, reference included')
  t.equal((await post(app, processor, { ...deposit, reference: 'another-ref' }, key)).statusCode, 422, 'same key, other reference: a different request')
  t.equal((await post(app, otherProcessor, funding('deposit', bob, 6), key)).statusCode, 201, 'and per client')

  t.equal(await balance(sql, alice.id), 9_300)
  t.equal(await balance(sql, bob.id), 711)
  t.equal(await transactionCount(sql, alice.id), 2)
})

t.test('50 concurrent requests with one key create exactly one transaction', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const processor = await createClient(app)
  const alice = await createUser(app)
  const key = randomUUID()
  const deposit = funding('deposit', alice, 300)
  const responses = await Promise.all(Array.from({ length: 50 }, () => post(app, processor, deposit, key)))
  const statuses = responses.map((r) => r.statusCode)
  t.ok(statuses.every((s) => s === 201 || s === 409), `only 201 or 409: ${[...new Set(statuses)].join(',')}`)
  t.equal(new Set(responses.filter((r) => r.statusCode === 201).map((r) => r.json().id)).size, 1, 'every success names the same transaction')
  t.equal(responses.filter((r) => r.headers['idempotent-replayed'] === undefined && r.statusCode === 201).length, 1, 'one original, the rest replays')
  t.equal(await transactionCount(sql, alice.id), 1)
  t.equal(await balance(sql, alice.id), 300)
})

t.test('200 concurrent transfers back and forth: no deadlock, no negative balance, invariant holds', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const alice = await createUser(app)
  const bob = await createUser(app)
  await fund(app, alice, 1_000)
  await fund(app, bob, 1_000)
  const responses = await Promise.all(Array.from({ length: 200 }, (_, i) => i % 2 === 0
    ? post(app, alice, { kind: 'transfer', amount: 37, currency: 'USD', toUserId: bob.id })
    : post(app, bob, { kind: 'transfer', amount: 41, currency: 'USD', toUserId: alice.id })))
  const statuses = responses.map((r) => r.statusCode)
  t.ok(statuses.every((s) => s === 201 || s === 422), `only successes or clean refusals: ${[...new Set(statuses)].join(',')}`)
  t.ok(statuses.filter((s) => s === 201).length > 100, 'most transfers went through')
  const a = await balance(sql, alice.id)
  const b = await balance(sql, bob.id)
  t.ok(a !== null && a >= 0 && b !== null && b >= 0, 'no negative balance')
  t.equal((a ?? 0) + (b ?? 0), 2_000, 'money is neither created nor lost')
  await assertLedgerBalanced(t, sql, [alice.id, bob.id])
})

t.test('pagination walks every row once, newest first, while rows are inserted', async (t) => {
  const app = await buildTestApp(t)
  const alice = await createUser(app)
  const bob = await createUser(app)
  const ids: string[] = []
  for (let i = 0; i < 23; i++) ids.push((await fund(app, i % 3 === 0 ? bob : alice, i % 3 === 0 ? 1 : i + 1)).json().id)
  const aliceIds = ids.filter((_, i) => i % 3 !== 0).reverse()

  const seen: string[] = []
  let cursor: string | null = null
  let pages = 0
  do {
    const url: string = `/transactions?limit=5${cursor === null ? '' : `&cursor=${cursor}`}`
    const response = await app.inject({ method: 'GET', url, headers: { authorization: alice.authorization } })
    t.equal(response.statusCode, 200)
    const body = response.json() as { data: Array<{ id: string }>, nextCursor: string | null }
    seen.push(...body.data.map((tx) => tx.id))
    cursor = body.nextCursor
    // Newer rows arriving mid-walk must not shift or repeat what is left to read.
    if (pages++ === 1) await fund(app, alice, 99)
  } while (cursor !== null)
  t.same(seen, aliceIds, 'each of the walk-start rows exactly once, newest first')
  t.equal(pages, Math.ceil(aliceIds.length / 5))

  const tampered = await app.inject({ method: 'GET', url: '/transactions?cursor=eyJiZWZvcmUiOiI5OTk5In0.AAAAAAAAAAAAAAAAAAAAAA', headers: { authorization: alice.authorization } })
  t.equal(tampered.statusCode, 400)
  const firstPage = (await app.inject({ method: 'GET', url: '/transactions?limit=2', headers: { authorization: alice.authorization } })).json()
  const foreign = await app.inject({ method: 'GET', url: `/transactions?limit=2&cursor=${firstPage.nextCursor}`, headers: { authorization: bob.authorization } })
  t.equal(foreign.statusCode, 400, "another user's cursor is refused")
  const [body, signature] = String(firstPage.nextCursor).split('.')
  const edited = Buffer.from(JSON.stringify({ before: '999999999' })).toString('base64url')
  t.not(edited, body)
  const forged = await app.inject({ method: 'GET', url: `/transactions?cursor=${edited}.${signature}`, headers: { authorization: alice.authorization } })
  t.equal(forged.statusCode, 400, 'an edited position with the old signature is refused')
  for (const limit of ['0', '101', 'abc', '-1', '1.5']) {
    const response = await app.inject({ method: 'GET', url: `/transactions?limit=${limit}`, headers: { authorization: alice.authorization } })
    t.equal(response.statusCode, 400, `limit=${limit}`)
  }
  const defaults = (await app.inject({ method: 'GET', url: '/transactions', headers: { authorization: alice.authorization } })).json()
  t.equal(defaults.data.length, aliceIds.length + 1, 'default limit 50 returns everything here')
  t.equal(defaults.nextCursor, null)
})

t.test("another user's transaction is 404", async (t) => {
  const app = await buildTestApp(t)
  const alice = await createUser(app)
  const bob = await createUser(app)
  const carol = await createUser(app)
  await fund(app, alice, 50)
  const transfer = (await post(app, alice, { kind: 'transfer', amount: 20, currency: 'USD', toUserId: bob.id })).json()
  for (const user of [alice, bob]) {
    const response = await app.inject({ method: 'GET', url: `/transactions/${transfer.id}`, headers: { authorization: user.authorization } })
    t.equal(response.statusCode, 200)
    t.same(response.json(), transfer)
  }
  const other = await app.inject({ method: 'GET', url: `/transactions/${transfer.id}`, headers: { authorization: carol.authorization } })
  t.equal(other.statusCode, 404)
  t.notMatch(other.body, new RegExp(alice.id))
  const list = (await app.inject({ method: 'GET', url: '/transactions', headers: { authorization: carol.authorization } })).json()
  t.same(list, { data: [], nextCursor: null })
  for (const id of ['abc', '0', '99999999999999999999', "1' OR '1'='1"]) {
    const response = await app.inject({ method: 'GET', url: `/transactions/${encodeURIComponent(id)}`, headers: { authorization: carol.authorization } })
    t.equal(response.statusCode, 400, id)
  }
})

t.test('users only transfer; money enters and leaves only through a client with funds:write', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const processor = await createClient(app)
  const watcher = await createClient(app, ['events:read'])
  const alice = await createUser(app)
  const bob = await createUser(app)
  await fund(app, alice, 500, 'USD', { client: processor })

  const refused: Array<[string, TestUser | TestClient, Record<string, unknown>]> = [
    ['a user deposit', alice, funding('deposit', alice, 9_007_199_254_740_991)],
    ['a user deposit in the old shape', alice, { kind: 'deposit', amount: 100, currency: 'USD' }],
    ['a user withdrawal', alice, funding('withdrawal', alice, 1)],
    ['a client transfer', processor, { kind: 'transfer', amount: 1, currency: 'USD', toUserId: bob.id }],
    ['a deposit without funds:write', watcher, funding('deposit', alice, 1)]
  ]
  for (const [name, caller, payload] of refused) {
    const response = await post(app, caller, payload)
    t.equal(response.statusCode, 403, name)
    t.equal(response.json().type, 'https://ledger-api.dev/problems/insufficient_scope', name)
    t.match(response.headers['www-authenticate'], /^Bearer error="insufficient_scope"/, name)
  }
  t.equal(await balance(sql, alice.id), 500, 'nothing was written')
  t.equal(await transactionCount(sql, alice.id), 1)
  t.equal(await transactionCount(sql, bob.id), 0)
})

t.test('a reference is used once per client, whatever the idempotency key, even under 20 concurrent requests', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const processor = await createClient(app)
  const otherProcessor = await createClient(app)
  const alice = await createUser(app)

  const responses = await Promise.all(Array.from({ length: 20 }, () => post(app, processor, funding('deposit', alice, 250, { reference: 'settlement-42' }))))
  const statuses = responses.map((r) => r.statusCode).sort()
  t.same(statuses, [201, ...Array(19).fill(409)], 'exactly one 201, the rest 409')
  const conflict = responses.find((r) => r.statusCode === 409)!
  t.equal(conflict.json().type, 'https://ledger-api.dev/problems/reference_used')
  t.equal(await balance(sql, alice.id), 250, 'credited once')

  const withdrawal = await post(app, processor, funding('withdrawal', alice, 10, { reference: 'settlement-42' }))
  t.equal(withdrawal.statusCode, 409, 'a deposit\'s reference cannot be reused by a withdrawal')
  const elsewhere = await post(app, otherProcessor, funding('deposit', alice, 5, { reference: 'settlement-42' }))
  t.equal(elsewhere.statusCode, 201, 'another client may use the same reference')
  t.equal(await balance(sql, alice.id), 255)
  const [row] = await sql`select count(*)::int as n from transactions where reference = 'settlement-42'`
  t.equal(row?.n, 2)
})

t.test('a deposit or withdrawal for an unknown or deleted user is 404 and writes nothing', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const processor = await createClient(app)
  const ghost = await createUser(app)
  await sql`delete from users where id = ${ghost.id}`
  for (const userId of [randomUUID(), ghost.id]) {
    for (const kind of ['deposit', 'withdrawal'] as const) {
      const response = await post(app, processor, { kind, userId, amount: 1, currency: 'USD', reference: `r-${randomUUID()}` })
      t.equal(response.statusCode, 404, `${kind} for ${userId === ghost.id ? 'a deleted' : 'an unknown'} user`)
    }
  }
  const [row] = await sql`select count(*)::int as n from transactions where client_id = ${processor.id}`
  t.equal(row?.n, 0)
  const [keys] = await sql`select count(*)::int as n from idempotency_keys where principal_id = ${processor.id}`
  t.equal(keys?.n, 0, 'no key kept either')
})

t.test('a client lists and reads the transactions it posted, never users\' transfers', async (t) => {
  const app = await buildTestApp(t)
  const processor = await createClient(app)
  const otherProcessor = await createClient(app)
  const alice = await createUser(app)
  const bob = await createUser(app)
  const posted: string[] = []
  for (let i = 0; i < 5; i++) posted.push((await post(app, processor, funding('deposit', i % 2 === 0 ? alice : bob, 100 + i))).json().id)
  await fund(app, alice, 7, 'USD', { client: otherProcessor })
  const transfer = (await post(app, alice, { kind: 'transfer', amount: 50, currency: 'USD', toUserId: bob.id })).json()

  const seen: string[] = []
  let cursor: string | null = null
  do {
    const url: string = `/transactions?limit=2${cursor === null ? '' : `&cursor=${cursor}`}`
    const page = await app.inject({ method: 'GET', url, headers: { authorization: processor.authorization } })
    t.equal(page.statusCode, 200)
    seen.push(...page.json().data.map((tx: { id: string }) => tx.id))
    cursor = page.json().nextCursor
  } while (cursor !== null)
  t.same(seen, [...posted].reverse(), 'its own deposits, newest first, over three pages')

  const get = (caller: TestUser | TestClient, id: string) => app.inject({ method: 'GET', url: `/transactions/${id}`, headers: { authorization: caller.authorization } })
  t.equal((await get(processor, posted[0]!)).statusCode, 200)
  t.equal((await get(processor, transfer.id)).statusCode, 404, 'a users\' transfer is not the client\'s')
  t.equal((await get(otherProcessor, posted[0]!)).statusCode, 404, 'nor another client\'s deposit')
  const aliceSees = await get(alice, posted[0]!)
  t.equal(aliceSees.statusCode, 200, 'the user sees the deposit to them')
  t.equal(aliceSees.json().reference, (await get(processor, posted[0]!)).json().reference)

  const userCursor = (await app.inject({ method: 'GET', url: '/transactions?limit=1', headers: { authorization: alice.authorization } })).json().nextCursor
  const crossed = await app.inject({ method: 'GET', url: `/transactions?cursor=${userCursor}`, headers: { authorization: processor.authorization } })
  t.equal(crossed.statusCode, 400, 'a user\'s cursor is refused on a client\'s list')
})

t.test('client tokens are refused on user-only routes', async (t) => {
  const app = await buildTestApp(t)
  const processor = await createClient(app, ['funds:write', 'events:read'])
  const alice = await createUser(app)
  const requests = [
    { method: 'GET', url: '/balances' },
    { method: 'GET', url: '/users/me' },
    { method: 'GET', url: `/users/${alice.id}` },
    { method: 'PATCH', url: `/users/${processor.id}`, payload: { name: 'Ledger Support' } },
    { method: 'GET', url: '/feed' },
    { method: 'POST', url: '/posts', payload: { body: 'your account is frozen' } }
  ] as const
  for (const request of requests) {
    const response = await app.inject({ ...request, headers: { authorization: processor.authorization } })
    t.equal(response.statusCode, 403, `${request.method} ${request.url}`)
    t.equal(response.json().type, 'https://ledger-api.dev/problems/insufficient_scope')
  }
})
