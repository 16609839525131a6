// The feed's jobs through real worker processes: the worker inside `node server.ts` (as `npm start` runs it) brings
// posts, backfills and removals to followers' feeds within the contract's 5 seconds, and a `node worker.ts` killed
// in the middle of a fan-out leaves the rest to the next worker without a duplicate or a gap. Runs after the main
// suite, alone (scripts/test.ts), so the workers here see only this file's jobs.
import { randomUUID } from 'node:crypto'
import t from 'tap'
import type { App } from '../../app.ts'
import { FEED_JOB } from '../../routes/social/feed-jobs.ts'
import { buildTestApp, createUser, hasLocalStack, makeFollowers, testSql } from '../helper.ts'
import { startServer, startWorker, waitFor } from './support.ts'

const skip = hasLocalStack ? false : 'needs the local stack started by scripts/test.ts'
const CONTRACT_MS = 5000

type TestSql = ReturnType<typeof testSql>

async function placements (sql: TestSql, postId: string) {
  const [row] = await sql<{ rows: number, feeds: number }[]>`
    select count(*)::int as rows, count(distinct feed_user_id)::int as feeds from feed_items where post_id = ${postId}`
  return row!
}

const tokenOf = async (app: App, id: string) =>
  `Bearer ${(await app.issueToken({ id, tier: 'standard', sessionId: randomUUID() })).accessToken}`

t.test('the worker inside the server brings every feed change within 5 s: post, backfill, delete, unfollow', { skip }, async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  // Small steps, so a post to 2,000 followers takes several, each with its own cache invalidation.
  const server = await startServer({ WORKER_ENABLED: 'true', FEED_FAN_OUT_BATCH: '250', LOG_LEVEL: 'warn' })
  t.teardown(server.kill)
  const call = async (user: { authorization: string }, method: string, path: string, body?: unknown) => {
    const response = await fetch(`${server.baseUrl}${path}`, {
      method,
      headers: { authorization: user.authorization, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(10_000)
    })
    return { status: response.status, json: (response.status === 204 ? null : await response.json()) as Record<string, unknown> }
  }
  const feedBodies = async (user: { authorization: string }) => ((await call(user, 'GET', '/feed')).json.data as Array<{ body: string }>).map((p) => p.body)

  const [author, reader] = [await createUser(app), await createUser(app)]
  const followers = await makeFollowers(author.id, 2000)
  for (const body of ['one', 'two', 'three']) t.equal((await call(author, 'POST', '/posts', { body })).status, 201)
  t.same(await feedBodies(reader), [], 'the reader follows nobody yet (and this empty page is now cached)')

  let started = Date.now()
  t.equal((await call(reader, 'PUT', `/users/me/following/${author.id}`)).status, 204)
  let ms = await waitFor(async () => (await feedBodies(reader)).length === 3, CONTRACT_MS, 50)
  t.ok(ms >= 0, `following brought the author's posts within 5 s (${Date.now() - started} ms)`)
  t.same(await feedBodies(reader), ['three', 'two', 'one'])

  started = Date.now()
  const posted = await call(author, 'POST', '/posts', { body: 'to everyone' })
  t.equal(posted.status, 201)
  const postId = posted.json.id as string
  ms = await waitFor(async () => (await placements(sql, postId)).rows === followers.length + 2, CONTRACT_MS, 50)
  t.ok(ms >= 0, `on all ${followers.length + 2} feeds within 5 s (${Date.now() - started} ms)`)
  t.same(await placements(sql, postId), { rows: followers.length + 2, feeds: followers.length + 2 }, 'once on each')
  t.same((await feedBodies(reader))[0], 'to everyone', "the reader's cached first page was invalidated")
  const someone = { authorization: await tokenOf(app, followers[1500]!) }
  t.same((await feedBodies(someone))[0], 'to everyone', "on a follower's page through the API")

  started = Date.now()
  t.equal((await call(author, 'DELETE', `/posts/${postId}`)).status, 204)
  ms = await waitFor(async () => (await placements(sql, postId)).rows === 0, CONTRACT_MS, 50)
  t.ok(ms >= 0, `the deleted post left every feed within 5 s (${Date.now() - started} ms)`)
  t.notOk((await feedBodies(reader)).includes('to everyone'))

  started = Date.now()
  t.equal((await call(reader, 'DELETE', `/users/me/following/${author.id}`)).status, 204)
  ms = await waitFor(async () => (await feedBodies(reader)).length === 0, CONTRACT_MS, 50)
  t.ok(ms >= 0, `unfollowing removed the author's posts within 5 s (${Date.now() - started} ms)`)
  const [left] = await sql<{ n: number }[]>`
    select count(*)::int as n from feed_items f join posts p on p.id = f.post_id where f.feed_user_id = ${reader.id} and p.author_id = ${author.id}`
  t.equal(left?.n, 0, 'no row of the author on the reader\'s feed')
  t.ok(await waitFor(async () => {
    const [row] = await sql<{ n: number }[]>`select count(*)::int as n from jobs where payload @> ${sql.json({ authorId: author.id })} or payload @> ${sql.json({ followeeId: author.id })}`
    return row?.n === 0
  }, CONTRACT_MS, 50) >= 0, 'no feed job left')
})

t.test('a worker SIGKILLed in the middle of a fan-out: the next one resumes from the stored cursor, every feed once', { skip }, async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const author = await createUser(app)
  const followers = await makeFollowers(author.id, 10_000)
  // 50 feeds a step: 200 steps, so the kill lands between steps that are committed and steps still to come.
  // A short lease: the job the killed worker held comes due again 5 s after its last claim.
  const first = await startWorker(t, { FEED_FAN_OUT_BATCH: '50', WORKER_LEASE_S: '5' })

  const posted = await app.inject({ method: 'POST', url: '/posts', headers: { authorization: author.authorization }, payload: { body: 'to 10,000' } })
  t.equal(posted.statusCode, 201)
  const postId = posted.json().id as string
  const job = async () => (await sql<{ payload: { after: string | null } }[]>`
    select payload from jobs where kind = ${FEED_JOB.fanOut} and payload->>'postId' = ${postId}`)[0]
  t.ok(await waitFor(async () => (await job())?.payload.after != null, 20_000, 5) >= 0, 'the worker stored a cursor: steps are committed')
  t.same(await first.kill('SIGKILL'), { code: null, signal: 'SIGKILL' })
  const partial = (await placements(sql, postId)).rows
  t.ok(partial > 1 && partial < followers.length + 1, `killed mid fan-out: the post was on ${partial} of ${followers.length + 1} feeds`)
  t.ok((await job()) !== undefined, 'the job is still queued')

  await startWorker(t, { FEED_FAN_OUT_BATCH: '50', WORKER_LEASE_S: '5' })
  t.ok(await waitFor(async () => (await job()) === undefined, 60_000, 100) >= 0, 'the next worker finished the job (after the lease)')
  t.same(await placements(sql, postId), { rows: followers.length + 1, feeds: followers.length + 1 }, 'every follower and the author once: no duplicate, no gap')
})
