// Broken object level and object property level authorization: user B against every id route of user
// A, a service client against another client's transactions, cursors carried across users, clients and lists,
// mass assignment in every body (the clients' funding bodies too), and no response that carries a password hash
// or someone else's email.
import t from 'tap'
import type { App } from '../../app.ts'
import { buildTestApp, createClient, createUser, fund, testSql, uniqueEmail, type TestClient } from '../helper.ts'
import {
  assertProblem, assertTablesIntact, fundingBody, ResponseRecorder, snapshotUser, TEST_CURRENCY, type Caller
} from './support.ts'

type TestSql = ReturnType<typeof testSql>

/**
 * User A with a profile, money (a deposit and a withdrawal posted by the bank, a service client, and A's own
 * transfer to C) and more than one page of posts and transactions. Another client, otherBank, never touched A.
 */
async function setUpVictim (app: App, recorder: ResponseRecorder, sql: TestSql) {
  const a = await createUser(app, { name: 'Alice Victim' })
  const b = await createUser(app, { name: 'Bob Attacker' })
  const c = await createUser(app, { name: 'Carol Third' })
  const bank = await createClient(app)
  const otherBank = await createClient(app)
  await recorder.send(a, { method: 'PATCH', url: `/users/${a.id}`, payload: { avatarUrl: 'https://cdn.example.test/alice.png' } })
  const transactionIds: string[] = []
  for (const [index, [caller, payload]] of ([
    [bank, fundingBody('deposit', a.id, 10_000, { description: 'salary' })],
    [a, { kind: 'transfer', amount: 2_500, currency: TEST_CURRENCY, toUserId: c.id, description: 'rent' }],
    [bank, fundingBody('withdrawal', a.id, 500)]
  ] as const).entries()) {
    const response = await recorder.send(caller, { method: 'POST', url: '/transactions', headers: { 'idempotency-key': `victim-${index}` }, payload })
    if (response.statusCode !== 201) throw new Error(`setup transaction: ${response.statusCode} ${response.body}`)
    transactionIds.push(response.json().id)
  }
  for (let i = 0; i < 3; i++) {
    const response = await recorder.send(a, { method: 'POST', url: '/posts', payload: { body: `alice private-ish post ${i}` } })
    if (response.statusCode !== 201) throw new Error(`setup post: ${response.statusCode}`)
  }
  return { a, b, c, bank, otherBank, transactionIds, before: await snapshotUser(sql, a.id) }
}

t.test('user B against every id route of user A', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const recorder = new ResponseRecorder(app)
  const { a, b, c, bank, otherBank, transactionIds, before } = await setUpVictim(app, recorder, sql)

  // GET /users/:id: A's public profile only, whether or not A's own (email-bearing) view was read first.
  const own = await recorder.send(a, { method: 'GET', url: `/users/${a.id}` })
  t.equal(own.json().email, a.email, 'A sees their own email')
  for (const round of ['after A read it', 'from the cache']) {
    const seen = await recorder.send(b, { method: 'GET', url: `/users/${a.id}` })
    t.equal(seen.statusCode, 200, `B can read A's public profile (${round})`)
    t.same(Object.keys(seen.json()).sort(), ['avatarUrl', 'createdAt', 'id', 'name'], `B sees only public fields (${round})`)
    t.notOk('email' in seen.json(), `no email for B (${round})`)
  }
  const ownAgain = await recorder.send(a, { method: 'GET', url: `/users/${a.id}` })
  t.equal(ownAgain.json().email, a.email, 'A still sees their email after B filled the cache')
  const upper = await recorder.send(b, { method: 'GET', url: `/users/${a.id.toUpperCase()}` })
  t.notOk('email' in upper.json(), 'an upper-case spelling of A\'s id gives B no email either')

  // PATCH /users/:id of A: 403 for every body B can send, and nothing changes.
  for (const payload of [{ name: 'Pwned' }, { avatarUrl: 'https://evil.example.test/x.png' }, { avatarUrl: null }, { name: 'Pwned', avatarUrl: null }]) {
    const response = await recorder.send(b, { method: 'PATCH', url: `/users/${a.id}`, payload })
    assertProblem(t, response, 403, `B patches A with ${JSON.stringify(payload)}`)
  }
  const upperPatch = await recorder.send(b, { method: 'PATCH', url: `/users/${a.id.toUpperCase()}`, payload: { name: 'Pwned' } })
  assertProblem(t, upperPatch, 403, 'B patches A through an upper-case id')
  const afterPatch = await recorder.send(b, { method: 'GET', url: `/users/${a.id}` })
  t.equal(afterPatch.json().name, 'Alice Victim', 'A\'s name is unchanged, in the cache too')

  // GET /transactions/:id of A's transactions: 404, exactly like an id that does not exist.
  const missing = await recorder.send(b, { method: 'GET', url: '/transactions/9223372036854775807' })
  assertProblem(t, missing, 404, 'B reads a transaction id that does not exist')
  for (const id of transactionIds) {
    const response = await recorder.send(b, { method: 'GET', url: `/transactions/${id}` })
    assertProblem(t, response, 404, `B reads A's transaction ${id}`)
    t.same({ ...response.json(), instance: undefined }, { ...missing.json(), instance: undefined }, `A's transaction ${id} looks exactly like a missing one`)
    t.equal((await recorder.send(a, { method: 'GET', url: `/transactions/${id}` })).statusCode, 200, `A reads their transaction ${id}`)
  }
  // C is a party of the transfer only.
  t.equal((await recorder.send(c, { method: 'GET', url: `/transactions/${transactionIds[1]}` })).statusCode, 200, 'the transfer\'s recipient can read it')
  t.equal((await recorder.send(c, { method: 'GET', url: `/transactions/${transactionIds[0]}` })).statusCode, 404, 'but not A\'s deposit')

  // A client reads what it posted, and nothing else: not A's transfer, not another client's deposit.
  const [depositId, transferId, withdrawalId] = transactionIds as [string, string, string]
  for (const id of [depositId, withdrawalId]) {
    t.equal((await recorder.send(bank, { method: 'GET', url: `/transactions/${id}` })).statusCode, 200, `the bank reads its own ${id}`)
    const response = await recorder.send(otherBank, { method: 'GET', url: `/transactions/${id}` })
    assertProblem(t, response, 404, `otherBank reads the bank's ${id}`)
    t.same({ ...response.json(), instance: undefined }, { ...missing.json(), instance: undefined }, `the bank's ${id} looks missing to otherBank`)
  }
  for (const client of [bank, otherBank]) {
    const response = await recorder.send(client, { method: 'GET', url: `/transactions/${transferId}` })
    assertProblem(t, response, 404, 'a client reads A\'s transfer')
    t.same({ ...response.json(), instance: undefined }, { ...missing.json(), instance: undefined }, 'A\'s transfer looks missing to a client')
  }
  t.same((await recorder.send(otherBank, { method: 'GET', url: '/transactions' })).json(), { data: [], nextCursor: null }, 'otherBank\'s list is empty')
  assertProblem(t, await recorder.send(otherBank, { method: 'GET', url: `/transactions?clientId=${bank.id}` }), 400, 'otherBank asks /transactions for the bank\'s')
  const bankList = await recorder.send(bank, { method: 'GET', url: `/transactions?userId=${a.id}` })
  assertProblem(t, bankList, 400, 'the bank asks /transactions for userId=A')
  const bankOwn = (await recorder.send(bank, { method: 'GET', url: '/transactions' })).json() as { data: { id: string }[] }
  t.same(bankOwn.data.map((tx) => tx.id), [withdrawalId, depositId], 'the bank lists what it posted, not A\'s transfer')
  for (const url of [`/users/${a.id}`, '/users/me', '/feed', '/balances']) {
    const response = await recorder.send(bank, { method: 'GET', url })
    assertProblem(t, response, 403, `the bank reads ${url}`)
    t.equal(response.json().type, 'https://ledger-api.dev/problems/insufficient_scope', `the bank reads ${url}: insufficient_scope`)
  }
  assertProblem(t, await recorder.send(bank, { method: 'PATCH', url: `/users/${a.id}`, payload: { name: 'Pwned' } }), 403, 'the bank patches A')

  // Lists are the caller's own, whatever B adds to the query.
  const bList = await recorder.send(b, { method: 'GET', url: '/transactions' })
  t.same(bList.json(), { data: [], nextCursor: null }, 'B\'s transaction list is empty')
  assertProblem(t, await recorder.send(b, { method: 'GET', url: `/transactions?userId=${a.id}` }), 400, 'B asks /transactions for userId=A')
  assertProblem(t, await recorder.send(b, { method: 'GET', url: `/feed?userId=${a.id}` }), 400, 'B asks /feed for userId=A')
  const bFeed = await recorder.send(b, { method: 'GET', url: '/feed' })
  t.same(bFeed.json(), { data: [], nextCursor: null }, 'B\'s feed is empty')
  const bBalances = await recorder.send(b, { method: 'GET', url: `/balances?userId=${a.id}&user_id=${a.id}` })
  t.same(bBalances.json(), { data: [] }, 'B\'s balances stay B\'s whatever the query says')

  t.same(await snapshotUser(sql, a.id), before, 'A is untouched by everything B and the clients tried')
  recorder.assertNoLeaks(t, [a, b, c])
})

t.test('cursors from A\'s pages are 400 for B, and cursors never cross lists', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const recorder = new ResponseRecorder(app)
  const { a, b, bank, otherBank, before } = await setUpVictim(app, recorder, sql)
  // B has pages of their own too, so a 400 is about the cursor and not about an empty list; so has otherBank.
  for (let i = 0; i < 2; i++) {
    const funded = await recorder.send(bank, { method: 'POST', url: '/transactions', headers: { 'idempotency-key': `b-${i}` }, payload: fundingBody('deposit', b.id, 1) })
    t.equal(funded.statusCode, 201, `B is funded by the bank (${i})`)
    await recorder.send(b, { method: 'POST', url: '/posts', payload: { body: `bob ${i}` } })
    await fund(app, b, 1, TEST_CURRENCY, { client: otherBank })
  }
  const aTransactions = (await recorder.send(a, { method: 'GET', url: '/transactions?limit=1' })).json()
  const aFeed = (await recorder.send(a, { method: 'GET', url: '/feed?limit=1' })).json()
  const bTransactions = (await recorder.send(b, { method: 'GET', url: '/transactions?limit=1' })).json()
  const bFeed = (await recorder.send(b, { method: 'GET', url: '/feed?limit=1' })).json()
  const bankTransactions = (await recorder.send(bank, { method: 'GET', url: '/transactions?limit=1' })).json()
  const otherBankTransactions = (await recorder.send(otherBank, { method: 'GET', url: '/transactions?limit=1' })).json()
  for (const page of [aTransactions, aFeed, bTransactions, bFeed, bankTransactions, otherBankTransactions]) t.type(page.nextCursor, 'string', 'each list has a next page')

  const aTx = encodeURIComponent(aTransactions.nextCursor)
  const aPost = encodeURIComponent(aFeed.nextCursor)
  t.equal((await recorder.send(a, { method: 'GET', url: `/transactions?limit=1&cursor=${aTx}` })).statusCode, 200, 'A can follow their own transaction cursor')
  t.equal((await recorder.send(a, { method: 'GET', url: `/feed?limit=1&cursor=${aPost}` })).statusCode, 200, 'A can follow their own feed cursor')
  assertProblem(t, await recorder.send(b, { method: 'GET', url: `/transactions?limit=1&cursor=${aTx}` }), 400, 'B uses A\'s transaction cursor')
  assertProblem(t, await recorder.send(b, { method: 'GET', url: `/feed?limit=1&cursor=${aPost}` }), 400, 'B uses A\'s feed cursor')
  assertProblem(t, await recorder.send(a, { method: 'GET', url: `/feed?cursor=${aTx}` }), 400, 'a transaction cursor on the feed')
  assertProblem(t, await recorder.send(a, { method: 'GET', url: `/transactions?cursor=${aPost}` }), 400, 'a feed cursor on transactions')
  assertProblem(t, await recorder.send(b, { method: 'GET', url: `/feed?cursor=${aTx}` }), 400, 'B uses A\'s transaction cursor on the feed')

  // A client's list has cursors of its own: they work for that client only, and users' cursors never work for it.
  const bankTx = encodeURIComponent(bankTransactions.nextCursor)
  t.equal((await recorder.send(bank, { method: 'GET', url: `/transactions?limit=1&cursor=${bankTx}` })).statusCode, 200, 'the bank can follow its own cursor')
  assertProblem(t, await recorder.send(otherBank, { method: 'GET', url: `/transactions?limit=1&cursor=${bankTx}` }), 400, 'otherBank uses the bank\'s cursor')
  assertProblem(t, await recorder.send(a, { method: 'GET', url: `/transactions?limit=1&cursor=${bankTx}` }), 400, 'A uses the bank\'s cursor')
  assertProblem(t, await recorder.send(bank, { method: 'GET', url: `/transactions?limit=1&cursor=${aTx}` }), 400, 'the bank uses A\'s transaction cursor')

  // Hand-made cursors: A's position re-encoded with B's signature, a flipped bit, and a forged position.
  const [aBody] = String(aTransactions.nextCursor).split('.')
  const [, bSignature] = String(bTransactions.nextCursor).split('.')
  const position = JSON.parse(Buffer.from(aBody ?? '', 'base64url').toString()) as { before: string }
  const forged = Buffer.from(JSON.stringify({ before: '9223372036854775807' })).toString('base64url')
  const tampered: Record<string, string> = {
    'A\'s position with B\'s signature': `${aBody}.${bSignature}`,
    'forged position, B\'s signature': `${forged}.${bSignature}`,
    'flipped signature': `${aBody}.${String(bSignature).slice(0, -1)}${String(bSignature).endsWith('A') ? 'B' : 'A'}`,
    'no signature': `${aBody}.A`,
    'SQL in the position': `${Buffer.from(JSON.stringify({ before: '1 OR 1=1' })).toString('base64url')}.${bSignature}`
  }
  t.match(position.before, /^\d+$/, 'the cursor is opaque to clients but decodes to a position')
  for (const [label, cursor] of Object.entries(tampered)) {
    assertProblem(t, await recorder.send(b, { method: 'GET', url: `/transactions?cursor=${encodeURIComponent(cursor)}` }), 400, `B sends ${label}`)
  }
  t.same(await snapshotUser(sql, a.id), before, 'A is untouched')
  recorder.assertNoLeaks(t, [a, b])
})

t.test('B cannot post on A\'s feed, nor delete A\'s posts (404, as for a post that does not exist)', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const recorder = new ResponseRecorder(app)
  const { a, b, before } = await setUpVictim(app, recorder, sql)
  const smuggled = await recorder.send(b, { method: 'POST', url: '/posts', payload: { body: 'your account is frozen', userId: a.id } })
  t.equal(smuggled.statusCode, 400, 'naming a feed is a 400 (the field no longer exists)')
  const aPosts = before.posts as { id: string, author_id: string }[]
  const target = aPosts.find((p) => p.author_id === a.id)!
  const deleted = await recorder.send(b, { method: 'DELETE', url: `/posts/${target.id}` })
  const missing = await recorder.send(b, { method: 'DELETE', url: '/posts/9223372036854775807' })
  t.equal(deleted.statusCode, 404, "B deleting A's post: 404")
  t.equal(deleted.json().detail, missing.json().detail, 'the same answer as a post that does not exist')
  for (const method of ['PATCH', 'PUT'] as const) {
    const response = await recorder.send(b, { method, url: `/posts/${target.id}`, payload: { body: 'edited' } })
    t.equal(response.statusCode, 404, `${method} /posts/:id does not exist`)
  }
  t.same(await snapshotUser(sql, a.id), before, 'A\'s profile, money, posts, feed and keys are unchanged')
  recorder.assertNoLeaks(t, [a, b])
})

t.test('mass assignment: privileged fields in every body are 400 and change nothing', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const recorder = new ResponseRecorder(app)
  const { a, b, c, bank, otherBank, before } = await setUpVictim(app, recorder, sql)
  const bBefore = await snapshotUser(sql, b.id)
  const privileged: Record<string, unknown> = {
    tier: 'pro',
    role: 'admin',
    isAdmin: true,
    balance: 1_000_000_000,
    id: a.id,
    userId: a.id,
    createdAt: '2000-01-01T00:00:00.000Z',
    updatedAt: '2000-01-01T00:00:00.000Z',
    fromUserId: a.id,
    authorId: a.id,
    passwordHash: 'scrypt$1024$8$1$AAAA$BBBB',
    password_hash: 'scrypt$1024$8$1$AAAA$BBBB',
    email: a.email,
    password: 'a brand new password',
    // Fields of the funding bodies and of the ledger's rows: who posted, under which reference, to whom.
    toUserId: a.id,
    reference: 'mass-assigned-reference',
    clientId: otherBank.id,
    client_id: otherBank.id,
    principalId: a.id,
    kind: 'deposit'
  }
  let number = 0
  const routes: { label: string, caller: Caller | null, method: 'POST' | 'PATCH', url: string, base: Record<string, unknown>, allowed: string[], idempotent?: boolean, ignoresUnknown?: boolean }[] = [
    { label: 'PATCH /users/:id (own)', caller: b, method: 'PATCH', url: `/users/${b.id}`, base: { name: 'Bob Renamed' }, allowed: [] },
    { label: 'POST /users', caller: null, method: 'POST', url: '/users', base: { email: '', name: 'Mallory', password: 'long enough password' }, allowed: ['email', 'password'] },
    // RFC 6749 section 3.2: the token endpoint ignores parameters it does not use; they must change nothing.
    { label: 'POST /auth/token', caller: null, method: 'POST', url: '/auth/token', base: { email: b.email, password: b.password }, allowed: ['email', 'password'], ignoresUnknown: true },
    { label: 'POST /posts', caller: b, method: 'POST', url: '/posts', base: { body: 'mass assignment' }, allowed: [] },
    // A user's only body is a transfer (B has no money: a 400 is the schema's, not the ledger's); `kind` is the discriminator.
    { label: 'POST /transactions (transfer)', caller: b, method: 'POST', url: '/transactions', base: { kind: 'transfer', amount: 1, currency: TEST_CURRENCY, toUserId: c.id }, allowed: ['toUserId', 'kind'], idempotent: true },
    // A client's funding bodies name the user and the reference themselves; the rest is as privileged as for users.
    ...(['deposit', 'withdrawal'] as const).map((kind) => ({
      label: `POST /transactions (client ${kind})`, caller: bank, method: 'POST' as const, url: '/transactions', base: fundingBody(kind, b.id, 1, { reference: `mass-${kind}` }), allowed: ['userId', 'reference', 'kind'], idempotent: true
    }))
  ]
  const signupEmails: string[] = []
  for (const route of routes) {
    for (const [field, value] of Object.entries(privileged)) {
      if (route.allowed.includes(field)) continue
      const base = route.url === '/users' ? { ...route.base, email: uniqueEmail('mass') } : route.base
      if (route.url === '/users') signupEmails.push(String(base.email))
      const headers = route.idempotent === true ? { 'idempotency-key': `mass-${++number}` } : {}
      const response = await recorder.send(route.caller, { method: route.method, url: route.url, headers, payload: { ...base, [field]: value } })
      if (route.ignoresUnknown === true) {
        t.equal(response.statusCode, 200, `${route.label} with ${field}: ignored`)
        const claims = JSON.parse(Buffer.from(String(response.json().access_token).split('.')[1] ?? '', 'base64url').toString()) as { tier: string, sub: string }
        t.same({ tier: claims.tier, sub: claims.sub }, { tier: 'standard', sub: b.id }, `${route.label} with ${field}: a standard token for B, nothing else`)
        continue
      }
      assertProblem(t, response, 400, `${route.label} with ${field}`)
      const errors = (response.json().errors ?? []) as { path: string, message: string }[]
      t.ok(errors.some((e) => e.message.includes(`"${field}"`)), `${route.label} with ${field}: the refusal names the field`)
    }
  }
  // Prototype pollution through the JSON parser.
  for (const raw of ['{"name":"Bob Proto","__proto__":{"tier":"pro"}}', '{"name":"Bob Proto","constructor":{"prototype":{"tier":"pro"}}}']) {
    const response = await recorder.send(b, { method: 'PATCH', url: `/users/${b.id}`, headers: { 'content-type': 'application/json' }, payload: raw })
    assertProblem(t, response, 400, `PATCH with ${raw.slice(20, 40)}`)
  }
  t.notOk(({} as Record<string, unknown>).tier, 'Object.prototype is not polluted')

  const [{ count } = { count: -1 }] = await sql<{ count: number }[]>`select count(*)::int as count from users where email = any(${signupEmails})`
  t.equal(count, 0, 'no mass-assigned signup created a user')
  const [{ count: bankRows } = { count: -1 }] = await sql<{ count: number }[]>`
    select count(*)::int as count from transactions where client_id in (${bank.id}, ${otherBank.id}) and (reference like 'mass-%' or to_user_id = ${b.id} or from_user_id = ${b.id})`
  t.equal(bankRows, 0, 'no mass-assigned funding body was written, under either client')
  const [{ count: keys } = { count: -1 }] = await sql<{ count: number }[]>`
    select count(*)::int as count from idempotency_keys where principal_id in (${b.id}, ${bank.id}, ${otherBank.id}) and key like 'mass-%'`
  t.equal(keys, 0, 'and no idempotency key was kept for any of them')
  t.same(await snapshotUser(sql, b.id), bBefore, 'B\'s own row (tier, email, hash, timestamps), money and posts are unchanged')
  t.same(await snapshotUser(sql, a.id), before, 'A is unchanged')
  const login = await recorder.send(null, { method: 'POST', url: '/auth/token', payload: { email: b.email, password: b.password } })
  const claims = JSON.parse(Buffer.from(String(login.json().access_token).split('.')[1] ?? '', 'base64url').toString()) as { tier: string, sub: string }
  t.same({ tier: claims.tier, sub: claims.sub }, { tier: 'standard', sub: b.id }, 'B still gets a standard token for B')
  await assertTablesIntact(t, sql)
  recorder.assertNoLeaks(t, [a, b])
})

t.test('idempotency keys are per principal: B (or a client) reusing A\'s key gets their own transaction', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const recorder = new ResponseRecorder(app)
  const a = await createUser(app)
  const b = await createUser(app)
  const c = await createUser(app)
  const bank = await createClient(app)
  const otherBank = await createClient(app)
  await fund(app, a, 1_000, TEST_CURRENCY, { client: bank })
  await fund(app, b, 1_000, TEST_CURRENCY, { client: bank })
  const body = { kind: 'transfer', amount: 700, currency: TEST_CURRENCY, toUserId: c.id, description: 'same key, same body' }
  const first = await recorder.send(a, { method: 'POST', url: '/transactions', headers: { 'idempotency-key': 'shared-key' }, payload: body })
  const second = await recorder.send(b, { method: 'POST', url: '/transactions', headers: { 'idempotency-key': 'shared-key' }, payload: body })
  t.equal(first.statusCode, 201)
  t.equal(second.statusCode, 201)
  t.not(second.json().id, first.json().id, 'B does not get A\'s transaction back')
  t.equal(second.headers['idempotent-replayed'], undefined, 'B\'s request is not a replay')
  t.equal(second.json().fromUserId, b.id, 'B\'s transfer is paid by B')
  const different = await recorder.send(b, { method: 'POST', url: '/transactions', headers: { 'idempotency-key': 'shared-key' }, payload: { ...body, amount: 1 } })
  assertProblem(t, different, 422, 'B reusing the key with another body is judged against B\'s own use')

  // Clients have keys of their own too: neither gets a user's transfer, nor the other client's deposit, back.
  const deposit = fundingBody('deposit', c.id, 50, { reference: 'shared-reference', description: 'same key, same body' })
  const banked: { client: TestClient, id: string }[] = []
  for (const client of [bank, otherBank]) {
    const response = await recorder.send(client, { method: 'POST', url: '/transactions', headers: { 'idempotency-key': 'shared-key' }, payload: deposit })
    t.equal(response.statusCode, 201, 'a client may use a key a user used')
    t.equal(response.headers['idempotent-replayed'], undefined, 'and it is not a replay')
    t.match(response.json(), { kind: 'deposit', toUserId: c.id, reference: 'shared-reference' }, 'the client\'s own deposit')
    banked.push({ client, id: response.json().id })
  }
  t.equal(new Set([first.json().id, second.json().id, ...banked.map((x) => x.id)]).size, 4, 'four principals, four transactions')
  const replay = await recorder.send(bank, { method: 'POST', url: '/transactions', headers: { 'idempotency-key': 'shared-key' }, payload: deposit })
  t.equal(replay.headers['idempotent-replayed'], 'true', 'the bank\'s retry replays the bank\'s own deposit')
  t.equal(replay.json().id, banked[0]?.id)
  const mismatch = await recorder.send(otherBank, { method: 'POST', url: '/transactions', headers: { 'idempotency-key': 'shared-key' }, payload: { ...deposit, amount: 51 } })
  assertProblem(t, mismatch, 422, 'otherBank reusing its key with another body is judged against its own use')

  const keys = await sql<{ principal_id: string }[]>`select principal_id from idempotency_keys where key = 'shared-key' and principal_id in (${a.id}, ${b.id}, ${bank.id}, ${otherBank.id})`
  t.same(keys.map((k) => k.principal_id).sort(), [a.id, b.id, bank.id, otherBank.id].sort(), 'one key row per principal')
  const balances = await sql<{ user_id: string, balance: string }[]>`
    select user_id, balance::text from balances where user_id in (${a.id}, ${b.id}, ${c.id}) and currency = ${TEST_CURRENCY}`
  t.same(Object.fromEntries(balances.map((r) => [r.user_id, r.balance])), { [a.id]: '300', [b.id]: '300', [c.id]: '1500' }, 'each transfer and each deposit happened exactly once')
  recorder.assertNoLeaks(t, [a, b, c])
})

t.test('ids that differ only in letter case reach the same row but not the same cache entry', async (t) => {
  // UUIDs are case-insensitive in PostgreSQL; the Redis keys (user:<id>, feed:<id>) and the self checks compare
  // the id as typed. These are not authorization bypasses (each check still fails closed) but stale data and a 500.
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const recorder = new ResponseRecorder(app)
  const a = await createUser(app, { name: 'Case Owner' })
  const b = await createUser(app)
  const upper = a.id.toUpperCase()

  await recorder.send(b, { method: 'GET', url: `/users/${upper}` })
  await recorder.send(a, { method: 'PATCH', url: `/users/${a.id}`, payload: { name: 'Case Renamed' } })
  const stale = await recorder.send(b, { method: 'GET', url: `/users/${upper}` })
  t.equal(stale.json().name, 'Case Renamed', `the profile read through an upper-case id is fresh after PATCH (got ${stale.json().name})`)

  const follow = await recorder.send(b, { method: 'PUT', url: `/users/me/following/${upper}` })
  t.equal(follow.statusCode, 204)
  t.same((await recorder.send(b, { method: 'GET', url: '/users/me/following' })).json().data.map((u: { id: string }) => u.id), [a.id], 'following an upper-case id follows the user, spelled as stored')
  t.equal((await recorder.send(b, { method: 'PUT', url: `/users/me/following/${a.id}` })).statusCode, 204, 'and following the lower-case id again is the same follow')
  t.equal((await recorder.send(a, { method: 'PUT', url: `/users/me/following/${upper}` })).statusCode, 400, 'following yourself through an upper-case id is still yourself')

  // A client naming the user in upper case credits the same user (the id is normalised, like every user id).
  const bank = await createClient(app)
  const funded = await recorder.send(bank, { method: 'POST', url: '/transactions', headers: { 'idempotency-key': 'case-fund' }, payload: fundingBody('deposit', upper, 100) })
  t.equal(funded.statusCode, 201)
  t.equal(funded.json().toUserId, a.id, 'a deposit to an upper-case user id lands on the user, spelled as stored')
  const self = await recorder.send(a, { method: 'POST', url: '/transactions', headers: { 'idempotency-key': 'case-self' }, payload: { kind: 'transfer', amount: 5, currency: TEST_CURRENCY, toUserId: upper } })
  t.ok(self.statusCode === 400 || self.statusCode === 422, `a transfer to yourself spelled in upper case is refused, not a 5xx (got ${self.statusCode})`)
  const [{ balance } = { balance: '' }] = await sql<{ balance: string }[]>`select balance::text from balances where user_id = ${a.id} and currency = ${TEST_CURRENCY}`
  t.equal(balance, '100', 'the failed self-transfer wrote nothing')
  recorder.assertNoLeaks(t, [a, b])
})
