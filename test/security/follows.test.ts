// Abuse of follows, posts and names: a follow flood is bounded by the per-principal limiter and costs the
// service a bounded backfill per follow; names and post bodies refuse the invisible impersonation tricks; cursors of
// the follow lists are bound to their list and their caller.
import { randomUUID } from 'node:crypto'
import t from 'tap'
import { FEED_JOB } from '../../routes/social/feed-jobs.ts'
import { buildTestApp, createUser, drainJobs, ownerSql, testSql, uniqueEmail } from '../helper.ts'

/** ASCII written in Unicode tag characters (U+E0020–U+E007E), invisible in most renderers. */
const tag = (ascii: string) => [...ascii].map((c) => String.fromCodePoint(0xE0000 + (c.codePointAt(0) ?? 0))).join('')

t.test('a follow flood stops at the caller\'s rate limit, and writes exactly what was admitted', async (t) => {
  const app = await buildTestApp(t, { RATE_LIMIT_STANDARD_CAPACITY: '10', RATE_LIMIT_STANDARD_REFILL_PER_S: '0.001' })
  const sql = testSql(t)
  const [flooder] = await ownerSql()<{ id: string }[]>`
    insert into users (email, name, password_hash) values (${uniqueEmail('flooder')}, 'Flooder', '!') returning id`
  const token = (await app.issueToken({ id: flooder!.id, tier: 'standard', sessionId: randomUUID() })).accessToken
  const targets = await ownerSql()<{ id: string }[]>`
    insert into users (email, name, password_hash)
    select 'flood-target-' || gen_random_uuid() || '@example.test', 'Target', '!' from generate_series(1, 30)
    returning id`

  const responses = await Promise.all(targets.map((target) =>
    app.inject({ method: 'PUT', url: `/users/me/following/${target.id}`, headers: { authorization: `Bearer ${token}` } })))
  const admitted = responses.filter((r) => r.statusCode === 204).length
  const limited = responses.filter((r) => r.statusCode === 429)
  t.equal(admitted, 10, 'the bucket\'s capacity')
  t.equal(limited.length, 20)
  t.ok(Number(limited[0]!.headers['retry-after']) >= 1, 'Retry-After on the 429')
  t.equal(limited[0]!.headers['ratelimit-limit'], '10')
  const [{ follows, jobs } = { follows: -1, jobs: -1 }] = await sql<{ follows: number, jobs: number }[]>`
    select (select count(*)::int from follows where follower_id = ${flooder!.id}) as follows,
           (select count(*)::int from jobs where kind = ${FEED_JOB.backfill} and payload->>'followerId' = ${flooder!.id}) as jobs`
  t.same({ follows, jobs }, { follows: 10, jobs: 10 }, 'one follow and one bounded backfill per admitted request, nothing for refused ones')
  await drainJobs(app, { kinds: Object.values(FEED_JOB), matching: [{ followerId: flooder!.id }] })

  const unfollow = await app.inject({ method: 'DELETE', url: `/users/me/following/${targets[0]!.id}`, headers: { authorization: `Bearer ${token}` } })
  t.equal(unfollow.statusCode, 429, 'unfollowing and reading the lists draw on the same bucket')
  const post = await app.inject({ method: 'POST', url: '/posts', headers: { authorization: `Bearer ${token}` }, payload: { body: 'spam' } })
  t.equal(post.statusCode, 429, 'and so does posting')
})

t.test('a backfill brings at most 20 posts, however many the followee wrote', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const prolific = await createUser(app)
  const reader = await createUser(app)
  await sql`insert into posts (author_id, body) select ${prolific.id}, 'post ' || g from generate_series(1, 500) g`
  t.equal((await app.inject({ method: 'PUT', url: `/users/me/following/${prolific.id}`, headers: { authorization: reader.authorization } })).statusCode, 204)
  await drainJobs(app, { kinds: Object.values(FEED_JOB), matching: [{ followerId: reader.id }] })
  const [{ count } = { count: -1 }] = await sql<{ count: number }[]>`select count(*)::int as count from feed_items where feed_user_id = ${reader.id}`
  t.equal(count, 20)
})

t.test('names refuse bidirectional overrides and invisible characters, on signup and on PATCH, field by field', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const user = await createUser(app, { name: 'Honest' })
  const tricks: Record<string, string> = {
    'right-to-left override': 'Ledger \u202eSupport',
    'left-to-right embedding': '\u202aLedger Support',
    'pop directional formatting': 'Ledger Support\u202c',
    'right-to-left isolate': 'Ledger \u2067Support\u2069',
    'right-to-left mark': 'Ledger\u200f Support',
    'arabic letter mark': 'Ledger\u061c Support',
    'zero-width space': 'Ledger\u200bSupport',
    'zero-width joiner between letters': 'Led\u200dger Support',
    'zero-width non-joiner between Latin letters': 'Led\u200cger Support',
    'word joiner': 'Ledger\u2060 Support',
    'invisible separator': 'Ledger\u2063Support',
    'byte order mark inside': 'Ledger\ufeffSupport',
    'soft hyphen': 'Led\u00adger Support',
    'tag characters': 'Ledger Support\u{E0020}\u{E0041}',
    'hidden text in tags after a black flag': `Ledger Support \u{1F3F4}${tag('send funds to 42')}\u{E007F}`,
    'a subdivision flag that is not RGI (California)': `Ledger \u{1F3F4}${tag('usca')}\u{E007F}`,
    'an RGI flag with one tag more': `Ledger \u{1F3F4}${tag('gbwlsx')}\u{E007F}`,
    'hangul filler (a blank-looking name)': '\u3164',
    'mongolian vowel separator': 'Ledger\u180eSupport'
  }
  for (const [label, name] of Object.entries(tricks)) {
    const signup = await app.inject({ method: 'POST', url: '/users', payload: { email: uniqueEmail('trick'), name, password: 'correct horse battery' } })
    t.equal(signup.statusCode, 400, `signup: ${label}`)
    t.same(signup.json().errors?.map((e: { path: string }) => e.path), ['name'], `signup: ${label} names the field`)
    const patch = await app.inject({ method: 'PATCH', url: `/users/${user.id}`, headers: { authorization: user.authorization }, payload: { name } })
    t.equal(patch.statusCode, 400, `PATCH: ${label}`)
    t.same(patch.json().errors?.map((e: { path: string }) => e.path), ['name'])
    const post = await app.inject({ method: 'POST', url: '/posts', headers: { authorization: user.authorization }, payload: { body: `from ${name}` } })
    t.equal(post.statusCode, 400, `post body: ${label}`)
  }
  const [row] = await sql<{ name: string }[]>`select name from users where id = ${user.id}`
  t.equal(row?.name, 'Honest', 'the name never changed')

  // Where such a character is how the text is written, it stays allowed.
  for (const name of ['Ada 👩‍💻', 'Pride 🏳️‍🌈', 'فاطمه‌زهرا', 'Scot 🏴\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F}', 'Keycap 1️⃣',
    `Eng \u{1F3F4}${tag('gbeng')}\u{E007F}`, `Cymru \u{1F3F4}${tag('gbwls')}\u{E007F}`]) {
    const patch = await app.inject({ method: 'PATCH', url: `/users/${user.id}`, headers: { authorization: user.authorization }, payload: { name } })
    t.equal(patch.statusCode, 200, `allowed: ${name}`)
    t.equal(patch.json().name, name)
  }
})

t.test('combining marks are bounded per character in names and posts: a 400 naming the field, nothing written', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const user = await createUser(app, { name: 'Honest' })
  const message = 'must not stack more than 30 combining marks on one character'
  const stacked = `Z${'\u0301\u0316'.repeat(15)}\u0334 Support` // 31 marks on the Z
  const signup = await app.inject({ method: 'POST', url: '/users', payload: { email: uniqueEmail('marks'), name: stacked, password: 'correct horse battery' } })
  t.equal(signup.statusCode, 400)
  t.same(signup.json().errors, [{ path: 'name', message }])
  const patch = await app.inject({ method: 'PATCH', url: `/users/${user.id}`, headers: { authorization: user.authorization }, payload: { name: stacked } })
  t.equal(patch.statusCode, 400)
  t.same(patch.json().errors, [{ path: 'name', message }])
  // The review's post: 4,999 marks on one letter.
  const post = await app.inject({ method: 'POST', url: '/posts', headers: { authorization: user.authorization }, payload: { body: `a${'\u0301'.repeat(4999)}` } })
  t.equal(post.statusCode, 400)
  t.same(post.json().errors, [{ path: 'body', message }])
  const [row] = await sql<{ name: string, posts: number }[]>`select name, (select count(*)::int from posts where author_id = ${user.id}) as posts from users where id = ${user.id}`
  t.same(row, { name: 'Honest', posts: 0 }, 'nothing changed')
  // The bound itself is text.
  const thirty = `Z${'\u0301\u0316'.repeat(15)} Support`
  const kept = await app.inject({ method: 'PATCH', url: `/users/${user.id}`, headers: { authorization: user.authorization }, payload: { name: thirty } })
  t.equal(kept.statusCode, 200)
  t.equal(kept.json().name, thirty)
})

t.test('follow-list cursors are bound to the list and the caller', async (t) => {
  const app = await buildTestApp(t)
  const [alice, bob, carol, dave] = [await createUser(app), await createUser(app), await createUser(app), await createUser(app)]
  for (const other of [bob, carol, dave]) await app.inject({ method: 'PUT', url: `/users/me/following/${other.id}`, headers: { authorization: alice.authorization } })
  for (const body of ['one', 'two']) await app.inject({ method: 'POST', url: '/posts', headers: { authorization: alice.authorization }, payload: { body } })
  const page = (await app.inject({ method: 'GET', url: '/users/me/following?limit=1', headers: { authorization: alice.authorization } })).json()
  const cursor = encodeURIComponent(page.nextCursor as string)
  const feedCursor = encodeURIComponent((await app.inject({ method: 'GET', url: '/feed?limit=1', headers: { authorization: alice.authorization } })).json().nextCursor as string)
  for (const [label, user, url] of [
    ["another user's following cursor", bob, `/users/me/following?cursor=${cursor}`],
    ['a following cursor on the followers list', alice, `/users/me/followers?cursor=${cursor}`],
    ['a feed cursor on the following list', alice, `/users/me/following?cursor=${feedCursor}`],
    ['a following cursor on the feed', alice, `/feed?cursor=${cursor}`]
  ] as const) {
    const response = await app.inject({ method: 'GET', url, headers: { authorization: user.authorization } })
    t.equal(response.statusCode, 400, label)
    t.same(response.json().errors?.map((e: { path: string }) => e.path), ['cursor'])
  }
  t.equal((await app.inject({ method: 'GET', url: `/users/me/following?cursor=${cursor}`, headers: { authorization: alice.authorization } })).statusCode, 200)
})
