// Sessions and logins: stolen refresh tokens (replay), ended sessions, tokens used in the wrong place, a
// removed user, password guessing against one account from many addresses or one IPv6 /64, and a login flood.
import { randomBytes } from 'node:crypto'
import t from 'tap'
import type { App } from '../../app.ts'
import { buildTestApp, createUser, ownerSql, testSql, type TestUser, uniqueEmail, within } from '../helper.ts'
import { assertOAuthError, assertProblem, randomTestIp } from './support.ts'

const me = (app: App, authorization: string) => app.inject({ method: 'GET', url: '/users/me', headers: { authorization } })
const refresh = (app: App, refreshToken: string, remoteAddress = randomTestIp()) =>
  app.inject({ method: 'POST', url: '/auth/token', remoteAddress, payload: { grant_type: 'refresh_token', refresh_token: refreshToken } })
const login = (app: App, email: string, password: string, remoteAddress = randomTestIp()) =>
  app.inject({ method: 'POST', url: '/auth/token', remoteAddress, payload: { email, password } })

t.test('a replayed refresh token ends the whole session: the pair it was exchanged for stops working too', async (t) => {
  const [one, two] = [await buildTestApp(t), await buildTestApp(t)]
  const sql = testSql(t)
  const user = await createUser(one)
  const rotated = await refresh(one, user.refreshToken)
  t.equal(rotated.statusCode, 200, 'the first use rotates')
  const pair = rotated.json() as { access_token: string, refresh_token: string }
  t.not(pair.refresh_token, user.refreshToken, 'a new refresh token')
  t.equal((await me(two, `Bearer ${pair.access_token}`)).statusCode, 200, 'the new access token works on another process')

  // The attacker (or the victim, whichever came second) presents the old token again.
  const replay = await refresh(one, user.refreshToken)
  assertOAuthError(t, replay, 400, 'invalid_grant', 'replay')
  t.notOk('access_token' in (replay.json() as object), 'no token for the replay')
  t.equal((await me(one, `Bearer ${pair.access_token}`)).statusCode, 401, 'the rotated access token is refused at once on the process that saw the replay')
  const elsewhere = await within(1000, async () => (await me(two, `Bearer ${pair.access_token}`)).statusCode === 401)
  t.ok(elsewhere <= 1000, `and on the other process within 1 s (${elsewhere} ms)`)
  t.equal((await me(two, user.authorization)).statusCode, 401, 'the original access token too')
  assertOAuthError(t, await refresh(two, pair.refresh_token), 400, 'invalid_grant', 'the rotated refresh token is dead too')
  const [session] = await sql<{ ended_at: Date | null, end_reason: string | null }[]>`select ended_at, end_reason from sessions where id = ${user.sessionId}`
  t.equal(session?.end_reason, 'refresh_token_reused', 'the session is recorded as ended by a replay')
  const again = await login(one, user.email, user.password)
  t.equal(again.statusCode, 200, 'the user logs in again (a new session)')
  t.equal((await me(one, `Bearer ${again.json().access_token}`)).statusCode, 200)
})

t.test('two requests racing with one refresh token: one rotates, the other is a replay and ends the session', async (t) => {
  const app = await buildTestApp(t)
  const user = await createUser(app)
  const answers = await Promise.all([refresh(app, user.refreshToken), refresh(app, user.refreshToken)])
  t.same(answers.map((r) => r.statusCode).sort(), [200, 400])
  const winner = answers.find((r) => r.statusCode === 200)
  t.equal((await me(app, `Bearer ${winner?.json().access_token}`)).statusCode, 401, 'the winner\'s session ended with the replay')
})

t.test('a refresh token of an ended session is refused', async (t) => {
  const app = await buildTestApp(t)
  const user = await createUser(app)
  t.equal((await app.inject({ method: 'POST', url: '/auth/revoke', headers: { authorization: user.authorization } })).statusCode, 204)
  assertOAuthError(t, await refresh(app, user.refreshToken), 400, 'invalid_grant', 'refresh after logout')
  assertProblem(t, await me(app, user.authorization), 401, 'the access token after logout')
})

t.test('a refresh token is not an access token, and an access token is not a refresh token', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const user = await createUser(app)
  assertProblem(t, await me(app, `Bearer ${user.refreshToken}`), 401, 'a refresh token as bearer')
  assertOAuthError(t, await refresh(app, user.token), 400, 'invalid_grant', 'an access token as refresh token')
  for (const junk of ['lrt_', `lrt_${'A'.repeat(43)}`, `${user.refreshToken}x`, user.refreshToken.toUpperCase(), 'x'.repeat(512)]) {
    assertOAuthError(t, await refresh(app, junk), 400, 'invalid_grant', `junk refresh token ${junk.slice(0, 12)}…`)
  }
  assertOAuthError(t, await refresh(app, 'x'.repeat(513)), 400, 'invalid_request', 'an over-long refresh token')
  // None of those ended the session or used the token.
  t.equal((await me(app, user.authorization)).statusCode, 200, 'the session is still alive')
  const [row] = await sql<{ used: number }[]>`select count(*)::int as used from refresh_tokens where session_id = ${user.sessionId} and used_at is not null`
  t.equal(row?.used, 0, 'the real refresh token is unused')
  // Parameters the endpoint does not use are ignored (RFC 6749 section 3.2), a public client's client_id included.
  const extra = await app.inject({ method: 'POST', url: '/auth/token', payload: { grant_type: 'refresh_token', refresh_token: user.refreshToken, email: user.email, client_id: 'some-public-client', resource: 'https://api.example.test' } })
  t.equal(extra.statusCode, 200, 'and still rotates, whatever else the request carries')
})

t.test('an expired refresh token is refused', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const user = await createUser(app)
  await sql`update sessions set expires_at = now() - interval '1 second' where id = ${user.sessionId}`
  assertOAuthError(t, await refresh(app, user.refreshToken), 400, 'invalid_grant', 'expired')
})

t.test('the tokens of a removed user are 401, not 500, on every process within a second', async (t) => {
  // There is no delete route; the owner removes a user without money or posts. A trigger revokes `user:<id>`.
  const [one, two] = [await buildTestApp(t), await buildTestApp(t)]
  const ghost = await createUser(one)
  t.equal((await me(two, ghost.authorization)).statusCode, 200)
  await ownerSql()`delete from users where id = ${ghost.id}`
  const took = await Promise.all([one, two].map((app) => within(1000, async () => (await me(app, ghost.authorization)).statusCode === 401)))
  t.ok(took.every((ms) => ms <= 1000), `both processes refuse the token within 1 s (${took.join(' ms, ')} ms)`)
  for (const app of [one, two]) {
    const answers = await Promise.all([
      me(app, ghost.authorization),
      app.inject({ method: 'GET', url: '/balances', headers: { authorization: ghost.authorization } }),
      app.inject({ method: 'PUT', url: '/users/me/password', headers: { authorization: ghost.authorization }, payload: { currentPassword: ghost.password, newPassword: 'another long password' } }),
      app.inject({ method: 'POST', url: '/auth/revoke', headers: { authorization: ghost.authorization } })
    ])
    for (const answer of answers) assertProblem(t, answer, 401, 'removed user')
  }
  assertOAuthError(t, await refresh(one, ghost.refreshToken), 400, 'invalid_grant', 'the refresh token of a removed user')
  assertOAuthError(t, await login(one, ghost.email, ghost.password), 401, 'invalid_grant', 'and the login')
})

t.test('11 failed logins for one account from 11 addresses, then the right password: 429 until the window passes', async (t) => {
  const app = await buildTestApp(t)
  const user = await createUser(app)
  const statuses: number[] = []
  for (let i = 0; i < 11; i++) {
    // Each guess from a different /64, with the email's case varied: the count is per account, not per address.
    const email = i % 2 === 0 ? user.email.toUpperCase() : user.email
    statuses.push((await login(app, email, `wrong guess number ${i}`)).statusCode)
  }
  t.same(statuses, [...Array<number>(10).fill(401), 429], 'ten failures are answered, the eleventh is refused')
  const right = await login(app, user.email, user.password)
  assertOAuthError(t, right, 429, 'temporarily_unavailable', 'the right password during the lockout')
  t.notOk('access_token' in (right.json() as object), 'no token')
  const retryAfter = Number(right.headers['retry-after'])
  t.ok(retryAfter > 800 && retryAfter <= 900, `Retry-After is the rest of the 15 minute window (${retryAfter} s)`)
  t.equal(right.headers['ratelimit-limit'], '10')
  t.equal(right.headers['ratelimit-remaining'], '0')
  t.equal(right.headers['ratelimit-reset'], String(retryAfter))
  t.equal((await me(app, user.authorization)).statusCode, 200, 'sessions already open are not touched')
})

t.test('an unknown email is counted exactly like a known one, so the answers reveal nothing', async (t) => {
  const app = await buildTestApp(t)
  const known = await createUser(app)
  const unknown = uniqueEmail('nobody')
  const answers = async (email: string) => {
    const seen = []
    for (let i = 0; i < 11; i++) {
      const response = await login(app, email, `wrong guess number ${i}`)
      const { instance: _instance, ...body } = response.json() as Record<string, unknown>
      seen.push({ status: response.statusCode, body: JSON.stringify(body).replace(/retry in \d+ s/, 'retry in N s') })
    }
    return seen
  }
  t.same(await answers(unknown), await answers(known.email), 'the same statuses and bodies, in the same order')
})

t.test('the account window ends: after it the right password works again', async (t) => {
  const app = await buildTestApp(t, { LOGIN_MAX_FAILURES: '3', LOGIN_FAILURE_WINDOW_S: '1' })
  const user = await createUser(app)
  for (let i = 0; i < 3; i++) t.equal((await login(app, user.email, `wrong guess ${i}`)).statusCode, 401)
  t.equal((await login(app, user.email, user.password)).statusCode, 429)
  const took = await within(3000, async () => (await login(app, user.email, user.password)).statusCode === 200)
  t.ok(took < 3000, `the login works once the window passed (${took} ms)`)
})

t.test('the token endpoint counts an IPv6 /64 as one client', async (t) => {
  const app = await buildTestApp(t, { RATE_LIMIT_PUBLIC_CAPACITY: '5', RATE_LIMIT_PUBLIC_REFILL_PER_S: '0.01' })
  const victim = await createUser(app)
  const prefix = `2001:db8:${randomBytes(2).toString('hex')}:${randomBytes(2).toString('hex')}`
  const statuses: number[] = []
  for (let i = 0; i < 11; i++) {
    // 11 addresses of one /64, written the ways a socket may show them.
    const address = i % 3 === 0 ? `${prefix}:0:0:0:${(i + 1).toString(16)}` : i % 3 === 1 ? `${prefix}::${i + 1}` : `${prefix.toUpperCase()}:${i + 1}::1`
    statuses.push((await login(app, victim.email, `guess ${i} from one network`, address)).statusCode)
  }
  t.same(statuses, [401, 401, 401, 401, 401, 429, 429, 429, 429, 429, 429], 'five guesses, then the /64 is limited')
  const right = await login(app, victim.email, victim.password, `${prefix}::beef`)
  assertOAuthError(t, right, 429, 'temporarily_unavailable', 'the right password from the same /64')
  t.equal(right.headers['ratelimit-limit'], '5', 'the per-address limit answered')
  t.equal((await login(app, victim.email, victim.password, randomTestIp())).statusCode, 200, 'another network is not affected')
})

t.test('a flood of 200 concurrent logins: 503 with Retry-After beyond the hashing queue, no crash, other routes answer', async (t) => {
  // A cost high enough that hashes overlap; two at a time and ten waiting.
  const app = await buildTestApp(t, { PASSWORD_HASH_COST: '16384', PASSWORD_HASH_CONCURRENCY: '2', PASSWORD_HASH_QUEUE: '10' })
  const reader: TestUser = await createUser(app)
  const flood = Array.from({ length: 200 }, (_, i) => login(app, uniqueEmail(`flood-${i}`), 'not the password of anyone'))
  const during = await Promise.all([me(app, reader.authorization), app.inject({ method: 'GET', url: '/health/live' })])
  const answers = await Promise.all(flood)
  const count = (status: number) => answers.filter((r) => r.statusCode === status).length
  t.equal(count(401) + count(503), 200, `only 401 and 503 (${count(401)} and ${count(503)})`)
  t.ok(count(401) >= 12, 'the two running and ten queued were answered')
  t.ok(count(503) >= 150, 'most of the flood was turned away at once')
  const busy = answers.find((r) => r.statusCode === 503)
  if (busy !== undefined) {
    assertOAuthError(t, busy, 503, 'temporarily_unavailable', 'flood')
    t.equal(busy.headers['retry-after'], '1')
  }
  t.same(during.map((r) => r.statusCode), [200, 200], 'a user route and liveness answered during the flood')
  t.equal(app.passwords.queue.running + app.passwords.queue.waiting, 0, 'the queue drained')
  t.equal((await login(app, reader.email, reader.password)).statusCode, 200, 'a login works after it')
})

t.test('a stolen access token buys no unlimited guesses: wrong current passwords count against the account', async (t) => {
  const app = await buildTestApp(t)
  const user = await createUser(app)
  const change = (currentPassword: string) => app.inject({
    method: 'PUT', url: '/users/me/password', headers: { authorization: user.authorization }, payload: { currentPassword, newPassword: 'the thief\'s new password' }
  })
  const statuses: number[] = []
  for (let i = 0; i < 11; i++) statuses.push((await change(`guess number ${i}`)).statusCode)
  t.same(statuses, [...Array<number>(10).fill(403), 429], 'ten wrong guesses, then the account is locked')
  const right = await change(user.password)
  assertProblem(t, right, 429, 'the right current password while locked')
  t.ok(Number(right.headers['retry-after']) > 0)
  t.equal((await login(app, user.email, user.password)).statusCode, 429, 'the login of that account is locked too')
  t.equal((await me(app, user.authorization)).statusCode, 200, 'nothing ended, nothing changed')
})
