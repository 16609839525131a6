import { randomUUID } from 'node:crypto'
import t from 'tap'
import type { App } from '../../../app.ts'
import { createFeedJobHandlers, FEED_JOB } from '../../../routes/social/feed-jobs.ts'
import { buildTestApp, createUser, dbSpans, drainJobs, injectTraced, makeFollowers, testSql, type TestUser } from '../../helper.ts'

type TestSql = ReturnType<typeof testSql>

const FEED_KINDS = Object.values(FEED_JOB)
const BATCH = 1000

const auth = (user: { authorization: string }) => ({ authorization: user.authorization })

/** The feed handlers as the worker will run them, on this app's cache. */
const handlersFor = (app: App) => createFeedJobHandlers({ cache: app.cache, batchSize: BATCH })
/** The feed jobs of these users (as author, follower or followee) only: other test files drain theirs in parallel. */
const jobsOf = (users: readonly { id: string }[]) => users.flatMap(({ id }) => [{ authorId: id }, { followerId: id }, { followeeId: id }])
const drain = (app: App, users: readonly { id: string }[], options: { maxSteps?: number } = {}) =>
  drainJobs(app, { kinds: FEED_KINDS, matching: jobsOf(users), ...options })

/** How many times the post is on each feed: every follower once, and nothing else. */
async function placements (sql: TestSql, postId: string) {
  const [row] = await sql<{ rows: number, feeds: number }[]>`
    select count(*)::int as rows, count(distinct feed_user_id)::int as feeds from feed_items where post_id = ${postId}`
  return row!
}

async function onFeeds (sql: TestSql, postId: string, feeds: string[]): Promise<number> {
  const [row] = await sql<{ count: number }[]>`
    select count(*)::int as count from feed_items where post_id = ${postId} and feed_user_id in ${sql(feeds)}`
  return row!.count
}

const post = async (app: App, user: TestUser, body: string) => {
  const response = await app.inject({ method: 'POST', url: '/posts', headers: auth(user), payload: { body } })
  if (response.statusCode !== 201) throw new Error(`post failed: ${response.statusCode} ${response.body}`)
  return response.json() as { id: string, body: string }
}
const follow = (app: App, user: TestUser, id: string) => app.inject({ method: 'PUT', url: `/users/me/following/${id}`, headers: auth(user) })
const unfollow = (app: App, user: TestUser, id: string) => app.inject({ method: 'DELETE', url: `/users/me/following/${id}`, headers: auth(user) })
const feedBodies = async (app: App, user: { authorization: string }) =>
  ((await app.inject({ method: 'GET', url: '/feed?limit=50', headers: auth(user) })).json().data as { body: string }[]).map((p) => p.body)

t.test('follow, again, yourself, unknown, unfollow: 204, 204, 400, 404, 204; one backfill job per new follow', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const alice = await createUser(app)
  const bob = await createUser(app)
  const jobs = async () => (await sql`
    select kind from jobs where payload->>'followerId' = ${alice.id} order by id`).map((row) => row.kind as string)

  const first = await follow(app, alice, bob.id)
  t.equal(first.statusCode, 204)
  t.equal(first.body, '')
  t.equal((await follow(app, alice, bob.id)).statusCode, 204, 'again: 204')
  t.equal((await follow(app, alice, bob.id.toUpperCase())).statusCode, 204, 'the same id in upper case is the same user')
  t.same(await jobs(), [FEED_JOB.backfill], 'one backfill, not one per request')
  const rows = await sql`select follower_id, followee_id from follows where follower_id = ${alice.id}`
  t.same(rows.map((r) => r.followee_id), [bob.id])

  const self = await follow(app, alice, alice.id)
  t.equal(self.statusCode, 400)
  t.same(self.json().errors, [{ path: 'id', message: 'must not be your own id' }])
  const unknown = await follow(app, alice, '00000000-0000-4000-8000-000000000000')
  t.equal(unknown.statusCode, 404)
  t.equal(unknown.headers['content-type'], 'application/problem+json; charset=utf-8')
  for (const id of ['not-a-uuid', "' or 1=1 --", '1']) {
    const response = await follow(app, alice, encodeURIComponent(id))
    t.equal(response.statusCode, 400, id)
    t.same(response.json().errors.map((e: { path: string }) => e.path), ['id'])
  }

  t.equal((await unfollow(app, alice, bob.id)).statusCode, 204)
  t.equal((await unfollow(app, alice, bob.id)).statusCode, 204, 'not following: still 204')
  t.equal((await unfollow(app, alice, '00000000-0000-4000-8000-000000000000')).statusCode, 204, 'unknown user: 204')
  t.same(await jobs(), [FEED_JOB.backfill, FEED_JOB.removeFollowee], 'one removal, only for the follow that existed')
  t.equal((await sql`select 1 from follows where follower_id = ${alice.id}`).length, 0)

  for (const [method, url] of [['PUT', `/users/me/following/${bob.id}`], ['DELETE', `/users/me/following/${bob.id}`], ['GET', '/users/me/following'], ['GET', '/users/me/followers']] as const) {
    t.equal((await app.inject({ method, url })).statusCode, 401, `${method} ${url} needs a token`)
  }
  // The stand-in worker's scoping: a drain for Alice leaves Bob's jobs to his own drain.
  const bobsPost = await post(app, bob, 'not alice\'s')
  await drain(app, [alice])
  t.equal((await sql`select 1 from jobs where payload->>'postId' = ${bobsPost.id}`).length, 1, "Bob's fan-out is left alone by Alice's drain")
  await drain(app, [bob])
  t.equal((await sql`select 1 from jobs where payload->>'postId' = ${bobsPost.id}`).length, 0)
})

t.test('following and followers lists: newest first, keyset pages to a null cursor, cursors bound to list and caller', async (t) => {
  const app = await buildTestApp(t)
  const alice = await createUser(app, { name: 'Alice' })
  const others = [] as TestUser[]
  for (let i = 0; i < 5; i++) others.push(await createUser(app, { name: `Other ${i}` }))
  for (const other of others) t.equal((await follow(app, alice, other.id)).statusCode, 204)
  for (const other of others.slice(0, 3)) t.equal((await follow(app, other, alice.id)).statusCode, 204)

  const list = (user: TestUser, path: string, query = '') => app.inject({ method: 'GET', url: `/users/me/${path}${query}`, headers: auth(user) })
  const pages: { data: { id: string, name: string, avatarUrl: string | null }[], nextCursor: string | null }[] = []
  let cursor: string | null = null
  do {
    const response = await list(alice, 'following', `?limit=2${cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`}`)
    t.equal(response.statusCode, 200)
    pages.push(response.json())
    cursor = pages.at(-1)!.nextCursor
  } while (cursor !== null && pages.length < 10)
  t.same(pages.map((p) => p.data.length), [2, 2, 1])
  t.same(pages.flatMap((p) => p.data.map((u) => u.id)), others.map((o) => o.id).toReversed(), 'each followee once, newest follow first')
  t.same(pages[0]!.data[0], { id: others[4]!.id, name: 'Other 4', avatarUrl: null }, 'public fields only')

  const followers = (await list(alice, 'followers')).json()
  t.same(followers.data.map((u: { id: string }) => u.id), others.slice(0, 3).map((o) => o.id).toReversed())
  t.equal(followers.nextCursor, null)
  t.same((await list(others[4]!, 'followers')).json(), { data: [{ id: alice.id, name: 'Alice', avatarUrl: null }], nextCursor: null })

  const aliceCursor = pages[0]!.nextCursor!
  const foreign = await list(others[0]!, 'following', `?cursor=${encodeURIComponent(aliceCursor)}`)
  t.equal(foreign.statusCode, 400, "another user's cursor is a 400")
  t.same(foreign.json().errors, [{ path: 'cursor', message: 'is not a cursor this list issued to you' }])
  t.equal((await list(alice, 'followers', `?cursor=${encodeURIComponent(aliceCursor)}`)).statusCode, 400, "the following list's cursor on the followers list")
  for (const query of ['?limit=0', '?limit=101', '?limit=x', '?cursor=abc', '?page=2']) {
    t.equal((await list(alice, 'following', query)).statusCode, 400, query)
  }
})

t.test('a user with 3,000 followers posts: the request does no per-follower work; after the jobs every follower has it once', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const author = await createUser(app, { name: 'Popular' })
  const followers = await makeFollowers(author.id, 3000)

  const { response, spans } = await injectTraced(app, { method: 'POST', url: '/posts', headers: auth(author), payload: { body: 'to all 3,000' } })
  t.equal(response.statusCode, 201)
  const postId = response.json().id as string
  t.ok(dbSpans(spans).length <= 5, `the request ran ${dbSpans(spans).length} statements, however many followers`)
  t.same(await placements(sql, postId), { rows: 1, feeds: 1 }, "at first only on the author's feed")

  const { steps, failures, errors } = await drain(app, [author])
  t.equal(failures, 0, String(errors[0] ?? 'no failed run'))
  t.ok(steps >= 4, `${steps} steps: three batches of at most ${BATCH} and the empty one that ends the job`)
  t.same(await placements(sql, postId), { rows: 3001, feeds: 3001 }, 'every follower and the author, once each')
  t.equal(await onFeeds(sql, postId, followers), 3000)
  t.equal((await sql`select 1 from jobs where kind = ${FEED_JOB.fanOut} and payload->>'postId' = ${postId}`).length, 0, 'the job is finished')

  const someone = { authorization: `Bearer ${(await app.issueToken({ id: followers[1234]!, tier: 'standard', sessionId: randomUUID() })).accessToken}` }
  t.same(await feedBodies(app, someone), ['to all 3,000'], "on a follower's feed through the API")
})

t.test('a fan-out killed mid-way resumes from its stored cursor without duplicates or gaps', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const handlers = handlersFor(app)
  const author = await createUser(app)
  const followers = await makeFollowers(author.id, 2500)
  const postId = (await post(app, author, 'resumable')).id
  const stored = async () => (await sql<{ id: string, kind: string, payload: { after: string | null }, attempts: number }[]>`
    select id, kind, payload, attempts from jobs where kind = ${FEED_JOB.fanOut} and payload->>'postId' = ${postId}`)[0]

  // One batch through the worker: the payload now carries the cursor (the 1,000th follower).
  await drainJobs(app, { kinds: [FEED_JOB.fanOut], matching: jobsOf([author]), maxSteps: 1 })
  t.equal((await stored())?.payload.after, followers[BATCH - 1], 'the stored cursor is the last follower delivered')
  t.equal(await onFeeds(sql, postId, followers), BATCH)

  // The worker runs the second batch and dies before it stores the new cursor: the batch is committed, the payload
  // still points at the first. All in-memory state is dropped; only the table says where to resume.
  const job = await stored()
  const result = await handlers[FEED_JOB.fanOut]!(job as never, { sql: app.db, log: app.log, signal: new AbortController().signal })
  t.same(result, { status: 'continue', payload: { postId, authorId: author.id, after: followers[2 * BATCH - 1] } })
  t.equal((await stored())?.payload.after, followers[BATCH - 1], 'crash: the cursor was never stored')
  t.equal(await onFeeds(sql, postId, followers), 2 * BATCH)

  const { failures, errors } = await drain(app, [author])
  t.equal(failures, 0, String(errors[0] ?? 'no failed run'))
  t.same(await placements(sql, postId), { rows: 2501, feeds: 2501 }, 'no duplicates (the second batch ran twice) and no gaps')
  t.equal(await stored(), undefined, 'the job is finished')
})

t.test('unfollowing during a fan-out leaves no post behind, whether the batch passed the follower or not', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const author = await createUser(app)
  const followers = await makeFollowers(author.id, 2000)
  const older = await post(app, author, 'older')
  await drain(app, [author])
  const postId = (await post(app, author, 'mid fan-out')).id
  await drain(app, [author], { maxSteps: 1 })

  // Followers 0–999 have the post already, 1000–1999 not yet. Ten of each unfollow, each with a token of their own.
  const leavers = [...followers.slice(0, 10), ...followers.slice(1500, 1510)]
  const requests = leavers.map(async (id) => unfollow(app, { authorization: `Bearer ${(await app.issueToken({ id, tier: 'standard', sessionId: randomUUID() })).accessToken}` } as TestUser, author.id))
  // The unfollows race the rest of the fan-out.
  const [responses] = await Promise.all([Promise.all(requests), drain(app, [author])])
  t.ok(responses.every((r) => r.statusCode === 204))
  await drain(app, [author])

  t.equal(await onFeeds(sql, postId, leavers), 0, 'the post is on no leaver\'s feed')
  t.equal(await onFeeds(sql, older.id, leavers), 0, 'nor any older post of the author')
  t.same(await placements(sql, postId), { rows: 2001 - leavers.length, feeds: 2001 - leavers.length }, 'everyone else has it once')
})

t.test('deleting a post during its fan-out: it ends on no feed, and the post row goes', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const author = await createUser(app)
  const followers = await makeFollowers(author.id, 2500)
  const postId = (await post(app, author, 'regrettable')).id
  await drain(app, [author], { maxSteps: 1 })
  t.equal(await onFeeds(sql, postId, followers), BATCH)

  const [deleted] = await Promise.all([
    app.inject({ method: 'DELETE', url: `/posts/${postId}`, headers: auth(author) }),
    drain(app, [author])
  ])
  t.equal(deleted.statusCode, 204)
  await drain(app, [author])
  t.same(await placements(sql, postId), { rows: 0, feeds: 0 }, 'on no feed')
  t.equal((await sql`select 1 from posts where id = ${postId}`).length, 0, 'the post row is removed once off every feed')
  t.equal((await sql`select 1 from jobs where payload->>'postId' = ${postId}`).length, 0, 'no job left')
})

t.test('following backfills the 20 most recent live posts; unfollowing removes all; re-following in between keeps them', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const author = await createUser(app)
  const reader = await createUser(app)
  // 25 posts a microsecond apart, the newest deleted: the 20 most recent live ones are posts 4 to 23.
  await sql`
    insert into posts (author_id, body, created_at, deleted_at)
    select ${author.id}, 'post ' || g, timestamptz '2025-01-01 00:00:00+00' + g * interval '1 microsecond',
           case when g = 24 then now() end
      from generate_series(0, 24) g`
  t.equal((await post(app, reader, 'my own')).body, 'my own')

  t.equal((await follow(app, reader, author.id)).statusCode, 204)
  await drain(app, [author])
  const expected = Array.from({ length: 20 }, (_, i) => `post ${23 - i}`)
  t.same(await feedBodies(app, reader), ['my own', ...expected], 'exactly the 20 most recent live posts, newest first')

  // A new post now reaches the reader through the fan-out.
  await post(app, author, 'fresh')
  await drain(app, [author])
  t.equal((await feedBodies(app, reader))[0], 'fresh')

  t.equal((await unfollow(app, reader, author.id)).statusCode, 204)
  await drain(app, [author])
  t.same(await feedBodies(app, reader), ['my own'], "all of the author's posts are gone, the reader's own stay")

  // Follow, unfollow, follow before any job runs: the removal must not undo the second follow.
  await follow(app, reader, author.id)
  await unfollow(app, reader, author.id)
  await follow(app, reader, author.id)
  await drain(app, [author])
  t.same(await feedBodies(app, reader), ['fresh', 'my own', ...expected.slice(0, 19)], 'following again: the 20 most recent')
})

t.test('the cached first page changes exactly when the feed does: fan-out, deletion, unfollow', async (t) => {
  const app = await buildTestApp(t)
  const author = await createUser(app)
  const reader = await createUser(app)
  const bystander = await createUser(app)
  await follow(app, reader, author.id)
  await drain(app, [author])
  const read = async (user: TestUser) => {
    const { response, spans } = await injectTraced(app, { method: 'GET', url: '/feed', headers: auth(user) })
    return { bodies: (response.json().data as { body: string }[]).map((p) => p.body), statements: dbSpans(spans).length }
  }

  t.same(await read(reader), { bodies: [], statements: 1 })
  t.same(await read(reader), { bodies: [], statements: 0 }, 'cached')
  await read(bystander)
  const { id } = await post(app, author, 'news')
  t.same(await read(reader), { bodies: [], statements: 0 }, 'before the fan-out the cached page is still right')
  await drain(app, [author])
  t.same(await read(reader), { bodies: ['news'], statements: 1 }, 'the fan-out invalidated it: the new post shows')
  t.same(await read(bystander), { bodies: [], statements: 0 }, 'a feed the fan-out did not touch keeps its cached page')

  t.equal((await app.inject({ method: 'DELETE', url: `/posts/${id}`, headers: auth(author) })).statusCode, 204)
  await read(reader)
  await drain(app, [author])
  t.same(await read(reader), { bodies: [], statements: 1 }, 'the removal invalidated it')

  await post(app, author, 'again')
  await drain(app, [author])
  t.same(await read(reader), { bodies: ['again'], statements: 1 })
  await unfollow(app, reader, author.id)
  await drain(app, [author])
  t.same(await read(reader), { bodies: [], statements: 1 }, 'the unfollow removal invalidated it')
})
