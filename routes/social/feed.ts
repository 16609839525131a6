import { z } from 'zod'
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod'
import type { CursorCodec } from '../../plugins/auth/cursors.ts'
import { enqueueJob, wakeWorkers } from '../../plugins/jobs/queue.ts'
import { responses } from '../../plugins/openapi/index.ts'
import { SocialError, toProblem } from './errors.ts'
import { FEED_CACHE, FEED_JOB, type FanOutPayload, type RemovePostPayload } from './feed-jobs.ts'
import { feedPageQuery, feedPositionOf, insertPost, markPostDeleted, toPost, type FeedRow } from './repository.ts'
import { CreatePostBodySchema, FEED_DEFAULT_LIMIT, FeedPageSchema, FeedPositionSchema, FeedQuerySchema, PostIdParamsSchema, PostSchema, type FeedPage, type FeedPosition } from './schemas.ts'

export { FEED_CACHE }

/** Binds a feed cursor to this list and this caller: a cursor from anyone else's feed is a 400. */
const feedCursorScope = (userId: string) => `feed:${userId}`

export const feedPosition = (cursors: CursorCodec, userId: string, cursor: string | undefined): FeedPosition | undefined =>
  cursors.position(feedCursorScope(userId), cursor, FeedPositionSchema)

export const feedPage = (cursors: CursorCodec, userId: string, rows: readonly FeedRow[], limit: number): FeedPage =>
  cursors.page(feedCursorScope(userId), rows, limit, toPost, feedPositionOf)

export const feedRoutes: FastifyPluginAsyncZod = async (app) => {
  const { db, cache, config, cursors, reads } = app

  app.post('/posts', {
    schema: {
      operationId: 'createPost',
      tags: ['feed'],
      summary: 'Post: on your feed at once, on your followers\' feeds within seconds',
      body: CreatePostBodySchema,
      ...responses({ 201: { schema: PostSchema, description: 'Posted: on your feed now.' }, 404: 'The caller\'s account no longer exists.' })
    }
  }, async (request, reply) => {
    const authorId = request.user.id
    // The post, its row on the author's feed and the fan-out job commit together: a committed post always
    // reaches the followers, a failed request leaves nothing behind. The request does no per-follower work.
    const post = await db.begin(async (tx) => {
      const inserted = await insertPost(tx, { authorId, body: request.body.body })
      if (inserted !== null) await enqueueJob(tx, FEED_JOB.fanOut, { postId: inserted.id, authorId, after: null } satisfies FanOutPayload)
      return inserted
    })
    if (post === null) throw toProblem(new SocialError('user_not_found'))
    wakeWorkers(app.redis, request.log)
    // After the commit, so a reader that misses the cache next loads a page that includes this post.
    await cache.invalidate(FEED_CACHE, authorId)
    await reads.wrote(authorId)
    return reply.code(201).send(post)
  })

  app.delete('/posts/:id', {
    schema: {
      operationId: 'deletePost',
      tags: ['feed'],
      summary: 'Delete your post: off your feed at once, off every other feed within seconds',
      params: PostIdParamsSchema,
      ...responses({ 204: { schema: z.null(), description: 'Deleted.' }, 404: 'No such post of yours (someone else\'s post is not found either).' })
    }
  }, async (request, reply) => {
    const authorId = request.user.id
    const postId = request.params.id
    const deleted = await db.begin(async (tx) => {
      if (!await markPostDeleted(tx, postId, authorId)) return false
      await enqueueJob(tx, FEED_JOB.removePost, { postId, authorId } satisfies RemovePostPayload)
      return true
    })
    if (!deleted) throw toProblem(new SocialError('post_not_found'))
    wakeWorkers(app.redis, request.log)
    await cache.invalidate(FEED_CACHE, authorId)
    await reads.wrote(authorId)
    return reply.code(204).send(null)
  })

  app.get('/feed', {
    schema: {
      operationId: 'getFeed',
      tags: ['feed'],
      summary: 'Your feed, newest first, with each post\'s author',
      querystring: FeedQuerySchema,
      ...responses({ 200: { schema: FeedPageSchema, description: 'One page, newest first; nextCursor is null on the last.' }, 400: 'The cursor is not one your feed gave you.' })
    }
  }, async (request) => {
    const userId = request.user.id
    const { limit, cursor } = request.query
    const after = feedPosition(cursors, userId, cursor)
    const load = async () => feedPage(cursors, userId, await feedPageQuery(db, userId, limit, after), limit)

    // Only the first page at the default limit is cached, under `feed:<userId>`: that is what nearly every
    // client asks for, and a single key per feed means a change to the feed (the owner's post or deletion here,
    // a fan-out, backfill or removal step in jobs.ts) invalidates exactly one key per feed it touched. Caching other
    // limits (or later pages) would need every variant found and deleted on each write; they are one index
    // range scan each, so they go to the database.
    //
    // The TTL is short (FEED_CACHE_TTL_S, 30 s by default; the cache plugin adds jitter): a feed is read
    // often and must look fresh. Changes to the feed invalidate the key, but changes to an author's name or
    // avatar do not (that would mean deleting every feed the author ever posted on), so the TTL is what
    // bounds how long a renamed author still shows under the old name.
    //
    // With a read replica, the cached page is still loaded from the primary: a fill from a lagging replica right
    // after an invalidation would put the old page back for a whole TTL. Other pages may come from the replica.
    if (after === undefined && limit === FEED_DEFAULT_LIMIT) {
      // The loader never returns null (an empty feed is an empty page); `?? load()` only satisfies the type.
      return (await cache.get(FEED_CACHE, userId, config.FEED_CACHE_TTL_S, load)) ?? load()
    }
    return reads.read(userId, async (sql) => feedPage(cursors, userId, await feedPageQuery(sql, userId, limit, after), limit))
  })
}
