// Broken authentication: forged, tampered, expired and misplaced tokens (a user's or a service client's)
// are 401 on every private route; a token that outlives its user or its client does no harm; password guessing
// from one address is rate limited.
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { buildTestApp, createClient, createUser, forgeToken, fund, testSql } from '../helper.ts'
import {
  assertProblem, fundingBody, issueTestClient, PRIVATE_ROUTES, randomTestIp, rawExchange, ResponseRecorder, snapshotUser, TEST_CURRENCY,
  type PrivateRoute
} from './support.ts'
import type { App } from '../../app.ts'

const now = () => Math.floor(Date.now() / 1000)

function send (app: App, route: PrivateRoute, self: { id: string }, headers: Record<string, string | string[]>, query = '') {
  return app.inject({
    method: route.method,
    url: route.url(self) + query,
    headers: { ...route.headers, ...headers },
    ...(route.payload !== undefined ? { payload: route.payload } : {})
  })
}

t.test('the private route list covers every route of the OpenAPI document that needs a token', async (t) => {
  const app = await buildTestApp(t)
  const doc = (await app.inject({ method: 'GET', url: '/openapi.json' })).json() as {
    paths: Record<string, Record<string, { security?: unknown[] }>>
  }
  const documented: string[] = []
  for (const [path, operations] of Object.entries(doc.paths)) {
    for (const [method, operation] of Object.entries(operations)) {
      if (path.startsWith('/health') || (Array.isArray(operation.security) && operation.security.length === 0)) continue
      documented.push(`${method.toUpperCase()} ${path}`)
    }
  }
  t.same(documented.sort(), PRIVATE_ROUTES.map((r) => `${r.method} ${r.path}`).sort(), 'every private route is attacked below')
})

t.test('forged and tampered tokens are 401 on every private route', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const victim = await createUser(app)
  const before = await snapshotUser(sql, victim.id)
  const secret = app.config.JWT_SECRET
  const claims = (overrides: Record<string, unknown> = {}) => ({
    sub: victim.id, tier: 'standard', iat: now(), exp: now() + 300, iss: app.config.JWT_ISSUER, aud: app.config.JWT_AUDIENCE, ...overrides
  })
  const hs256 = { alg: 'HS256', typ: 'JWT' }
  const [head, body, signature] = victim.token.split('.') as [string, string, string]
  const reencode = (value: Record<string, unknown>) => Buffer.from(JSON.stringify(value)).toString('base64url')
  const decoded = JSON.parse(Buffer.from(body, 'base64url').toString()) as Record<string, unknown>
  // The first character: all six of its bits are signature bits. (The last one of a 32-byte HMAC carries two
  // padding bits, so changing it can leave the decoded signature, and so the token's validity, unchanged.)
  const flip = (text: string) => (text.startsWith('A') ? 'B' : 'A') + text.slice(1)

  const tokens: Record<string, string> = {
    'alg none': forgeToken({ alg: 'none', typ: 'JWT' }, claims()),
    'alg None': forgeToken({ alg: 'None', typ: 'JWT' }, claims()),
    'alg NONE with a signature': `${forgeToken({ alg: 'NONE', typ: 'JWT' }, claims())}${signature}`,
    'alg none, real signature kept': `${reencode({ alg: 'none', typ: 'JWT' })}.${body}.${signature}`,
    'HS256 with another secret': forgeToken(hs256, claims(), 'another-secret-that-is-long-enough-for-hs256'),
    'HS256 with an empty secret': forgeToken(hs256, claims(), ''),
    'HS512 with the real secret': forgeToken({ alg: 'HS512', typ: 'JWT' }, claims(), secret),
    'RS256 header on an HMAC signature': forgeToken({ alg: 'RS256', typ: 'JWT' }, claims(), secret),
    'tampered payload (tier pro)': `${head}.${reencode({ ...decoded, tier: 'pro' })}.${signature}`,
    'tampered payload (sub of another user)': `${head}.${reencode({ ...decoded, sub: '00000000-0000-4000-8000-000000000001' })}.${signature}`,
    'tampered payload (exp extended)': `${head}.${reencode({ ...decoded, exp: now() + 86_400 })}.${signature}`,
    'signature flipped': `${head}.${body}.${flip(signature)}`,
    'signature removed': `${head}.${body}.`,
    expired: forgeToken(hs256, claims({ iat: now() - 1000, exp: now() - 10 }), secret),
    'missing exp': forgeToken(hs256, claims({ exp: undefined }), secret),
    'missing iat': forgeToken(hs256, claims({ iat: undefined }), secret),
    'missing sub': forgeToken(hs256, claims({ sub: undefined }), secret),
    'issued more than an hour ago': forgeToken(hs256, claims({ iat: now() - 7200, exp: now() + 300 }), secret),
    'not valid yet (nbf)': forgeToken(hs256, claims({ nbf: now() + 600 }), secret),
    'wrong iss': forgeToken(hs256, claims({ iss: 'evil-issuer' }), secret),
    'missing iss': forgeToken(hs256, claims({ iss: undefined }), secret),
    'wrong aud': forgeToken(hs256, claims({ aud: 'another-api' }), secret),
    'aud list without ours': forgeToken(hs256, claims({ aud: ['another-api', 'third-api'] }), secret),
    'missing aud': forgeToken(hs256, claims({ aud: undefined }), secret),
    'exp as a string': forgeToken(hs256, claims({ exp: String(now() + 300) }), secret),
    'sub is SQL': forgeToken(hs256, claims({ sub: "' OR 1=1 --" }), secret),
    'tier admin': forgeToken(hs256, claims({ tier: 'admin' }), secret),
    'jwk header with its own key': forgeToken({ ...hs256, jwk: { kty: 'oct', k: Buffer.from('attacker').toString('base64url') } }, claims(), 'attacker'),
    'kid path traversal': forgeToken({ ...hs256, kid: '../../../../dev/null' }, claims(), ''),
    'two dots only': '..',
    'random segments': 'aaaa.bbbb.cccc'
  }

  let checked = 0
  for (const route of PRIVATE_ROUTES) {
    for (const [label, token] of Object.entries(tokens)) {
      const response = await send(app, route, victim, { authorization: `Bearer ${token}` })
      assertProblem(t, response, 401, `${route.method} ${route.path} with ${label}`)
      t.equal(response.headers['www-authenticate'], 'Bearer', `${route.method} ${route.path} with ${label}: WWW-Authenticate`)
      checked++
    }
  }
  t.comment(`${checked} forged-token requests, all 401`)
  // The genuine token is accepted, so the 401s above are the forgeries' own fault.
  t.equal((await app.inject({ method: 'GET', url: '/users/me', headers: { authorization: victim.authorization } })).statusCode, 200, 'the real token works')
  t.same(await snapshotUser(sql, victim.id), before, 'no forged request changed anything')
})

t.test('forged and tampered service-client tokens are 401 on every private route and move no money', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const victim = await createUser(app)
  const before = await snapshotUser(sql, victim.id)
  // A real client with a scope that moves no money: forging funds:write into its token is the attack.
  const reader = await createClient(app, ['events:read'])
  const secret = app.config.JWT_SECRET
  const claims = (overrides: Record<string, unknown> = {}) => ({
    sub: reader.id, client_id: reader.id, scope: 'funds:write', iat: now(), exp: now() + 300, iss: app.config.JWT_ISSUER, aud: app.config.JWT_AUDIENCE, ...overrides
  })
  const hs256 = { alg: 'HS256', typ: 'JWT' }
  const [head, body, signature] = reader.token.split('.') as [string, string, string]
  const reencode = (value: Record<string, unknown>) => Buffer.from(JSON.stringify(value)).toString('base64url')
  const decoded = JSON.parse(Buffer.from(body, 'base64url').toString()) as Record<string, unknown>
  t.same({ sub: decoded.sub, client_id: decoded.client_id, scope: decoded.scope }, { sub: reader.id, client_id: reader.id, scope: 'events:read' }, 'the real token names the client and its scope')
  const flip = (text: string) => (text.startsWith('A') ? 'B' : 'A') + text.slice(1)

  const tokens: Record<string, string> = {
    'alg none': forgeToken({ alg: 'none', typ: 'JWT' }, claims()),
    'alg none, real signature kept': `${reencode({ alg: 'none', typ: 'JWT' })}.${reencode({ ...decoded, scope: 'funds:write' })}.${signature}`,
    'HS256 with another secret': forgeToken(hs256, claims(), 'another-secret-that-is-long-enough-for-hs256'),
    'HS512 with the real secret': forgeToken({ alg: 'HS512', typ: 'JWT' }, claims(), secret),
    'tampered payload (scope funds:write)': `${head}.${reencode({ ...decoded, scope: 'funds:write' })}.${signature}`,
    'tampered payload (scope added)': `${head}.${reencode({ ...decoded, scope: 'events:read funds:write' })}.${signature}`,
    'tampered payload (another client)': `${head}.${reencode({ ...decoded, sub: '00000000-0000-4000-8000-000000000002', client_id: '00000000-0000-4000-8000-000000000002' })}.${signature}`,
    'tampered payload (client becomes the victim)': `${head}.${reencode({ ...decoded, sub: victim.id, client_id: undefined, scope: '', tier: 'pro' })}.${signature}`,
    'signature flipped': `${head}.${body}.${flip(signature)}`,
    'signature removed': `${head}.${body}.`,
    expired: forgeToken(hs256, claims({ iat: now() - 1000, exp: now() - 10 }), secret),
    'wrong iss': forgeToken(hs256, claims({ iss: 'evil-issuer' }), secret),
    'wrong aud': forgeToken(hs256, claims({ aud: 'another-api' }), secret),
    'missing exp': forgeToken(hs256, claims({ exp: undefined }), secret),
    // Signed with the real secret, so only the claims' own validation stands between them and the ledger.
    'client_id is SQL': forgeToken(hs256, claims({ client_id: "' OR 1=1 --" }), secret),
    'sub and client_id are SQL': forgeToken(hs256, claims({ sub: "' OR 1=1 --", client_id: "' OR 1=1 --" }), secret),
    'scope is not a string': forgeToken(hs256, claims({ scope: ['funds:write'] }), secret),
    'missing client_id': forgeToken(hs256, claims({ client_id: undefined }), secret)
  }
  let checked = 0
  for (const route of PRIVATE_ROUTES) {
    for (const [label, token] of Object.entries(tokens)) {
      const response = await send(app, route, victim, { authorization: `Bearer ${token}` })
      assertProblem(t, response, 401, `${route.method} ${route.path} with a client token: ${label}`)
      t.equal(response.headers['www-authenticate'], 'Bearer', `${route.method} ${route.path} with a client token: ${label}: WWW-Authenticate`)
      checked++
    }
    // The same forgeries on the money route with the body they were forged for: a deposit to the victim.
    if (route.method === 'POST' && route.path === '/transactions') {
      for (const [index, [label, token]] of Object.entries(tokens).entries()) {
        const response = await app.inject({
          method: 'POST', url: '/transactions', headers: { authorization: `Bearer ${token}`, 'idempotency-key': `forged-${index}` }, payload: fundingBody('deposit', victim.id, 1_000_000)
        })
        assertProblem(t, response, 401, `a forged client deposit: ${label}`)
        checked++
      }
    }
  }
  t.comment(`${checked} forged client-token requests, all 401`)
  // The genuine token is accepted, and its real scope is what refuses a deposit.
  t.equal((await app.inject({ method: 'GET', url: '/transactions', headers: { authorization: reader.authorization } })).statusCode, 200, 'the real token works')
  const real = await app.inject({ method: 'POST', url: '/transactions', headers: { authorization: reader.authorization, 'idempotency-key': 'real' }, payload: fundingBody('deposit', victim.id, 1) })
  assertProblem(t, real, 403, 'the real token without funds:write')
  t.equal(real.json().type, 'https://ledger-api.dev/problems/insufficient_scope')
  const [{ count } = { count: -1 }] = await sql<{ count: number }[]>`select count(*)::int as count from transactions where client_id = ${reader.id}`
  t.equal(count, 0, 'nothing was posted under the client')
  t.same(await snapshotUser(sql, victim.id), before, 'no forged request changed the victim')
})

t.test('a token in the wrong place or form is 401 on every private route', async (t) => {
  const app = await buildTestApp(t)
  const user = await createUser(app)
  const other = await createUser(app)
  const forms: Record<string, { headers: Record<string, string | string[]>, query?: string }> = {
    'no Authorization header': { headers: {} },
    'no scheme': { headers: { authorization: user.token } },
    'Basic scheme': { headers: { authorization: `Basic ${Buffer.from(`${user.email}:${user.password}`).toString('base64')}` } },
    'Token scheme': { headers: { authorization: `Token ${user.token}` } },
    'two spaces after Bearer': { headers: { authorization: `Bearer  ${user.token}` } },
    'trailing space': { headers: { authorization: `Bearer ${user.token} ` } },
    'two tokens, space separated': { headers: { authorization: `Bearer ${user.token} ${other.token}` } },
    'two tokens, comma separated': { headers: { authorization: `Bearer ${user.token}, Bearer ${other.token}` } },
    'Bearer without a token': { headers: { authorization: 'Bearer ' } },
    'token in the query string (access_token)': { headers: {}, query: `?access_token=${user.token}` },
    'token in the query string (token)': { headers: {}, query: `?token=${user.token}` },
    'token in a cookie': { headers: { cookie: `token=${user.token}; access_token=${user.token}` } },
    'token in X-Access-Token': { headers: { 'x-access-token': user.token, 'x-auth-token': user.token } },
    'token in Proxy-Authorization': { headers: { 'proxy-authorization': `Bearer ${user.token}` } }
  }
  for (const route of PRIVATE_ROUTES) {
    for (const [label, form] of Object.entries(forms)) {
      const response = await send(app, route, user, form.headers, form.query)
      assertProblem(t, response, 401, `${route.method} ${route.path}: ${label}`)
    }
  }
  t.equal((await app.inject({ method: 'GET', url: '/users/me', headers: { authorization: user.authorization } })).statusCode, 200, 'the right form works')
  // The scheme name is case-insensitive (RFC 9110 section 11.1): `bearer` and `BEARER` are the right form too.
  for (const scheme of ['bearer', 'BEARER']) {
    t.equal((await app.inject({ method: 'GET', url: '/users/me', headers: { authorization: `${scheme} ${user.token}` } })).statusCode, 200, `${scheme}: the scheme in another case`)
  }
})

t.test('two Authorization headers on the wire are refused', async (t) => {
  // RFC 9110 makes Authorization a singleton; Node keeps the first copy and drops the rest, so the app cannot see
  // the ambiguity unless it reads rawHeaders. A proxy that honours the last copy would disagree with the app.
  const app = await buildTestApp(t)
  const user = await createUser(app)
  const other = await createUser(app)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo
  const request = (first: string, second: string) => rawExchange(port, [
    `GET /users/me HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: ${first}\r\nAuthorization: ${second}\r\nConnection: close\r\n\r\n`
  ], { timeoutMs: 3000 })
  const both = await request(user.authorization, other.authorization)
  t.ok(both.status === 401 || both.status === 400, `two valid tokens: refused (got ${both.status})`)
  const junkFirst = await request('Bearer junk.junk.junk', user.authorization)
  t.equal(junkFirst.status, 401, 'a bad first token is not rescued by a good second one')
  const goodFirst = await request(user.authorization, 'Bearer junk.junk.junk')
  t.ok(goodFirst.status === 401 || goodFirst.status === 400, `a good first token with a junk second: refused (got ${goodFirst.status})`)
  const single = await rawExchange(port, [`GET /users/me HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: ${user.authorization}\r\nConnection: close\r\n\r\n`], { timeoutMs: 3000 })
  t.equal(single.status, 200, 'one Authorization header works on the wire')
})

t.test('a valid token for a user that no longer exists', async (t) => {
  // There is no delete route; the row is removed directly (the user has no transactions or posts).
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const ghost = await createUser(app)
  const witness = await createUser(app)
  await sql`delete from users where id = ${ghost.id}`
  const statuses: Record<string, number> = {}
  for (const route of PRIVATE_ROUTES) {
    const response = await send(app, route, ghost, { authorization: ghost.authorization })
    statuses[`${route.method} ${route.path}`] = response.statusCode
    t.ok(response.statusCode < 500, `${route.method} ${route.path} for a deleted user is not a 5xx (got ${response.statusCode})`)
  }
  t.comment(`statuses for a deleted user's token: ${JSON.stringify(statuses)}`)
  t.ok([401, 404].includes(statuses['GET /users/me'] ?? 0), 'GET /users/me is 404 or 401')
  t.ok([401, 404].includes(statuses['PATCH /users/{id}'] ?? 0), 'PATCH /users/:id is 404 or 401')
  t.ok([401, 404].includes(statuses['POST /posts'] ?? 0), 'POST /posts (own feed) is 404 or 401')
  // post_transaction() checks that the caller of a transfer exists before anything else (LDG04).
  t.equal(statuses['POST /transactions'], 401, 'POST /transactions (a transfer) is 401')
  const followed = await send(app, { method: 'PUT', path: '/users/me/following/{id}', url: () => `/users/me/following/${witness.id}` }, ghost, { authorization: ghost.authorization })
  t.ok(followed.statusCode < 500 && followed.statusCode !== 204, `a deleted user cannot follow anyone (${followed.statusCode})`)
  const transfer = await send(app, { method: 'POST', path: '/transactions', url: () => '/transactions', payload: { kind: 'transfer', amount: 1, currency: TEST_CURRENCY, toUserId: witness.id }, headers: { 'idempotency-key': 'ghost-transfer' } }, ghost, { authorization: ghost.authorization })
  assertProblem(t, transfer, 401, 'a deleted user cannot pay a user who exists')
  const deposit = await send(app, { method: 'POST', path: '/transactions', url: () => '/transactions', payload: fundingBody('deposit', witness.id, 1), headers: { 'idempotency-key': 'ghost-deposit' } }, ghost, { authorization: ghost.authorization })
  // 403 for its kind, or 401 once the removal's revocation (`user:<id>`, written by a trigger) reached this process.
  assertProblem(t, deposit, [401, 403], 'nor deposit, as no user can')
  const [{ count } = { count: -1 }] = await sql<{ count: number }[]>`
    select (select count(*) from users where id = ${ghost.id}) + (select count(*) from posts where author_id = ${ghost.id})
         + (select count(*) from follows where follower_id = ${ghost.id}) + (select count(*) from feed_items where feed_user_id = ${ghost.id})
         + (select count(*) from transactions where to_user_id in (${ghost.id}, ${witness.id}) or from_user_id in (${ghost.id}, ${witness.id}))
         + (select count(*) from idempotency_keys where principal_id = ${ghost.id}) as count`
  t.equal(Number(count), 0, 'nothing was written for the deleted user')
})

t.test('a valid token for a service client that no longer exists', async (t) => {
  // There is no delete route for clients either (they are revoked); the row is removed directly (it posted nothing).
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const ghost = await createClient(app)
  const witness = await createUser(app)
  await sql`delete from service_clients where id = ${ghost.id}`
  const statuses: Record<string, number> = {}
  for (const route of PRIVATE_ROUTES) {
    const response = await send(app, route, ghost, { authorization: ghost.authorization })
    statuses[`${route.method} ${route.path}`] = response.statusCode
    t.ok(response.statusCode < 500, `${route.method} ${route.path} for a deleted client is not a 5xx (got ${response.statusCode})`)
    // User-only routes refuse every client token, existing or not; the client routes find nothing of it.
    if (route.clients !== true) assertProblem(t, response, 403, `${route.method} ${route.path} for a deleted client`)
  }
  t.comment(`statuses for a deleted client's token: ${JSON.stringify(statuses)}`)
  t.equal(statuses['GET /transactions'], 200, 'GET /transactions is its (empty) list')
  t.equal(statuses['GET /transactions/{id}'], 404, 'GET /transactions/:id finds nothing')
  for (const kind of ['deposit', 'withdrawal'] as const) {
    const response = await app.inject({
      method: 'POST', url: '/transactions', headers: { authorization: ghost.authorization, 'idempotency-key': `ghost-${kind}` }, payload: fundingBody(kind, witness.id, 1)
    })
    // post_transaction() refuses a client that is not (or no longer) in service_clients (LDG06).
    assertProblem(t, response, 401, `a deleted client's ${kind}`)
  }
  const [{ count } = { count: -1 }] = await sql<{ count: number }[]>`
    select (select count(*) from transactions where client_id = ${ghost.id} or to_user_id = ${witness.id} or from_user_id = ${witness.id})
         + (select count(*) from idempotency_keys where principal_id = ${ghost.id}) as count`
  t.equal(Number(count), 0, 'nothing was written for the deleted client')
})

t.test('password guessing from one address hits 429; the account owner elsewhere is unaffected', async (t) => {
  const app = await buildTestApp(t, { RATE_LIMIT_PUBLIC_CAPACITY: '5', RATE_LIMIT_PUBLIC_REFILL_PER_S: '0.01' })
  const recorder = new ResponseRecorder(app)
  const victim = await createUser(app, { remoteAddress: randomTestIp() })
  const attacker = randomTestIp()
  const statuses: number[] = []
  let firstLimited
  for (let i = 0; i < 12; i++) {
    const response = await app.inject({ method: 'POST', url: '/auth/token', remoteAddress: attacker, payload: { email: victim.email, password: `guess number ${i} for this account` } })
    statuses.push(response.statusCode)
    if (response.statusCode === 429 && firstLimited === undefined) firstLimited = response
  }
  t.same(statuses.slice(0, 5), [401, 401, 401, 401, 401], 'five guesses are answered')
  t.ok(statuses.slice(5).every((s) => s === 429), `every later guess is 429 (${statuses.join(',')})`)
  t.ok(firstLimited !== undefined, 'a 429 was seen')
  if (firstLimited !== undefined) {
    assertProblem(t, firstLimited, 429, 'brute force')
    t.match(String(firstLimited.headers['retry-after']), /^\d+$/, 'Retry-After in whole seconds')
    t.equal(firstLimited.headers['ratelimit-limit'], '5')
    t.equal(firstLimited.headers['ratelimit-remaining'], '0')
  }
  // Even the right password is refused from the limited address: the limiter stops the guessing, not just failures.
  const right = await app.inject({ method: 'POST', url: '/auth/token', remoteAddress: attacker, payload: { email: victim.email, password: victim.password } })
  t.equal(right.statusCode, 429, 'the limited address gets 429 even with the right password')
  t.notOk('access_token' in (right.json() as object), 'and no token')
  // Spraying one password over many accounts from one address is the same bucket.
  const sprayer = randomTestIp()
  const spray: number[] = []
  for (let i = 0; i < 8; i++) {
    spray.push((await app.inject({ method: 'POST', url: '/auth/token', remoteAddress: sprayer, payload: { email: `target-${i}@example.test`, password: 'Summer2025!Summer2025!' } })).statusCode)
  }
  t.same(spray, [401, 401, 401, 401, 401, 429, 429, 429], 'password spraying across accounts is limited per address')
  const spoofed = await app.inject({ method: 'POST', url: '/auth/token', remoteAddress: attacker, headers: { 'x-forwarded-for': randomTestIp(), 'x-real-ip': randomTestIp() }, payload: { email: victim.email, password: 'one more guess, spoofed' } })
  t.equal(spoofed.statusCode, 429, 'X-Forwarded-For from an untrusted peer does not reset the bucket')
  const owner = await recorder.send(null, { method: 'POST', url: '/auth/token', remoteAddress: randomTestIp(), payload: { email: victim.email, password: victim.password } })
  t.equal(owner.statusCode, 200, 'the owner logs in from another address')
  // The owner moves money with that token. Funded by a client whose token is signed directly: this app's public
  // limit is 5 per address, and the token endpoint's bucket for 127.0.0.1 is shared with the other tests.
  const payee = await createUser(app, { remoteAddress: randomTestIp() })
  await fund(app, victim, 1, TEST_CURRENCY, { client: await issueTestClient(app) })
  const withToken = await app.inject({
    method: 'POST',
    url: '/transactions',
    headers: { authorization: `Bearer ${owner.json().access_token}`, 'idempotency-key': 'after-brute-force' },
    payload: { kind: 'transfer', amount: 1, currency: TEST_CURRENCY, toUserId: payee.id }
  })
  t.equal(withToken.statusCode, 201, 'and that token works')
  t.equal(withToken.json().fromUserId, victim.id, 'for the owner')
  recorder.assertNoLeaks(t, [victim, payee])
})
