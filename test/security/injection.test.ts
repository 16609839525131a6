// Injection: every string the API reads (JSON fields, query and path parameters, headers) gets the
// shared payload table. Each payload is refused with a 400 (401 for credentials) or stored as inert text that
// comes back byte for byte, from the API and from the database; afterwards every table is intact and the row
// counts of this test's own users are exactly what the accepted requests explain. Never a 5xx. Money bodies go
// to the principal that may post them (transfers from a user, deposits and withdrawals from a service client),
// so each payload reaches validation and the database; a user's deposit is refused for its kind whatever it holds.
import t, { type Test } from 'tap'
import type { LightMyRequestResponse } from 'fastify'
import { buildTestApp, createClient, createUser, fund, testSql, uniqueEmail } from '../helper.ts'
import {
  assertProblem, assertTablesIntact, fundingBody, INJECTION_STRINGS, ResponseRecorder, snapshotUser, TEST_CURRENCY, WRONG_TYPES,
  type Caller
} from './support.ts'

// A fast KDF keeps the many signups of this file quick; the cost does not change what is validated.
// Every payload is also tried as a login for one email: the per-account throttle is tested in sessions.test.ts.
const FAST_HASH = { PASSWORD_HASH_COST: '1024', LOGIN_MAX_FAILURES: '1000' }
const PASSWORD = 'correct horse battery staple'

// eslint-disable-next-line no-control-regex -- control characters are what the name rule refuses
const hasControl = (value: string) => /[\u0000-\u001f\u007f]/.test(value)
// eslint-disable-next-line no-control-regex -- the description rule keeps tab, LF and CR
const hasDescriptionControl = (value: string) => /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/.test(value)
const codePoints = (value: string) => [...value].length

/** What the contract says about each text field, so every payload has one exact expected outcome. */
// Bidi controls and zero-width characters (format characters and the default-ignorables) are refused in every text
// field; the payload table has none of the contexts where routes/common/text.ts allows them (emoji ZWJ sequences).
const hasInvisible = (value: string) => /[\p{Cf}\p{Default_Ignorable_Code_Point}]/u.test(value)

const accepts = {
  name: (v: string) => v.trim() === v && v.length >= 1 && v.length <= 100 && !hasControl(v) && !hasInvisible(v) && v.isWellFormed(),
  password: (v: string) => v.length >= 12 && v.length <= 256,
  postBody: (v: string) => v.length >= 1 && codePoints(v) <= 5000 && !v.includes('\u0000') && !hasInvisible(v) && v.isWellFormed(),
  description: (v: string) => v.length <= 500 && !hasDescriptionControl(v) && !hasInvisible(v) && v.isWellFormed(),
  idempotencyKey: (v: string) => /^[\x21-\x7e]{1,255}$/.test(v),
  reference: (v: string) => /^[\x21-\x7e]{1,255}$/.test(v)
}

const INSUFFICIENT_SCOPE = 'https://ledger-api.dev/problems/insufficient_scope'

const noServerError = (tap: Test, response: LightMyRequestResponse, label: string) =>
  tap.ok(response.statusCode < 500, `${label}: no 5xx (got ${response.statusCode})`)

t.test('JSON string fields: each payload is a 400 or stored byte for byte; tables and row counts intact', async (t) => {
  const app = await buildTestApp(t, FAST_HASH)
  const sql = testSql(t)
  const recorder = new ResponseRecorder(app)
  const caller = await createUser(app, { name: 'Injection Caller' })
  const bystander = await createUser(app, { name: 'Bystander' })
  const payee = await createUser(app, { name: 'Payee' })
  // Two settlement systems: a reference is unique per client, so the same payload can be each one's reference.
  const bank = await createClient(app)
  const payout = await createClient(app)
  const bystanderBefore = await snapshotUser(sql, bystander.id)

  const funded = await recorder.send(bank, {
    method: 'POST', url: '/transactions', headers: { 'idempotency-key': 'fund' }, payload: fundingBody('deposit', caller.id, 1_000_000)
  })
  t.equal(funded.statusCode, 201)
  let transactionsWritten = 1
  let callerBalance = 1_000_000
  let payeeBalance = 0
  let postsWritten = 0
  const signups: { id: string, email: string }[] = []
  let keyNumber = 0

  for (const [label, payload] of Object.entries(INJECTION_STRINGS)) {
    // POST /users: name (stored), email (stored lower-cased), password (stored only as a hash).
    const nameEmail = uniqueEmail('inj-name')
    const byName = await recorder.send(null, { method: 'POST', url: '/users', payload: { email: nameEmail, name: payload, password: PASSWORD } })
    if (accepts.name(payload)) {
      t.equal(byName.statusCode, 201, `signup name "${label}" is stored`)
      t.equal(byName.json().name, payload, `signup name "${label}" comes back as sent`)
      const [row] = await sql<{ name: string }[]>`select name from users where email = ${nameEmail}`
      t.equal(row?.name, payload, `signup name "${label}" is in the database byte for byte`)
      signups.push({ id: byName.json().id, email: nameEmail })
    } else {
      assertProblem(t, byName, 400, `signup name "${label}"`)
    }

    for (const email of [payload, `${payload}@example.test`]) {
      const byEmail = await recorder.send(null, { method: 'POST', url: '/users', payload: { email, name: 'Email Probe', password: PASSWORD } })
      noServerError(t, byEmail, `signup email "${label}"`)
      if (byEmail.statusCode === 201) {
        const [row] = await sql<{ email: string }[]>`select email from users where id = ${byEmail.json().id}`
        t.equal(row?.email, email.toLowerCase(), `signup email "${label}" is stored as sent (lower-cased)`)
        signups.push({ id: byEmail.json().id, email: email.toLowerCase() })
      } else {
        t.ok([400, 409].includes(byEmail.statusCode), `signup email "${label}" is refused (${byEmail.statusCode})`)
      }
    }

    const passwordEmail = uniqueEmail('inj-password')
    const byPassword = await recorder.send(null, { method: 'POST', url: '/users', payload: { email: passwordEmail, name: 'Password Probe', password: payload } })
    if (accepts.password(payload)) {
      t.equal(byPassword.statusCode, 201, `signup password "${label}" is accepted`)
      signups.push({ id: byPassword.json().id, email: passwordEmail })
      const [row] = await sql<{ password_hash: string }[]>`select password_hash from users where email = ${passwordEmail}`
      t.match(row?.password_hash, /^scrypt\$/, `password "${label}" is stored only as a hash`)
      t.notOk(row?.password_hash.includes(payload), `password "${label}" is not in the stored hash`)
      const login = await recorder.send(null, { method: 'POST', url: '/auth/token', payload: { email: passwordEmail, password: payload } })
      t.equal(login.statusCode, 200, `password "${label}" logs in exactly as sent`)
      const truncated = payload.split('\u0000')[0] ?? ''
      if (truncated !== payload && truncated.length > 0) {
        const cut = await recorder.send(null, { method: 'POST', url: '/auth/token', payload: { email: passwordEmail, password: truncated } })
        t.equal(cut.statusCode, 401, `password "${label}" is not truncated at the NUL byte`)
      }
    } else {
      assertProblem(t, byPassword, 400, `signup password "${label}"`)
    }

    // POST /auth/token: payloads as email or password never log anyone in.
    for (const credentials of [{ email: payload, password: PASSWORD }, { email: caller.email, password: payload }]) {
      const login = await recorder.send(null, { method: 'POST', url: '/auth/token', payload: credentials })
      assertProblem(t, login, [400, 401], `login with "${label}"`)
    }

    // PATCH /users/:id (own): name and avatarUrl.
    const patchName = await recorder.send(caller, { method: 'PATCH', url: `/users/${caller.id}`, payload: { name: payload } })
    if (accepts.name(payload)) {
      t.equal(patchName.statusCode, 200, `patch name "${label}" is stored`)
      t.equal(patchName.json().name, payload, `patch name "${label}" comes back as sent`)
      const [row] = await sql<{ name: string }[]>`select name from users where id = ${caller.id}`
      t.equal(row?.name, payload, `patch name "${label}" is in the database byte for byte`)
    } else {
      assertProblem(t, patchName, 400, `patch name "${label}"`)
    }
    for (const avatarUrl of [payload, `https://cdn.example.test/${payload}`]) {
      const patchAvatar = await recorder.send(caller, { method: 'PATCH', url: `/users/${caller.id}`, payload: { avatarUrl } })
      if (avatarUrl.includes('\u0000') && avatarUrl.startsWith('https:')) {
        // A URL parser accepts NUL (it percent-encodes it), but the raw string is stored: PostgreSQL refuses it.
        t.ok(patchAvatar.statusCode < 500, `avatarUrl "${label}": no 5xx (got ${patchAvatar.statusCode})`)
        continue
      }
      noServerError(t, patchAvatar, `avatarUrl "${label}"`)
      if (patchAvatar.statusCode === 200) {
        const [row] = await sql<{ avatar_url: string }[]>`select avatar_url from users where id = ${caller.id}`
        t.equal(patchAvatar.json().avatarUrl, row?.avatar_url, `avatarUrl "${label}": the API returns what is stored`)
        t.notOk(hasControl(row?.avatar_url ?? ''), `avatarUrl "${label}": no control character is stored`)
        // Zod's z.url() trims and drops tab/CR/LF (the WHATWG URL rules); anything else is kept byte for byte.
        if (!/[\t\n\r]/.test(avatarUrl)) t.equal(row?.avatar_url, avatarUrl, `avatarUrl "${label}" is in the database byte for byte`)
        t.match(avatarUrl, /^https:\/\//, `only an https URL is accepted as avatar ("${label}")`)
      } else {
        assertProblem(t, patchAvatar, 400, `avatarUrl "${label}"`)
      }
    }

    // POST /posts: body (stored); a userId (the old way to name a feed) is refused whatever it holds.
    const post = await recorder.send(caller, { method: 'POST', url: '/posts', payload: { body: payload } })
    if (accepts.postBody(payload)) {
      t.equal(post.statusCode, 201, `post body "${label}" is stored`)
      t.equal(post.json().body, payload, `post body "${label}" comes back as sent`)
      const [row] = await sql<{ body: string }[]>`select body from posts where id = ${post.json().id}`
      t.equal(row?.body, payload, `post body "${label}" is in the database byte for byte`)
      postsWritten++
    } else {
      assertProblem(t, post, 400, `post body "${label}"`)
    }
    const postUser = await recorder.send(caller, { method: 'POST', url: '/posts', payload: { body: 'x', userId: payload } })
    assertProblem(t, postUser, 400, `post userId "${label}"`)

    // POST /transactions: description (stored) on every kind, each from the principal that may post it.
    const money: { kind: string, sender: Caller, body: Record<string, unknown>, delta: number }[] = [
      { kind: 'transfer', sender: caller, body: { kind: 'transfer', amount: 1, currency: TEST_CURRENCY, toUserId: payee.id }, delta: -1 },
      { kind: 'deposit', sender: bank, body: fundingBody('deposit', caller.id, 1), delta: 1 },
      { kind: 'withdrawal', sender: bank, body: fundingBody('withdrawal', caller.id, 1), delta: -1 }
    ]
    for (const { kind, sender, body, delta } of money) {
      const described = await recorder.send(sender, {
        method: 'POST', url: '/transactions', headers: { 'idempotency-key': `inj-${++keyNumber}` }, payload: { ...body, description: payload }
      })
      if (accepts.description(payload)) {
        t.equal(described.statusCode, 201, `${kind} description "${label}" is stored`)
        t.equal(described.json().description, payload, `${kind} description "${label}" comes back as sent`)
        const [row] = await sql<{ description: string }[]>`select description from transactions where id = ${described.json().id}`
        t.equal(row?.description, payload, `${kind} description "${label}" is in the database byte for byte`)
        transactionsWritten++
        callerBalance += delta
        if (kind === 'transfer') payeeBalance++
      } else {
        assertProblem(t, described, 400, `${kind} description "${label}"`)
      }
    }
    // A user's deposit or withdrawal is refused for its kind before its body is read: the same 403 for every payload.
    for (const kind of ['deposit', 'withdrawal'] as const) {
      const own = await recorder.send(caller, {
        method: 'POST', url: '/transactions', headers: { 'idempotency-key': `inj-${++keyNumber}` }, payload: fundingBody(kind, caller.id, 1, { description: payload, reference: payload })
      })
      assertProblem(t, own, 403, `a user's ${kind} with "${label}"`)
      t.equal(own.json().type, INSUFFICIENT_SCOPE, `a user's ${kind} with "${label}": insufficient_scope`)
    }

    // reference (stored, compared byte for byte): the bank's deposit and the payout system's withdrawal.
    const references: { kind: 'deposit' | 'withdrawal', sender: Caller, delta: number }[] = [
      { kind: 'deposit', sender: bank, delta: 1 },
      { kind: 'withdrawal', sender: payout, delta: -1 }
    ]
    for (const { kind, sender, delta } of references) {
      const referenced = await recorder.send(sender, {
        method: 'POST', url: '/transactions', headers: { 'idempotency-key': `inj-${++keyNumber}` }, payload: fundingBody(kind, caller.id, 1, { reference: payload })
      })
      if (accepts.reference(payload)) {
        t.equal(referenced.statusCode, 201, `${kind} reference "${label}" is stored`)
        t.equal(referenced.json().reference, payload, `${kind} reference "${label}" comes back as sent`)
        const [row] = await sql<{ reference: string, client_id: string }[]>`select reference, client_id from transactions where id = ${referenced.json().id}`
        t.same(row, { reference: payload, client_id: sender.id }, `${kind} reference "${label}" is in the database byte for byte, under its client`)
        transactionsWritten++
        callerBalance += delta
        const again = await recorder.send(sender, {
          method: 'POST', url: '/transactions', headers: { 'idempotency-key': `inj-${++keyNumber}` }, payload: fundingBody(kind, caller.id, 1, { reference: payload })
        })
        assertProblem(t, again, 409, `${kind} reference "${label}" used again`)
        t.equal(again.json().type, 'https://ledger-api.dev/problems/reference_used', `${kind} reference "${label}" is matched exactly`)
      } else {
        assertProblem(t, referenced, 400, `${kind} reference "${label}"`)
      }
    }

    // Enumerations and ids: kind, currency and toUserId of a transfer; kind, currency and userId of the funding kinds.
    for (const field of ['kind', 'currency', 'toUserId'] as const) {
      const body = { kind: 'transfer', amount: 1, currency: TEST_CURRENCY, toUserId: bystander.id, [field]: payload }
      const response = await recorder.send(caller, { method: 'POST', url: '/transactions', headers: { 'idempotency-key': `inj-${++keyNumber}` }, payload: body })
      assertProblem(t, response, 400, `transaction ${field} "${label}"`)
    }
    for (const kind of ['deposit', 'withdrawal'] as const) {
      for (const field of ['kind', 'currency', 'userId'] as const) {
        const body = fundingBody(kind, bystander.id, 1, { [field]: payload })
        const response = await recorder.send(bank, { method: 'POST', url: '/transactions', headers: { 'idempotency-key': `inj-${++keyNumber}` }, payload: body })
        assertProblem(t, response, 400, `${kind} ${field} "${label}"`)
      }
    }
  }

  // Wrong JSON types where a string is expected, and numbers sent as strings: always a 400, nothing written.
  const stringFields: { label: string, url: string, method: 'POST' | 'PATCH', base: Record<string, unknown>, field: string, sender?: Caller }[] = [
    { label: 'signup email', method: 'POST', url: '/users', base: { email: uniqueEmail('inj-type'), name: 'n', password: PASSWORD }, field: 'email' },
    { label: 'signup name', method: 'POST', url: '/users', base: { email: uniqueEmail('inj-type'), name: 'n', password: PASSWORD }, field: 'name' },
    { label: 'signup password', method: 'POST', url: '/users', base: { email: uniqueEmail('inj-type'), name: 'n', password: PASSWORD }, field: 'password' },
    { label: 'login email', method: 'POST', url: '/auth/token', base: { email: caller.email, password: PASSWORD }, field: 'email' },
    { label: 'login password', method: 'POST', url: '/auth/token', base: { email: caller.email, password: PASSWORD }, field: 'password' },
    { label: 'patch name', method: 'PATCH', url: `/users/${caller.id}`, base: { name: 'n' }, field: 'name' },
    { label: 'patch avatarUrl', method: 'PATCH', url: `/users/${caller.id}`, base: { avatarUrl: 'https://cdn.example.test/a.png' }, field: 'avatarUrl' },
    { label: 'post body', method: 'POST', url: '/posts', base: { body: 'x' }, field: 'body' },
    ...(['kind', 'currency', 'description', 'toUserId', 'amount'] as const).map((field) => ({
      label: `transaction ${field}`, method: 'POST' as const, url: '/transactions', base: { kind: 'transfer', amount: 1, currency: TEST_CURRENCY, toUserId: bystander.id }, field
    })),
    ...(['deposit', 'withdrawal'] as const).flatMap((kind) => (['kind', 'currency', 'description', 'userId', 'reference', 'amount'] as const).map((field) => ({
      label: `${kind} ${field}`, method: 'POST' as const, url: '/transactions', base: fundingBody(kind, bystander.id, 1), field, sender: bank
    })))
  ]
  for (const target of stringFields) {
    for (const [typeLabel, value] of Object.entries(WRONG_TYPES)) {
      // avatarUrl: null is the documented way to clear the avatar.
      if (target.field === 'avatarUrl' && value === null) continue
      // A number is the right type for amount (a valid transfer); wrong types there are the other values.
      if (target.field === 'amount' && typeof value === 'number') continue
      const headers = target.url === '/transactions' ? { 'idempotency-key': `type-${++keyNumber}` } : {}
      const response = await recorder.send(target.url === '/users' || target.url === '/auth/token' ? null : target.sender ?? caller, {
        method: target.method, url: target.url, headers, payload: { ...target.base, [target.field]: value }
      })
      assertProblem(t, response, 400, `${target.label} as ${typeLabel}`)
    }
  }
  for (const amount of ['100', '1e2', '0x10', ' 100', '100.0', '', '9007199254740993']) {
    for (const [sender, body] of [
      [caller, { kind: 'transfer', amount, currency: TEST_CURRENCY, toUserId: payee.id }],
      [bank, fundingBody('deposit', caller.id, amount)],
      [bank, fundingBody('withdrawal', caller.id, amount)]
    ] as const) {
      const response = await recorder.send(sender, { method: 'POST', url: '/transactions', headers: { 'idempotency-key': `amount-${++keyNumber}` }, payload: body })
      assertProblem(t, response, 400, `${body.kind} amount as the string "${amount}"`)
    }
  }

  // Afterwards: every table exists; this test's users have exactly the rows the accepted requests explain.
  await assertTablesIntact(t, sql)
  const [{ count: callerTransactions } = { count: -1 }] = await sql<{ count: number }[]>`
    select count(*)::int as count from transactions where from_user_id = ${caller.id} or to_user_id = ${caller.id}`
  t.equal(callerTransactions, transactionsWritten, 'the caller has exactly the transactions that got a 201')
  const [{ count: callerPosts } = { count: -1 }] = await sql<{ count: number }[]>`
    select count(*)::int as count from posts where author_id = ${caller.id}`
  t.equal(callerPosts, postsWritten, 'the caller has exactly the posts that got a 201')
  const balances = await sql<{ user_id: string, balance: string }[]>`
    select user_id, balance::text from balances where user_id in (${caller.id}, ${payee.id}) and currency = ${TEST_CURRENCY}`
  t.same(Object.fromEntries(balances.map((r) => [r.user_id, r.balance])), { [caller.id]: String(callerBalance), [payee.id]: String(payeeBalance) },
    'the balances are what the accepted deposits, withdrawals and transfers explain')
  const [{ count: clientTransactions } = { count: -1 }] = await sql<{ count: number }[]>`
    select count(*)::int as count from transactions where client_id in (${bank.id}, ${payout.id}) and to_user_id is distinct from ${caller.id} and from_user_id is distinct from ${caller.id}`
  t.equal(clientTransactions, 0, 'no client wrote anything for another user (no injected userId matched one)')
  const ids = signups.map((s) => s.id)
  const rows = await sql<{ id: string, email: string }[]>`select id, email from users where id = any(${ids}::uuid[]) order by email`
  t.same(rows.map((r) => r.email).sort(), signups.map((s) => s.email).sort(), 'exactly the accepted signups exist')
  const [{ count: refusedSignups } = { count: -1 }] = await sql<{ count: number }[]>`
    select count(*)::int as count from users where email like 'inj-type-%'`
  t.equal(refusedSignups, 0, 'no wrongly typed signup created a user')
  t.same(await snapshotUser(sql, bystander.id), bystanderBefore, 'the bystander is untouched')
  recorder.assertNoLeaks(t, [caller, bystander, payee])
})

t.test('query parameters: payloads in limit, cursor and unknown names are 400; ignored elsewhere', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const recorder = new ResponseRecorder(app)
  const caller = await createUser(app)
  const bank = await createClient(app)
  // The lists as each principal reads them: a user's transactions and feed, and a client's own transactions.
  const lists: [Caller, string, string][] = [[caller, '/transactions', 'user'], [caller, '/feed', 'user'], [bank, '/transactions', 'client']]
  for (const [label, payload] of Object.entries(INJECTION_STRINGS)) {
    const value = encodeURIComponent(payload)
    for (const [who, list, whoLabel] of lists) {
      for (const name of ['limit', 'cursor']) {
        assertProblem(t, await recorder.send(who, { method: 'GET', url: `${list}?${name}=${value}` }), 400, `${whoLabel} ${list} ${name}="${label}"`)
      }
      assertProblem(t, await recorder.send(who, { method: 'GET', url: `${list}?${value}=1` }), 400, `${whoLabel} ${list} unknown parameter "${label}"`)
      assertProblem(t, await recorder.send(who, { method: 'GET', url: `${list}?limit=1&limit=${value}` }), 400, `${whoLabel} ${list} repeated limit "${label}"`)
    }
    // Routes without a query schema ignore parameters: they never select another user's data through them.
    const balances = await recorder.send(caller, { method: 'GET', url: `/balances?userId=${value}&user_id=${value}` })
    t.equal(balances.statusCode, 200, `/balances ignores userId="${label}"`)
    t.same(balances.json(), { data: [] }, `/balances with "${label}" is still the caller's (empty) balances`)
    const me = await recorder.send(caller, { method: 'GET', url: `/users/me?id=${value}` })
    t.equal(me.json().id, caller.id, `/users/me with id="${label}" is still the caller`)
  }
  await assertTablesIntact(t, sql)
  recorder.assertNoLeaks(t, [caller])
})

t.test('path parameters: payloads in :id are refused, never a 5xx and never a match', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const recorder = new ResponseRecorder(app)
  const caller = await createUser(app)
  const bank = await createClient(app)
  const before = await snapshotUser(sql, caller.id)
  const urls: [Caller, string][] = [[caller, '/users/'], [caller, '/transactions/'], [bank, '/transactions/']]
  for (const [label, payload] of Object.entries(INJECTION_STRINGS)) {
    for (const [who, prefix] of urls) {
      const url = prefix + encodeURIComponent(payload)
      const response = await recorder.send(who, { method: 'GET', url })
      const as = who === bank ? ' (client)' : ''
      noServerError(t, response, `GET ${prefix}:id${as} "${label}"`)
      // 400 from the schema; 404 for a well-formed id that does not exist; 414 past maxParamLength (200).
      t.ok([400, 404, 414].includes(response.statusCode), `GET ${prefix}:id${as} "${label}" is refused (${response.statusCode})`)
    }
    const patch = await recorder.send(caller, { method: 'PATCH', url: `/users/${encodeURIComponent(payload)}`, payload: { name: 'Changed' } })
    t.ok([400, 404, 414].includes(patch.statusCode), `PATCH /users/:id "${label}" is refused (${patch.statusCode})`)
  }
  // SQL-looking text that is a valid id shape is still just an id.
  assertProblem(t, await recorder.send(caller, { method: 'GET', url: '/transactions/1%20OR%201=1' }), 400, 'transaction id with OR')
  assertProblem(t, await recorder.send(caller, { method: 'GET', url: '/users/00000000-0000-0000-0000-000000000000%27%20OR%20%271%27=%271' }), 400, 'user id with OR')
  t.same(await snapshotUser(sql, caller.id), before, 'no PATCH through a crafted id changed the caller')
  await assertTablesIntact(t, sql)
})

t.test('headers: payloads in Authorization, Idempotency-Key, X-Request-Id, Content-Type and trace headers', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const recorder = new ResponseRecorder(app)
  const caller = await createUser(app)
  const payee = await createUser(app)
  const bank = await createClient(app)
  await fund(app, caller, 1_000, TEST_CURRENCY, { client: bank })
  let created = 0
  let number = 0
  /** Values a real HTTP parser would refuse (CR, LF, NUL) may be refused by inject itself; both are fine. */
  const sendHeader = async (options: Parameters<ResponseRecorder['send']>[1], label: string, who: Caller = caller) => {
    try {
      return await recorder.send(who, options)
    } catch (error) {
      t.comment(`${label}: refused before reaching the app (${(error as Error).message})`)
      return undefined
    }
  }

  for (const [label, payload] of Object.entries(INJECTION_STRINGS)) {
    for (const authorization of [payload, `Bearer ${payload}`, `Bearer ${payload}.${payload}.${payload}`]) {
      const response = await sendHeader({ method: 'GET', url: '/balances', headers: { authorization } }, `authorization "${label}"`)
      if (response !== undefined) assertProblem(t, response, 401, `authorization "${label}"`)
    }

    // Idempotency keys belong to the principal that posts: the user's transfer and the client's deposit each keep one.
    const key = `${payload}`
    for (const [who, body] of [
      [caller, { kind: 'transfer', amount: 1, currency: TEST_CURRENCY, toUserId: payee.id, description: `key ${++number}` }],
      [bank, fundingBody('deposit', caller.id, 1, { description: `key ${++number}` })]
    ] as const) {
      const posted = await sendHeader({ method: 'POST', url: '/transactions', headers: { 'idempotency-key': key }, payload: body }, `${body.kind} idempotency-key "${label}"`, who)
      if (posted === undefined) continue
      if (accepts.idempotencyKey(payload)) {
        t.equal(posted.statusCode, 201, `${body.kind} idempotency-key "${label}" is accepted`)
        const [row] = await sql<{ key: string }[]>`select key from idempotency_keys where principal_id = ${who.id} and transaction_id = ${posted.json().id}`
        t.equal(row?.key, payload, `${body.kind} idempotency-key "${label}" is stored byte for byte, under its principal`)
        created++
      } else {
        assertProblem(t, posted, 400, `${body.kind} idempotency-key "${label}"`)
      }
    }

    const traced = await sendHeader({ method: 'GET', url: '/balances', headers: { 'x-request-id': payload } }, `x-request-id "${label}"`)
    if (traced !== undefined) {
      t.equal(traced.statusCode, 200, `x-request-id "${label}" does not break the request`)
      const echoed = String(traced.headers['x-request-id'])
      if (/^[A-Za-z0-9._:-]{1,128}$/.test(payload)) t.equal(echoed, payload, `safe x-request-id "${label}" is echoed`)
      else t.match(echoed, /^[0-9a-f-]{36}$/, `unsafe x-request-id "${label}" is replaced by a generated id`)
    }

    const typed = await sendHeader({ method: 'POST', url: '/posts', headers: { 'content-type': payload }, payload: JSON.stringify({ body: 'typed' }) }, `content-type "${label}"`)
    if (typed !== undefined) assertProblem(t, typed, [400, 415], `content-type "${label}"`)
    const charset = await sendHeader({ method: 'POST', url: '/posts', headers: { 'content-type': `application/json; charset=${payload}` }, payload: JSON.stringify({ body: 'charset' }) }, `charset "${label}"`)
    if (charset !== undefined) {
      noServerError(t, charset, `content-type charset "${label}"`)
      if (charset.statusCode === 201) t.equal(charset.json().body, 'charset', `charset "${label}" does not alter the body`)
    }

    const headers = { traceparent: payload, tracestate: payload, baggage: payload, 'x-forwarded-for': payload, accept: payload, 'accept-language': payload }
    const other = await sendHeader({ method: 'GET', url: '/balances', headers }, `trace and proxy headers "${label}"`)
    if (other !== undefined) t.equal(other.statusCode, 200, `trace/proxy/accept headers "${label}" are ignored safely`)
  }
  const [{ count } = { count: -1 }] = await sql<{ count: number }[]>`
    select count(*)::int as count from transactions where to_user_id = ${caller.id} or from_user_id = ${caller.id}`
  t.equal(count, created + 1, 'exactly the accepted idempotency keys wrote a transaction (besides the funding deposit)')
  await assertTablesIntact(t, sql)
  recorder.assertNoLeaks(t, [caller, payee])
})

t.test('text that cannot be stored byte for byte is refused, not silently altered', async (t) => {
  // Unpaired UTF-16 surrogates are valid in JSON text ("\ud800") but cannot be encoded as UTF-8: the driver
  // replaces them with U+FFFD. Post bodies refuse them (routes/social/schemas.ts); names and descriptions do not.
  const app = await buildTestApp(t, FAST_HASH)
  const sql = testSql(t)
  const caller = await createUser(app)
  const lone = 'a\ud800b'
  const send = (method: 'POST' | 'PATCH', url: string, body: Record<string, unknown>, headers: Record<string, string> = {}) =>
    app.inject({ method, url, headers: { authorization: caller.authorization, 'content-type': 'application/json', ...headers }, payload: JSON.stringify(body) })

  const post = await send('POST', '/posts', { body: lone })
  assertProblem(t, post, 400, 'post body with an unpaired surrogate (the reference behaviour)')

  const patch = await send('PATCH', `/users/${caller.id}`, { name: lone })
  const [user] = await sql<{ name: string }[]>`select name from users where id = ${caller.id}`
  t.ok(patch.statusCode === 400 || (patch.statusCode === 200 && user?.name === lone),
    `a name with an unpaired surrogate is refused or kept exactly (got ${patch.statusCode}, stored ${JSON.stringify(user?.name)})`)

  const signup = await app.inject({ method: 'POST', url: '/users', payload: JSON.stringify({ email: uniqueEmail('inj-lone'), name: lone, password: PASSWORD }), headers: { 'content-type': 'application/json' } })
  t.ok(signup.statusCode === 400 || (signup.statusCode === 201 && signup.json().name === lone),
    `a signup name with an unpaired surrogate is refused or kept exactly (got ${signup.statusCode} ${JSON.stringify(signup.json().name)})`)

  // A description on each kind, from the principal that posts it: the user's transfer and the client's deposit.
  const payee = await createUser(app)
  const bank = await createClient(app)
  await fund(app, caller, 10, TEST_CURRENCY, { client: bank })
  const bodies: [Caller, Record<string, unknown>][] = [
    [caller, { kind: 'transfer', amount: 1, currency: TEST_CURRENCY, toUserId: payee.id }],
    [bank, fundingBody('deposit', caller.id, 1, { reference: 'lone-surrogate-1' })]
  ]
  for (const [who, body] of bodies) {
    const money = await app.inject({
      method: 'POST', url: '/transactions', headers: { authorization: who.authorization, 'content-type': 'application/json', 'idempotency-key': 'lone-1' }, payload: JSON.stringify({ ...body, description: lone })
    })
    const stored = money.statusCode === 201
      ? (await sql<{ description: string }[]>`select description from transactions where id = ${money.json().id}`)[0]?.description
      : undefined
    t.ok(money.statusCode === 400 || stored === lone,
      `a ${String(body.kind)} description with an unpaired surrogate is refused or kept exactly (got ${money.statusCode}, stored ${JSON.stringify(stored)})`)
    if (money.statusCode === 201) {
      // The idempotency fingerprint hashes the string as sent; the stored row holds U+FFFD instead.
      const replay = await app.inject({
        method: 'POST', url: '/transactions', headers: { authorization: who.authorization, 'idempotency-key': 'lone-1' }, payload: { ...body, description: 'a\ufffdb' }
      })
      t.comment(`${String(body.kind)}: retrying with the description the API returned gives ${replay.statusCode} (422 = the stored text no longer matches its own key)`)
    }
  }
  const reference = await app.inject({
    method: 'POST', url: '/transactions', headers: { authorization: bank.authorization, 'content-type': 'application/json', 'idempotency-key': 'lone-2' }, payload: JSON.stringify(fundingBody('deposit', caller.id, 1, { reference: lone }))
  })
  assertProblem(t, reference, 400, 'a reference with an unpaired surrogate (visible ASCII only)')
})
