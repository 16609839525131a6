import t from 'tap'
import { buildTestApp, createUser, dbSpans, injectTraced, testSql, uniqueEmail } from '../../helper.ts'

const password = 'a sufficiently long password'

t.test('signup returns the user without any secret, and stores only a salted hash', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const email = uniqueEmail('Signup').replace('signup', 'SignUp')
  const response = await app.inject({ method: 'POST', url: '/users', payload: { email, name: 'Ada', password } })
  t.equal(response.statusCode, 201)
  const body = response.json()
  t.same(Object.keys(body).sort(), ['avatarUrl', 'createdAt', 'email', 'id', 'name'])
  t.equal(body.email, email.toLowerCase())
  t.equal(response.headers.location, `/users/${body.id}`)
  const [row] = await sql`select email, password_hash from users where id = ${body.id}`
  t.equal(row?.email, email.toLowerCase())
  t.match(row?.password_hash, /^scrypt\$\d+\$8\$1\$/)
  t.notOk(String(row?.password_hash).includes(password))
})

t.test('a taken email is 409, also when it differs only in case', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const email = uniqueEmail('dup')
  t.equal((await app.inject({ method: 'POST', url: '/users', payload: { email, name: 'One', password } })).statusCode, 201)
  for (const again of [email, email.toUpperCase()]) {
    const response = await app.inject({ method: 'POST', url: '/users', payload: { email: again, name: 'Two', password } })
    t.equal(response.statusCode, 409, again)
    t.equal(response.json().type, 'https://ledger-api.dev/problems/email_taken')
  }
  const [{ count }] = await sql`select count(*)::int as count from users where email = ${email}` as unknown as [{ count: number }]
  t.equal(count, 1)
})

t.test('signup validation names the bad fields', async (t) => {
  const app = await buildTestApp(t)
  const missing = await app.inject({ method: 'POST', url: '/users', payload: { email: uniqueEmail(), password } })
  t.equal(missing.statusCode, 400)
  t.same(missing.json().errors.map((e: { path: string }) => e.path), ['name'])
  const short = await app.inject({ method: 'POST', url: '/users', payload: { email: uniqueEmail(), name: 'x', password: 'short' } })
  t.equal(short.statusCode, 400)
  t.same(short.json().errors.map((e: { path: string }) => e.path), ['password'])
  const badEmail = await app.inject({ method: 'POST', url: '/users', payload: { email: 'not-an-email', name: 'x', password } })
  t.same(badEmail.json().errors.map((e: { path: string }) => e.path), ['email'])
  const massAssignment = await app.inject({ method: 'POST', url: '/users', payload: { email: uniqueEmail(), name: 'x', password, tier: 'pro' } })
  t.equal(massAssignment.statusCode, 400, 'tier cannot be chosen at signup')
})

t.test('login: success, wrong password and unknown email', async (t) => {
  const app = await buildTestApp(t)
  const user = await createUser(app)
  const ok = await app.inject({ method: 'POST', url: '/auth/token', payload: { email: user.email.toUpperCase(), password: user.password } })
  t.equal(ok.statusCode, 200)
  const token = ok.json()
  t.equal(token.token_type, 'Bearer')
  t.equal(token.expires_in, 900)
  const claims = app.jwt.decode<Record<string, unknown>>(token.access_token)
  t.equal(claims?.sub, user.id)
  t.equal(claims?.tier, 'standard')
  t.equal(claims?.iss, 'ledger-api')
  t.equal(claims?.aud, 'ledger-api')
  t.equal(Number(claims?.exp) - Number(claims?.iat), 900)

  const wrongPassword = await app.inject({ method: 'POST', url: '/auth/token', payload: { email: user.email, password: 'not the password at all' } })
  const unknownEmail = await app.inject({ method: 'POST', url: '/auth/token', payload: { email: uniqueEmail('nobody'), password: user.password } })
  t.equal(wrongPassword.statusCode, 401)
  t.equal(unknownEmail.statusCode, 401)
  t.same(wrongPassword.json(), unknownEmail.json(), 'the two failures are indistinguishable')
})

t.test('GET /users/me and /users/:id show email only to its owner', async (t) => {
  const app = await buildTestApp(t)
  const alice = await createUser(app, { name: 'Alice' })
  const bob = await createUser(app, { name: 'Bob' })
  const me = await app.inject({ method: 'GET', url: '/users/me', headers: { authorization: alice.authorization } })
  t.equal(me.statusCode, 200)
  t.equal(me.json().email, alice.email)
  const own = await app.inject({ method: 'GET', url: `/users/${alice.id}`, headers: { authorization: alice.authorization } })
  t.equal(own.json().email, alice.email)
  const other = await app.inject({ method: 'GET', url: `/users/${alice.id}`, headers: { authorization: bob.authorization } })
  t.equal(other.statusCode, 200)
  t.equal(other.json().name, 'Alice')
  t.notOk('email' in other.json(), 'no email of another user')
  t.notMatch(other.body, /scrypt|password/)
  const unknown = await app.inject({ method: 'GET', url: '/users/00000000-0000-4000-8000-000000000000', headers: { authorization: bob.authorization } })
  t.equal(unknown.statusCode, 404)
  const badId = await app.inject({ method: 'GET', url: "/users/' OR 1=1 --", headers: { authorization: bob.authorization } })
  t.equal(badId.statusCode, 400)
})

t.test('cache-aside: a miss queries once, a hit not at all, PATCH invalidates; TTL has jitter', async (t) => {
  const app = await buildTestApp(t)
  const alice = await createUser(app, { name: 'Alice' })
  const bob = await createUser(app, { name: 'Bob' })
  const get = () => injectTraced(app, { method: 'GET', url: `/users/${alice.id}`, headers: { authorization: bob.authorization } })

  const miss = await get()
  t.equal(miss.response.statusCode, 200)
  t.equal(dbSpans(miss.spans).length, 1, 'miss: one query')
  const hit = await get()
  t.equal(hit.response.statusCode, 200)
  t.equal(dbSpans(hit.spans).length, 0, 'hit: no query')
  t.same(hit.response.json(), miss.response.json())

  const ttl = await app.redis.ttl(`cache:user:${alice.id}`)
  t.ok(ttl >= 299 && ttl <= 330, `ttl ${ttl} is 300 s plus up to 10 %`)
  const cached = await app.redis.get(`cache:user:${alice.id}`)
  t.notMatch(String(cached), /@|scrypt|email/, 'the cached value holds public fields only')

  const patch = await app.inject({ method: 'PATCH', url: `/users/${alice.id}`, headers: { authorization: alice.authorization }, payload: { name: 'Alice Renamed', avatarUrl: 'https://example.com/a.png' } })
  t.equal(patch.statusCode, 200)
  t.equal(patch.json().name, 'Alice Renamed')
  const after = await get()
  t.equal(after.response.json().name, 'Alice Renamed', 'the next read sees the change')
  t.equal(after.response.json().avatarUrl, 'https://example.com/a.png')
  t.equal(dbSpans(after.spans).length, 1, 'after invalidation it is a miss again')
})

t.test('100 concurrent reads of a cold key send exactly one query', async (t) => {
  const app = await buildTestApp(t)
  const alice = await createUser(app)
  const bob = await createUser(app)
  const results = await Promise.all(Array.from({ length: 100 }, () =>
    injectTraced(app, { method: 'GET', url: `/users/${alice.id}`, headers: { authorization: bob.authorization } })))
  t.ok(results.every((r) => r.response.statusCode === 200))
  t.equal(results.reduce((sum, r) => sum + dbSpans(r.spans).length, 0), 1)
})

t.test('PATCH of another user is 403 and changes nothing', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const alice = await createUser(app, { name: 'Alice' })
  const bob = await createUser(app)
  const response = await app.inject({ method: 'PATCH', url: `/users/${alice.id}`, headers: { authorization: bob.authorization }, payload: { name: 'Hacked' } })
  t.equal(response.statusCode, 403)
  const [row] = await sql`select name from users where id = ${alice.id}`
  t.equal(row?.name, 'Alice')
  const empty = await app.inject({ method: 'PATCH', url: `/users/${alice.id}`, headers: { authorization: alice.authorization }, payload: {} })
  t.equal(empty.statusCode, 400)
  const badUrl = await app.inject({ method: 'PATCH', url: `/users/${alice.id}`, headers: { authorization: alice.authorization }, payload: { avatarUrl: 'javascript:alert(1)' } })
  t.equal(badUrl.statusCode, 400)
})

t.test('injection payloads are stored as plain text or refused, and the table survives', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const payloads = ["' OR 1=1 --", "test'; DROP TABLE users;--", '$1', 'Robert"); DELETE FROM users; --']
  const [{ before }] = await sql`select count(*)::int as before from users` as unknown as [{ before: number }]
  let created = 0
  for (const payload of payloads) {
    const signup = await app.inject({ method: 'POST', url: '/users', payload: { email: uniqueEmail(), name: payload, password } })
    t.equal(signup.statusCode, 201, `name ${payload} stored`)
    t.equal(signup.json().name, payload, 'byte for byte')
    created++
    const asEmail = await app.inject({ method: 'POST', url: '/users', payload: { email: payload, name: 'x', password } })
    t.equal(asEmail.statusCode, 400, `email ${payload} refused`)
    const login = await app.inject({ method: 'POST', url: '/auth/token', payload: { email: `a${Date.now()}@example.test`, password: payload } })
    t.equal(login.statusCode, 401, 'password payload is just a wrong password')
  }
  const [{ after }] = await sql`select count(*)::int as after from users` as unknown as [{ after: number }]
  t.ok(after >= before + created, 'users table intact')
})

t.test('PUT /users/me/password: 204, every session of the user ends on every process within a second', async (t) => {
  const [one, two] = [await buildTestApp(t), await buildTestApp(t)]
  const sql = testSql(t)
  const user = await createUser(one)
  const second = await one.inject({ method: 'POST', url: '/auth/token', payload: { email: user.email, password: user.password } })
  const sessions = [user.authorization, `Bearer ${second.json().access_token as string}`]
  const bystander = await createUser(one)
  const me = (app: typeof one, authorization: string) => app.inject({ method: 'GET', url: '/users/me', headers: { authorization } })

  const changed = await one.inject({
    method: 'PUT',
    url: '/users/me/password',
    headers: { authorization: user.authorization },
    payload: { currentPassword: user.password, newPassword: 'a brand new long password' }
  })
  t.equal(changed.statusCode, 204)
  const started = Date.now()
  const refused = async (app: typeof one) => {
    while (Date.now() - started < 1000) {
      if ((await Promise.all(sessions.map((authorization) => me(app, authorization)))).every((r) => r.statusCode === 401)) return true
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
    return false
  }
  t.same(await Promise.all([refused(one), refused(two)]), [true, true], 'both sessions\' tokens are refused by both processes within 1 s')
  t.equal((await one.inject({ method: 'POST', url: '/auth/token', payload: { grant_type: 'refresh_token', refresh_token: user.refreshToken } })).statusCode, 400,
    'the refresh tokens too')
  const [ended] = await sql<{ reasons: string[] }[]>`select array_agg(distinct end_reason) as reasons from sessions where user_id = ${user.id}`
  t.same(ended?.reasons, ['password_changed'])
  t.equal((await one.inject({ method: 'POST', url: '/auth/token', payload: { email: user.email, password: user.password } })).statusCode, 401, 'the old password is refused')
  const fresh = await one.inject({ method: 'POST', url: '/auth/token', payload: { email: user.email, password: 'a brand new long password' } })
  t.equal(fresh.statusCode, 200, 'the new one logs in')
  t.equal((await me(two, `Bearer ${fresh.json().access_token as string}`)).statusCode, 200, 'and its session works everywhere')
  t.equal((await me(two, bystander.authorization)).statusCode, 200, 'other users are untouched')
})

t.test('PUT /users/me/password with a wrong current password: 403, nothing changes, sessions stay valid', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const user = await createUser(app)
  const [before] = await sql<{ password_hash: string }[]>`select password_hash from users where id = ${user.id}`
  const response = await app.inject({
    method: 'PUT',
    url: '/users/me/password',
    headers: { authorization: user.authorization },
    payload: { currentPassword: 'not my password at all', newPassword: 'a brand new long password' }
  })
  t.equal(response.statusCode, 403)
  t.equal(response.json().detail, 'The current password is wrong.')
  const [after] = await sql<{ password_hash: string }[]>`select password_hash from users where id = ${user.id}`
  t.equal(after?.password_hash, before?.password_hash, 'the hash is unchanged')
  await app.revocations.refresh()
  t.equal((await app.inject({ method: 'GET', url: '/users/me', headers: { authorization: user.authorization } })).statusCode, 200, 'the session still works')
  t.equal((await app.inject({ method: 'POST', url: '/auth/token', payload: { email: user.email, password: user.password } })).statusCode, 200, 'the password still works')
})

t.test('PUT /users/me/password validates like signup', async (t) => {
  const app = await buildTestApp(t)
  const user = await createUser(app)
  const change = (payload: unknown) => app.inject({ method: 'PUT', url: '/users/me/password', headers: { authorization: user.authorization }, payload: payload as object })
  const short = await change({ currentPassword: user.password, newPassword: 'too short' })
  t.equal(short.statusCode, 400)
  t.match(short.json().errors, [{ path: 'newPassword', message: 'must be at least 12 characters' }])
  t.equal((await change({ currentPassword: user.password, newPassword: 'x'.repeat(257) })).statusCode, 400)
  t.equal((await change({ currentPassword: user.password })).statusCode, 400)
  t.equal((await change({ currentPassword: user.password, newPassword: 'a brand new long password', userId: user.id })).statusCode, 400, 'no extra fields')
  t.equal((await app.inject({ method: 'PUT', url: '/users/me/password', payload: { currentPassword: user.password, newPassword: 'a brand new long password' } })).statusCode, 401, 'a token is needed')
  t.equal((await app.inject({ method: 'GET', url: '/users/me', headers: { authorization: user.authorization } })).statusCode, 200, 'nothing ended')
})
