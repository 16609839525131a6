import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod'
import { z } from 'zod'
import { enqueueJob, wakeWorkers } from '../../plugins/jobs/queue.ts'
import { responses } from '../../plugins/openapi/index.ts'
import { IdParamsSchema } from '../common/schemas.ts'
import { SocialError, toProblem } from './errors.ts'
import { FEED_JOB, type FollowPayload } from './feed-jobs.ts'
import { deleteFollow, followersPageQuery, followingPageQuery, followsPositionOf, insertFollow, toFollowedUser } from './repository.ts'
import { FollowsPageSchema, FollowsPositionSchema, FollowsQuerySchema } from './schemas.ts'

/**
 * Follows: whom a user follows decides whose posts reach their feed (routes/social/feed-jobs.ts delivers them). Following
 * and unfollowing change the feed through a job queued in the same transaction: the followee's 20 most recent posts
 * in, or all of their posts out. Both are per-principal rate limited like every authenticated route, and following
 * 10,000 users costs the follower 10,000 requests and the service 10,000 bounded backfills of 20 rows.
 */
export const followsRoutes: FastifyPluginAsyncZod = async (app) => {
  const { db, cursors, reads } = app

  app.put('/users/me/following/:id', {
    schema: {
      operationId: 'followUser',
      tags: ['follows'],
      summary: 'Follow a user (idempotent); their 20 most recent posts come into your feed',
      params: IdParamsSchema,
      ...responses({
        204: { schema: z.null(), description: 'Following (also when already following).' },
        400: 'The id is your own: you cannot follow yourself.',
        404: 'No such user.'
      })
    }
  }, async (request, reply) => {
    const followerId = request.user.id
    const followeeId = request.params.id
    if (followeeId === followerId) throw toProblem(new SocialError('follow_self'))
    const { exists, created } = await db.begin(async (tx) => {
      const follow = await insertFollow(tx, followerId, followeeId)
      if (follow.created) await enqueueJob(tx, FEED_JOB.backfill, { followerId, followeeId } satisfies FollowPayload)
      return follow
    })
    if (!exists) throw toProblem(new SocialError('user_not_found'))
    // Committed: the backfill may be claimed now.
    if (created) wakeWorkers(app.redis, request.log)
    await reads.wrote(followerId)
    return reply.code(204).send(null)
  })

  app.delete('/users/me/following/:id', {
    schema: {
      operationId: 'unfollowUser',
      tags: ['follows'],
      summary: 'Stop following a user (204 also when you did not); their posts leave your feed',
      params: IdParamsSchema,
      ...responses({ 204: { schema: z.null(), description: 'Not following (also when you were not).' } })
    }
  }, async (request, reply) => {
    const followerId = request.user.id
    const followeeId = request.params.id
    const removed = await db.begin(async (tx) => {
      if (!await deleteFollow(tx, followerId, followeeId)) return false
      await enqueueJob(tx, FEED_JOB.removeFollowee, { followerId, followeeId } satisfies FollowPayload)
      return true
    })
    if (removed) wakeWorkers(app.redis, request.log)
    await reads.wrote(followerId)
    return reply.code(204).send(null)
  })

  // Cursors are bound to the list and the caller (like the feed's): one from another user's list is a 400.
  const lists = [
    { path: '/users/me/following', operationId: 'listFollowing', summary: 'Whom you follow, most recent first', scope: 'following', query: followingPageQuery },
    { path: '/users/me/followers', operationId: 'listFollowers', summary: 'Who follows you, most recent first', scope: 'followers', query: followersPageQuery }
  ] as const
  for (const list of lists) {
    app.get(list.path, {
      schema: {
        operationId: list.operationId,
        tags: ['follows'],
        summary: list.summary,
        querystring: FollowsQuerySchema,
        ...responses({ 200: { schema: FollowsPageSchema, description: 'One page; nextCursor is null on the last.' }, 400: 'The cursor is not one this list gave you.' })
      }
    }, async (request) => {
      const userId = request.user.id
      const { limit, cursor } = request.query
      const scope = `${list.scope}:${userId}`
      const after = cursors.position(scope, cursor, FollowsPositionSchema)
      return reads.read(userId, async (sql) => cursors.page(scope, await list.query(sql, userId, limit, after), limit, toFollowedUser, followsPositionOf))
    })
  }
}
