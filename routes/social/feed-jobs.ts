import { z } from 'zod'
import type { CacheAside } from '../../plugins/cache/index.ts'
import type { JobHandler, JobHandlers, JobResult } from '../../plugins/jobs/queue.ts'
import { backfillFeed, deleteFeedItemsOfFollowee, deleteFeedItemsOfPost, deleteMarkedPost, fanOutBatch } from './repository.ts'

/**
 * Feed delivery off the request path (fan-out on write). Every handler is one bounded, set-based step in its own
 * transaction: a step either commits whole or not at all, and the payload the worker stores after a `continue` says
 * where the next one starts, so a worker killed at any point resumes without gaps; writes are ON CONFLICT DO NOTHING
 * or deletes, so a step run twice (at least once delivery) changes nothing the second time.
 *
 * Races are settled by row locks the steps take (routes/social/repository.ts, the feed jobs' statements), not by the
 * order jobs happen to run in.
 *
 * The cached first page of a feed (FEED_CACHE) is invalidated after each step commits, for exactly the feeds whose
 * rows the step inserted or deleted (RETURNING), in one pipelined call per step: a fan-out batch of 1,000 feeds is
 * 1,000 single-key UNLINKs sent together (cluster-safe), never a scan, and never more than one batch's worth. A
 * worker that dies between a step's commit and its invalidation (or with Redis down) leaves those pages stale for at
 * most FEED_CACHE_TTL_S, as a route whose invalidation fails after its commit does.
 */

export const FEED_JOB = {
  fanOut: 'feed.fan_out',
  removePost: 'feed.remove_post',
  backfill: 'feed.backfill',
  removeFollowee: 'feed.remove_followee'
} as const

/** The cache the first feed page lives in (routes/social/feed.ts), keyed by the feed owner's id. */
export const FEED_CACHE = 'feed'

/** How many posts of a newly followed user are brought into the follower's feed. */
export const BACKFILL_POSTS = 20

const PostIdSchema = z.string().regex(/^[1-9][0-9]{0,18}$/)

export const FanOutPayloadSchema = z.object({
  postId: PostIdSchema,
  authorId: z.uuid(),
  /** The last follower id delivered to (keyset cursor over follows_fan_out_idx); null before the first batch. */
  after: z.uuid().nullable()
})
/** The author is carried for the logs and for scoping (whose jobs these are); the post id is all the step needs. */
export const RemovePostPayloadSchema = z.object({ postId: PostIdSchema, authorId: z.uuid() })
export const FollowPayloadSchema = z.object({ followerId: z.uuid(), followeeId: z.uuid() })

export type FanOutPayload = z.infer<typeof FanOutPayloadSchema>
export type RemovePostPayload = z.infer<typeof RemovePostPayloadSchema>
export type FollowPayload = z.infer<typeof FollowPayloadSchema>

export interface FeedJobOptions {
  cache: Pick<CacheAside, 'invalidateMany'>
  /** Feeds written (or rows deleted) per step: bounds each transaction's locks and duration. */
  batchSize?: number
}

const done: JobResult = { status: 'done' }

export function createFeedJobHandlers (options: FeedJobOptions): JobHandlers {
  const { cache } = options
  const batchSize = options.batchSize ?? 1000

  const fanOut: JobHandler<FanOutPayload> = async (job, { sql }) => {
    const payload = FanOutPayloadSchema.parse(job.payload)
    const { delivered, last } = await fanOutBatch(sql, payload, batchSize)
    await cache.invalidateMany(FEED_CACHE, delivered)
    // Done only after a batch found no follower left: a short batch may be short because rows were skipped.
    return last === null ? done : { status: 'continue', payload: { ...payload, after: last } }
  }

  // The post is already off every feed page (the page query skips deleted posts); this removes its rows, batch by
  // batch, so each cached page that held it is invalidated, and finally the post itself.
  const removePost: JobHandler<RemovePostPayload> = async (job, { sql }) => {
    const payload = RemovePostPayloadSchema.parse(job.payload)
    const { postId } = payload
    const feeds = await deleteFeedItemsOfPost(sql, postId, batchSize)
    if (feeds.length > 0) {
      await cache.invalidateMany(FEED_CACHE, feeds)
      return { status: 'continue', payload }
    }
    await deleteMarkedPost(sql, postId)
    return done
  }

  // One step: the followee's most recent live posts, while the follow still exists.
  const backfill: JobHandler<FollowPayload> = async (job, { sql }) => {
    const { followerId, followeeId } = FollowPayloadSchema.parse(job.payload)
    const inserted = await backfillFeed(sql, followerId, followeeId, BACKFILL_POSTS)
    if (inserted > 0) await cache.invalidateMany(FEED_CACHE, [followerId])
    return done
  }

  // All of the followee's posts leave the follower's feed, in batches, unless they follow again by now.
  const removeFollowee: JobHandler<FollowPayload> = async (job, { sql }) => {
    const payload = FollowPayloadSchema.parse(job.payload)
    const { followerId, followeeId } = payload
    const removed = await deleteFeedItemsOfFollowee(sql, followerId, followeeId, batchSize)
    if (removed === 0) return done
    await cache.invalidateMany(FEED_CACHE, [followerId])
    return { status: 'continue', payload }
  }

  return {
    [FEED_JOB.fanOut]: fanOut,
    [FEED_JOB.removePost]: removePost,
    [FEED_JOB.backfill]: backfill,
    [FEED_JOB.removeFollowee]: removeFollowee
  }
}
