import t from 'tap'
import type { App } from '../../../app.ts'
import { feedNPlusOneRoutes } from '../../feed-n-plus-one.ts'
import { buildTestApp, createUser, dbSpans, injectTraced, testSql, type TestUser } from '../../helper.ts'

type TestSql = ReturnType<typeof testSql>

interface PostView {
  id: string
  body: string
  createdAt: string
  author: { id: string, name: string, avatarUrl: string | null }
}

/** Authors straight into the table (no password, cannot log in): a feed test needs many authors, not logins. */
async function insertAuthors (sql: TestSql, count: number) {
  return sql<{ id: string, name: string }[]>`
    insert into users (email, name, password_hash)
    select 'feed-author-' || gen_random_uuid() || '@example.test', 'Author ' || g, '!'
      from generate_series(1, ${count}::int) g
    returning id, name`
}

/** Posts written straight into the tables, on one feed (as the migration left today's posts). */
async function placePosts (sql: TestSql, feedUserId: string, posts: { author_id: string, body: string }[]) {
  await sql`
    with inserted as (
      insert into posts ${sql(posts)}
      returning id, created_at
    )
    insert into feed_items (feed_user_id, post_id, created_at)
    select ${feedUserId}, id, created_at from inserted`
}

const auth = (user: TestUser) => ({ authorization: user.authorization })

function getFeed (app: App, user: TestUser, query = '') {
  return app.inject({ method: 'GET', url: `/feed${query}`, headers: auth(user) })
}

function createPost (app: App, user: TestUser, payload: unknown) {
  return app.inject({ method: 'POST', url: '/posts', headers: auth(user), payload: payload as Record<string, unknown> })
}

/** Follows nextCursor to the end and returns every page. */
async function readAllPages (app: App, user: TestUser, limit: number) {
  const pages: { data: PostView[], nextCursor: string | null }[] = []
  let cursor: string | null = null
  do {
    const query: string = `?limit=${limit}` + (cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`)
    const response = await getFeed(app, user, query)
    if (response.statusCode !== 200) throw new Error(`page ${pages.length + 1}: ${response.statusCode} ${response.body}`)
    const page = response.json() as { data: PostView[], nextCursor: string | null }
    pages.push(page)
    cursor = page.nextCursor
  } while (cursor !== null && pages.length < 100)
  return pages
}

t.test('a page of 20 posts by 20 authors is 1 query uncached, 0 cached; the N+1 route needs 21', async (t) => {
  const app = await buildTestApp(t)
  // The benchmark-only route is never part of the app; tests opt in before the app is ready.
  await app.register(feedNPlusOneRoutes)
  const sql = testSql(t)
  const caller = await createUser(app)
  const authors = await insertAuthors(sql, 20)
  await placePosts(sql, caller.id, authors.map((a) => ({ author_id: a.id, body: `hello from ${a.name}` })))

  const get = (url: string) => injectTraced(app, { method: 'GET', url, headers: auth(caller) })

  const miss = await get('/feed')
  t.equal(miss.response.statusCode, 200)
  const page = miss.response.json() as { data: PostView[], nextCursor: string | null }
  t.equal(page.data.length, 20)
  t.equal(new Set(page.data.map((p) => p.author.id)).size, 20, '20 different authors')
  t.equal(page.nextCursor, null, 'exactly one page')
  for (const post of page.data) {
    const author = authors.find((a) => a.id === post.author.id)
    t.equal(post.body, `hello from ${author?.name}`, 'each post carries its own author')
  }
  const missSpans = dbSpans(miss.spans)
  t.equal(missSpans.length, 1, 'uncached: exactly one statement for the whole page')
  t.match(String(missSpans[0]?.attributes['db.query.text']), /from feed_items f\s+join posts p .*\s+join users/s, 'feed rows joined with their posts and authors')
  t.notMatch(String(missSpans[0]?.attributes['db.query.text']), /offset/i, 'keyset, never OFFSET')

  const hit = await get('/feed')
  t.equal(hit.response.statusCode, 200)
  t.equal(dbSpans(hit.spans).length, 0, 'cached: no statement at all')
  t.same(hit.response.json(), page)

  const ttl = await app.redis.ttl(`cache:feed:${caller.id}`)
  t.ok(ttl >= 29 && ttl <= 33, `ttl ${ttl} is FEED_CACHE_TTL_S (30 s) plus up to 10 % jitter`)

  for (const url of ['/feed?limit=19', '/feed?limit=19', '/feed?limit=50']) {
    const uncached = await get(url)
    t.equal(uncached.response.statusCode, 200)
    t.equal(dbSpans(uncached.spans).length, 1, `${url}: other limits are not cached, and still one statement`)
  }

  const naive = await get('/bench/feed-n-plus-one')
  t.equal(naive.response.statusCode, 200)
  t.same(naive.response.json(), page, 'the N+1 loader returns the same page')
  t.equal(dbSpans(naive.spans).length, 21, 'the N+1 loader is caught: 1 + 20 statements')
  t.equal((await app.inject({ method: 'GET', url: '/bench/feed-n-plus-one' })).statusCode, 401, 'the bench route is private')
})

t.test('a new post invalidates the cached first page of the feed it lands on', async (t) => {
  const app = await buildTestApp(t)
  const alice = await createUser(app, { name: 'Alice' })
  const bob = await createUser(app, { name: 'Bob' })
  const get = () => injectTraced(app, { method: 'GET', url: '/feed', headers: auth(alice) })

  t.equal((await createPost(app, alice, { body: 'first' })).statusCode, 201)
  t.same((await get()).response.json().data.map((p: PostView) => p.body), ['first'])
  t.equal(dbSpans((await get()).spans).length, 0, 'the first page is now cached')

  const second = await createPost(app, alice, { body: 'second' })
  t.equal(second.statusCode, 201)
  const afterOwn = await get()
  t.same(afterOwn.response.json().data.map((p: PostView) => p.body), ['second', 'first'], 'the new post comes first')
  t.equal(dbSpans(afterOwn.spans).length, 1, 'read again from the database')
  t.equal(dbSpans((await get()).spans).length, 0, 'and cached again')

  // Bob's post is not on Alice's feed (she does not follow him) and leaves her cached page alone.
  t.equal((await createPost(app, bob, { body: 'hi Alice' })).statusCode, 201)
  const afterOther = await get()
  t.same(afterOther.response.json().data.map((p: PostView) => p.body), ['second', 'first'])
  t.equal(dbSpans(afterOther.spans).length, 0, "another user's post does not touch Alice's cached page")
})

t.test('pagination: every post exactly once, newest first, ties on created_at broken by id, to a null cursor', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const alice = await createUser(app)
  const bob = await createUser(app)
  const authors = await insertAuthors(sql, 3)
  // 45 posts inside ONE millisecond: groups of three share a created_at exactly and the groups differ by one
  // microsecond. A cursor that kept only a JS Date (milliseconds) or ignored the id would skip or repeat posts.
  await sql`
    with inserted as (
      insert into posts (author_id, body, created_at)
      select (${sql.array(authors.map((a) => a.id))}::uuid[])[1 + g % 3], 'post ' || g,
             timestamptz '2024-05-01 12:00:00.123999+00' - ((g - 1) / 3) * interval '1 microsecond'
        from generate_series(1, 45) g
      returning id, created_at
    )
    insert into feed_items (feed_user_id, post_id, created_at) select ${alice.id}, id, created_at from inserted`
  const expected = (await sql<{ id: string }[]>`
    select post_id as id from feed_items where feed_user_id = ${alice.id} order by created_at desc, post_id desc`).map((r) => r.id)
  t.equal(expected.length, 45)

  const byTwenty = await readAllPages(app, alice, 20)
  t.same(byTwenty.map((p) => p.data.length), [20, 20, 5])
  t.same(byTwenty.flatMap((p) => p.data.map((post) => post.id)), expected, 'each post once, in (created_at, id) desc order')
  t.same(byTwenty.map((p) => p.nextCursor === null), [false, false, true], 'nextCursor null only at the end')

  const byFifteen = await readAllPages(app, alice, 15)
  t.same(byFifteen.map((p) => p.data.length), [15, 15, 15], 'an exact multiple ends without an empty page')
  t.same(byFifteen.flatMap((p) => p.data.map((post) => post.id)), expected)

  const cursor = byTwenty[0]?.nextCursor ?? ''
  const [body = '', signature = ''] = cursor.split('.')
  const flip = (s: string) => (s[0] === 'A' ? 'B' : 'A') + s.slice(1)
  const position = JSON.parse(Buffer.from(body, 'base64url').toString()) as { t: string, i: string }
  const forged = Buffer.from(JSON.stringify({ ...position, i: '1' })).toString('base64url')
  for (const [label, bad] of [
    ['tampered body', `${flip(body)}.${signature}`],
    ['tampered signature', `${body}.${flip(signature)}`],
    ['forged position with the old signature', `${forged}.${signature}`],
    ['not a cursor', 'abc'],
    ['sql in the cursor', "' or 1=1 --"]
  ] as const) {
    const response = await getFeed(app, alice, `?cursor=${encodeURIComponent(bad)}`)
    t.equal(response.statusCode, 400, label)
    t.equal(response.headers['content-type'], 'application/problem+json; charset=utf-8')
  }

  // Alice's cursor is worthless on Bob's feed (and the other way round): the scope includes the caller.
  t.equal((await getFeed(app, bob, `?cursor=${encodeURIComponent(cursor)}`)).statusCode, 400, "another user's cursor")
  t.equal((await getFeed(app, alice, `?cursor=${encodeURIComponent(cursor)}`)).statusCode, 200, 'the owner may use it')

  for (const limit of ['0', '51', 'abc', '1.5', '-1', '']) {
    const response = await getFeed(app, alice, `?limit=${limit}`)
    t.equal(response.statusCode, 400, `limit=${limit}`)
    t.same(response.json().errors.map((e: { path: string }) => e.path), ['limit'])
  }
  t.equal((await getFeed(app, alice, '?limit=1')).json().data.length, 1)
  t.equal((await getFeed(app, alice, '?limit=50')).json().data.length, 45)
  t.equal((await getFeed(app, alice, '?page=2')).statusCode, 400, 'unknown query parameters are refused')
  t.equal((await app.inject({ method: 'GET', url: '/feed' })).statusCode, 401)
})

t.test('posting: the caller is the author, on their own feed at once; every validation failure', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const alice = await createUser(app, { name: 'Alice' })
  const bob = await createUser(app, { name: 'Bob' })

  const own = await createPost(app, alice, { body: 'on my own feed' })
  t.equal(own.statusCode, 201)
  const ownPost = own.json() as PostView
  t.same(Object.keys(ownPost).sort(), ['author', 'body', 'createdAt', 'id'])
  t.same(Object.keys(ownPost.author).sort(), ['avatarUrl', 'id', 'name'])
  t.same(ownPost.author, { id: alice.id, name: 'Alice', avatarUrl: null })
  t.match(ownPost.id, /^[1-9][0-9]*$/)
  const aliceFeed = (await getFeed(app, alice)).json().data as PostView[]
  t.same(aliceFeed, [ownPost], "on the author's feed at once, as it was created")
  t.same((await getFeed(app, bob)).json().data, [], 'on no one else\'s')
  const [job] = await sql<{ payload: unknown }[]>`select payload from jobs where kind = 'feed.fan_out' and payload->>'postId' = ${ownPost.id}`
  t.same(job?.payload, { postId: ownPost.id, authorId: alice.id, after: null }, 'the fan-out job was queued with the post')

  // Alice's posts, and jobs of any post of hers but the one above (whose job another test file's worker may run and
  // delete meanwhile): other test files write and run jobs at the same time.
  const [{ count: before }] = await sql`select (select count(*) from posts where author_id = ${alice.id}) + (select count(*) from jobs where payload->>'authorId' = ${alice.id} and payload->>'postId' <> ${ownPost.id})::int as count` as unknown as [{ count: number }]
  const invalid: [string, unknown, string][] = [
    ['userId (the old way to post on another feed)', { body: 'x', userId: bob.id }, 'body'],
    ['userId SQL', { body: 'x', userId: "' OR 1=1 --" }, 'body'],
    ['authorId', { body: 'x', authorId: bob.id }, 'body'],
    ['empty body', { body: '' }, 'body'],
    ['5001 characters', { body: 'a'.repeat(5001) }, 'body'],
    ['5001 emoji', { body: '😀'.repeat(5001) }, 'body'],
    ['body missing', {}, 'body'],
    ['body not a string', { body: 42 }, 'body'],
    ['body null', { body: null }, 'body'],
    ['NUL byte', { body: 'before\u0000after' }, 'body'],
    ['unpaired surrogate', { body: 'broken \ud800 pair' }, 'body'],
    ['right-to-left override', { body: 'invoice\u202egnp.exe' }, 'body'],
    ['zero-width space', { body: 'Ledger\u200bSupport' }, 'body'],
    ['first-strong isolate', { body: 'pay \u2068me\u2069' }, 'body'],
    ['tag characters (hidden text)', { body: 'hello\u{E0041}\u{E0042}' }, 'body']
  ]
  for (const [label, payload, path] of invalid) {
    const response = await createPost(app, alice, payload)
    t.equal(response.statusCode, 400, label)
    t.equal(response.json().errors?.[0]?.path, path, `${label}: names ${path}`)
    if (label === 'empty body' || label === 'NUL byte') t.equal(response.json().errors.length, 1, `${label}: one entry`)
  }
  const [{ count: after }] = await sql`select (select count(*) from posts where author_id = ${alice.id}) + (select count(*) from jobs where payload->>'authorId' = ${alice.id} and payload->>'postId' <> ${ownPost.id})::int as count` as unknown as [{ count: number }]
  t.equal(after, before, 'no post and no job was written by any refused request')

  // The limit counts characters like the table's CHECK does, so both are accepted.
  t.equal((await createPost(app, alice, { body: 'a'.repeat(5000) })).statusCode, 201, '5000 characters')
  const emoji = await createPost(app, alice, { body: '😀'.repeat(5000) })
  t.equal(emoji.statusCode, 201, '5000 emoji (10000 UTF-16 units)')
  t.equal(emoji.json().body, '😀'.repeat(5000))
  t.equal((await app.inject({ method: 'POST', url: '/posts', payload: { body: 'x' } })).statusCode, 401)
  t.equal((await app.inject({ method: 'POST', url: '/posts', headers: { ...auth(alice), 'content-type': 'text/plain' }, payload: 'x' })).statusCode, 415)
})

t.test('deleting a post: 204 for its author, off their feed at once; 404 for anyone else, unknown ids and twice', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const alice = await createUser(app)
  const bob = await createUser(app)
  const keep = (await createPost(app, alice, { body: 'keep' })).json() as PostView
  const drop = (await createPost(app, alice, { body: 'drop' })).json() as PostView
  t.same((await getFeed(app, alice)).json().data.map((p: PostView) => p.body), ['drop', 'keep'])
  const del = (user: TestUser, id: string) => app.inject({ method: 'DELETE', url: `/posts/${id}`, headers: auth(user) })

  const byBob = await del(bob, drop.id)
  t.equal(byBob.statusCode, 404, "someone else's post is a 404")
  t.equal(byBob.headers['content-type'], 'application/problem+json; charset=utf-8')
  t.equal((await del(bob, '999999999999')).body.replace(/"instance":"[^"]*"/, ''), byBob.body.replace(/"instance":"[^"]*"/, ''), 'the same answer as an unknown id')
  t.same((await getFeed(app, alice)).json().data.map((p: PostView) => p.body), ['drop', 'keep'], 'still there')

  const byAlice = await del(alice, drop.id)
  t.equal(byAlice.statusCode, 204)
  t.equal(byAlice.body, '')
  t.same((await getFeed(app, alice)).json().data.map((p: PostView) => p.body), ['keep'], "off the author's (cached) feed at once")
  const [row] = await sql<{ deleted: boolean }[]>`select deleted_at is not null as deleted from posts where id = ${drop.id}`
  t.equal(row?.deleted, true, 'marked deleted')
  const jobs = await sql`select payload from jobs where kind = 'feed.remove_post' and payload->>'postId' = ${drop.id}`
  t.equal(jobs.length, 1, 'the removal job is queued')
  t.equal((await del(alice, drop.id)).statusCode, 404, 'twice: 404')
  t.equal(keep.body, 'keep')

  for (const id of ['abc', '0', '-1', '1.5', '99999999999999999999', '9223372036854775808', "1' or '1'='1"]) {
    const response = await del(alice, encodeURIComponent(id))
    t.equal(response.statusCode, 400, `id ${id}`)
    t.same(response.json().errors.map((e: { path: string }) => e.path), ['id'])
  }
  t.equal((await app.inject({ method: 'DELETE', url: `/posts/${keep.id}` })).statusCode, 401)
})

t.test('script, SQL and Unicode bodies come back byte for byte', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const alice = await createUser(app)
  const payloads = [
    '<script>alert(1)</script>',
    '<img src=x onerror="alert(document.cookie)">',
    "'; DROP TABLE posts;--",
    "' OR 1=1 --",
    '$1 $$ \\x00 %s %n {{7*7}} $' + '{7*7}',
    'emoji 😀👩‍👩‍👧‍👦🇫🇮🏳️‍🌈❤️‍🔥1️⃣🏴\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F} and combining é (e + U+0301) vs é',
    'Persian with its zero-width non-joiner: \u0645\u06CC\u200C\u062E\u0648\u0627\u0647\u0645',
    '  leading and trailing spaces, kept  ',
    'lines\r\nand\ttabs\u0001\u007f kept',
    'right-to-left text without overrides: \u05E9\u05DC\u05D5\u05DD'
  ]
  for (const body of payloads) {
    const response = await createPost(app, alice, { body })
    t.equal(response.statusCode, 201, JSON.stringify(body))
    t.equal(response.json().body, body, 'response is byte for byte')
    const [row] = await sql<{ body: string }[]>`select body from posts where id = ${response.json().id}`
    t.equal(row?.body, body, 'stored byte for byte')
  }
  const feed = (await getFeed(app, alice, '?limit=50')).json().data as PostView[]
  t.same(feed.map((p) => p.body), payloads.toReversed(), 'the feed returns them unchanged, newest first')
  const [{ exists }] = await sql`select to_regclass('posts') is not null as exists` as unknown as [{ exists: boolean }]
  t.ok(exists, 'posts table intact')
})

t.test('no response contains an email or a password hash', async (t) => {
  const app = await buildTestApp(t)
  await app.register(feedNPlusOneRoutes)
  const alice = await createUser(app)
  const bob = await createUser(app)
  const responses = [
    await createPost(app, alice, { body: 'mine' }),
    await createPost(app, bob, { body: 'yours', userId: alice.id }),
    await app.inject({ method: 'DELETE', url: '/posts/1', headers: auth(bob) }),
    await getFeed(app, alice),
    await getFeed(app, alice), // cached
    await getFeed(app, alice, '?limit=1'),
    await app.inject({ method: 'GET', url: '/bench/feed-n-plus-one', headers: auth(alice) })
  ]
  for (const response of responses) {
    t.ok(response.statusCode < 500)
    for (const secret of [alice.email, bob.email, 'scrypt', 'password', 'email', '@']) {
      t.notOk(response.body.includes(secret), `${response.statusCode} response has no ${secret}`)
    }
  }
  const cached = await app.redis.get(`cache:feed:${alice.id}`)
  t.ok(cached !== null && !/@|scrypt|email/.test(cached), 'the cached page holds public fields only')

  const document = (await app.inject({ method: 'GET', url: '/openapi.json' })).json()
  t.ok(document.paths['/feed'] && document.paths['/posts'] && document.paths['/posts/{id}'], 'documented')
  t.notOk(document.paths['/bench/feed-n-plus-one'], 'the bench route stays out of the documentation')
})
