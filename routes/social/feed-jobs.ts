import { z } from 'zod'
import type { CacheAside } from '../../plugins/cache/index.ts'
import type { Sql } from '../../plugins/database/index.ts'
import type { JobHandler, JobHandlers, JobResult } from '../../plugins/jobs/queue.ts'

/**
 * Feed delivery off the request path (fan-out on write). Every handler is one bounded, set-based step in its own
 * transaction: a step either commits whole or not at all, and the payload the worker stores after a `continue` says
 * where the next one starts, so a worker killed at any point resumes without gaps; writes are ON CONFLICT DO NOTHING
 * or deletes, so a step run twice (at least once delivery) changes nothing the second time.
 *
 * Races are settled by row locks taken inside the steps, not by the order jobs happen to run in:
 * - a fan-out or backfill step locks the follows rows it delivers through (FOR KEY SHARE) and the post rows it
 *   delivers (FOR SHARE). An unfollow (DELETE of the follows row) or a post deletion (UPDATE of deleted_at) waits
 *   for that step to commit, and the removal job it queues is only visible after that, so it sees and removes what
 *   the step inserted. A step that starts after the unfollow or the deletion committed no longer finds the follows
 *   row or the live post, and inserts nothing;
 * - the unfollow removal deletes nothing when the follows row exists again (a re-follow in between), checked in the
 *   same statement as the delete.
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

/** One fan-out batch: the next `batchSize` followers (in id order) get the post, if it is still live. */
export async function fanOutBatch (sql: Sql, payload: FanOutPayload, batchSize: number): Promise<{ delivered: string[], last: string | null }> {
  return sql.begin(async (tx) => {
    const [live] = await tx`select 1 from posts where id = ${payload.postId} and deleted_at is null for share`
    if (live === undefined) return { delivered: [], last: null }
    const [row] = await tx<{ last: string | null, delivered: string[] }[]>`
      with batch as (
        select follower_id from follows
         where followee_id = ${payload.authorId}
           ${payload.after === null ? tx`` : tx`and follower_id > ${payload.after}::uuid`}
         order by follower_id
         limit ${batchSize}
           for key share
      ), inserted as (
        insert into feed_items (feed_user_id, post_id, created_at)
        select b.follower_id, p.id, p.created_at
          from batch b
         cross join posts p
         where p.id = ${payload.postId}
        on conflict do nothing
        returning feed_user_id
      )
      select (select follower_id from batch order by follower_id desc limit 1) as last,
             coalesce((select json_agg(feed_user_id) from inserted), '[]') as delivered`
    return { delivered: row?.delivered ?? [], last: row?.last ?? null }
  })
}

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
    const removed = await sql<{ feed_user_id: string }[]>`
      delete from feed_items
       where post_id = ${postId}
         and feed_user_id in (select feed_user_id from feed_items where post_id = ${postId} limit ${batchSize})
      returning feed_user_id::text`
    if (removed.length > 0) {
      await cache.invalidateMany(FEED_CACHE, removed.map((row) => row.feed_user_id))
      return { status: 'continue', payload }
    }
    await sql`delete from posts where id = ${postId} and deleted_at is not null`
    return done
  }

  // One step: the followee's most recent live posts, while the follow still exists (locks as described above).
  const backfill: JobHandler<FollowPayload> = async (job, { sql }) => {
    const { followerId, followeeId } = FollowPayloadSchema.parse(job.payload)
    const inserted = await sql.begin(async (tx) => {
      const [follow] = await tx`
        select 1 from follows where follower_id = ${followerId} and followee_id = ${followeeId} for key share`
      if (follow === undefined) return 0
      const rows = await tx`
        with recent as (
          select id, created_at from posts
           where author_id = ${followeeId} and deleted_at is null
           order by created_at desc, id desc
           limit ${BACKFILL_POSTS}
             for share
        )
        insert into feed_items (feed_user_id, post_id, created_at)
        select ${followerId}, id, created_at from recent
        on conflict do nothing
        returning post_id`
      return rows.length
    })
    if (inserted > 0) await cache.invalidateMany(FEED_CACHE, [followerId])
    return done
  }

  // All of the followee's posts leave the follower's feed, in batches, unless they follow again by now.
  const removeFollowee: JobHandler<FollowPayload> = async (job, { sql }) => {
    const payload = FollowPayloadSchema.parse(job.payload)
    const { followerId, followeeId } = payload
    const removed = await sql`
      delete from feed_items
       where feed_user_id = ${followerId}
         and post_id in (
           select f.post_id from feed_items f
             join posts p on p.id = f.post_id
            where f.feed_user_id = ${followerId} and p.author_id = ${followeeId}
            limit ${batchSize})
         and not exists (select 1 from follows where follower_id = ${followerId} and followee_id = ${followeeId})
      returning post_id`
    if (removed.length === 0) return done
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
