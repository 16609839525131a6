import type { Sql, TransactionSql } from '../../plugins/database/index.ts'
import type { FeedPosition, FollowedUser, FollowsPosition, Post } from './schemas.ts'

// Posts and the feed page

interface PostRow {
  id: string
  body: string
  created_at: Date
  author_id: string
  author_name: string
  author_avatar_url: string | null
}

export interface FeedRow extends PostRow {
  /** created_at in UTC with microseconds, for the cursor (see FeedPositionSchema). */
  position_ts: string
}

export const toPost = (row: PostRow): Post => ({
  id: row.id,
  body: row.body,
  createdAt: row.created_at.toISOString(),
  author: { id: row.author_id, name: row.author_name, avatarUrl: row.author_avatar_url }
})

/** Where the next page starts after this row (FeedPositionSchema). */
export const feedPositionOf = (row: FeedRow): FeedPosition => ({ t: row.position_ts, i: row.id })

/**
 * The feed page statement with its look-ahead row (see cursors.page), not yet executed (postgres.js runs a query
 * when it is awaited), so scripts can embed the very same text in `explain (...) ${feedPageQuery(...)}`.
 *
 * Keyset pagination: `(created_at, post_id) < (cursor)` as a row-value comparison, ordered `created_at desc, post_id
 * desc`, matches feed_items_page_idx (feed_user_id, created_at desc, post_id desc) column for column. It becomes an
 * Index Cond, so every page is one index range scan of `limit + 1` entries however deep it is (OFFSET would read and
 * discard all earlier rows). The post and its author come from the same statement (primary-key joins), never from
 * one query per post. A post marked deleted is skipped here, so it leaves every feed page at once, before the job
 * has removed its feed rows.
 *
 * The cursor time is sent as text and cast by PostgreSQL (`::text::timestamptz`): a parameter PostgreSQL types
 * as timestamptz is serialized by postgres.js through a JS Date, which silently drops the microseconds.
 */
export function feedPageQuery (sql: Sql, userId: string, limit: number, after?: FeedPosition) {
  return sql<FeedRow[]>`
    select p.id, p.body, p.created_at,
           to_char(f.created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as position_ts,
           a.id as author_id, a.name as author_name, a.avatar_url as author_avatar_url
      from feed_items f
      join posts p on p.id = f.post_id
      join users a on a.id = p.author_id
     where f.feed_user_id = ${userId}
       and p.deleted_at is null
       ${after === undefined ? sql`` : sql`and (f.created_at, f.post_id) < (${after.t}::text::timestamptz, ${after.i}::bigint)`}
     order by f.created_at desc, f.post_id desc
     limit ${limit + 1}`
}

/**
 * Writes a post by `authorId` and puts it on the author's own feed, in one statement (inside the caller's
 * transaction, which also queues the fan-out). The author's public fields come from a CTE joined to the returned
 * row; null when the author no longer exists (a deleted account with a live token).
 */
export async function insertPost (tx: TransactionSql, post: { authorId: string, body: string }): Promise<Post | null> {
  const [row] = await tx<PostRow[]>`
    with author as (
      select id, name, avatar_url from users where id = ${post.authorId}
    ), inserted as (
      insert into posts (author_id, body)
      select author.id, ${post.body} from author
      returning id, author_id, body, created_at
    ), on_own_feed as (
      insert into feed_items (feed_user_id, post_id, created_at)
      select author_id, id, created_at from inserted
    )
    select i.id, i.body, i.created_at,
           a.id as author_id, a.name as author_name, a.avatar_url as author_avatar_url
      from inserted i
      join author a on a.id = i.author_id`
  return row === undefined ? null : toPost(row)
}

/**
 * Marks the caller's own post deleted and takes it off the author's feed; false when there is no such live post
 * of theirs (someone else's post, an unknown id or one already deleted all look the same: 404).
 */
export async function markPostDeleted (tx: TransactionSql, postId: string, authorId: string): Promise<boolean> {
  const [marked] = await tx`
    update posts set deleted_at = now()
     where id = ${postId} and author_id = ${authorId} and deleted_at is null
    returning id`
  if (marked === undefined) return false
  await tx`delete from feed_items where feed_user_id = ${authorId} and post_id = ${postId}`
  return true
}

// Follows

export interface FollowsRow {
  id: string
  name: string
  avatar_url: string | null
  position_ts: string
}

export const toFollowedUser = (row: FollowsRow): FollowedUser => ({ id: row.id, name: row.name, avatarUrl: row.avatar_url })
export const followsPositionOf = (row: FollowsRow): FollowsPosition => ({ t: row.position_ts, i: row.id })

/**
 * Follows `followeeId` (one statement): `exists` is false for an unknown user (404; also when the caller's own
 * row is gone, a deleted account with a live token, instead of a foreign-key error), `created` false when the
 * follow was already there (the PUT is idempotent and queues nothing the second time).
 */
export async function insertFollow (tx: TransactionSql, followerId: string, followeeId: string): Promise<{ exists: boolean, created: boolean }> {
  const [row] = await tx<{ exists: boolean, created: boolean }[]>`
    with target as (
      select t.id from users t join users f on f.id = ${followerId} where t.id = ${followeeId}
    ), created as (
      insert into follows (follower_id, followee_id)
      select ${followerId}, id from target
      on conflict do nothing
      returning 1
    )
    select exists (select 1 from target) as exists, exists (select 1 from created) as created`
  return row ?? { exists: false, created: false }
}

/** Unfollows; true when there was a follow to remove. */
export async function deleteFollow (tx: TransactionSql, followerId: string, followeeId: string): Promise<boolean> {
  const rows = await tx`delete from follows where follower_id = ${followerId} and followee_id = ${followeeId} returning 1`
  return rows.length > 0
}

const position = (sql: Sql, column: string, after: FollowsPosition | undefined) => after === undefined
  ? sql``
  : sql`and (f.created_at, ${sql(column)}) < (${after.t}::text::timestamptz, ${after.i}::uuid)`

/**
 * Whom `userId` follows, newest follow first, with the look-ahead row: one range scan of follows_following_idx
 * (follower_id, created_at desc, followee_id desc) joined to users by primary key.
 */
export function followingPageQuery (sql: Sql, userId: string, limit: number, after?: FollowsPosition) {
  return sql<FollowsRow[]>`
    select u.id, u.name, u.avatar_url,
           to_char(f.created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as position_ts
      from follows f
      join users u on u.id = f.followee_id
     where f.follower_id = ${userId}
       ${position(sql, 'f.followee_id', after)}
     order by f.created_at desc, f.followee_id desc
     limit ${limit + 1}`
}

/** Who follows `userId`, newest first: the same shape over follows_followers_idx. */
export function followersPageQuery (sql: Sql, userId: string, limit: number, after?: FollowsPosition) {
  return sql<FollowsRow[]>`
    select u.id, u.name, u.avatar_url,
           to_char(f.created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as position_ts
      from follows f
      join users u on u.id = f.follower_id
     where f.followee_id = ${userId}
       ${position(sql, 'f.follower_id', after)}
     order by f.created_at desc, f.follower_id desc
     limit ${limit + 1}`
}

// The feed jobs' steps (routes/social/feed-jobs.ts): each one bounded statement or transaction

// Races are settled by row locks taken inside the steps, not by the order jobs happen to run in:
// - a fan-out or backfill step locks the follows rows it delivers through (FOR KEY SHARE) and the post rows it
//   delivers (FOR SHARE). An unfollow (DELETE of the follows row) or a post deletion (UPDATE of deleted_at) waits
//   for that step to commit, and the removal job it queues is only visible after that, so it sees and removes what
//   the step inserted. A step that starts after the unfollow or the deletion committed no longer finds the follows
//   row or the live post, and inserts nothing;
// - the unfollow removal deletes nothing when the follows row exists again (a re-follow in between), checked in the
//   same statement as the delete.

/**
 * One fan-out batch: the next `batchSize` followers (in id order) after `payload.after` get the post, if it is still
 * live. `last` is the batch's last follower (where the next batch starts), null when none was left or the post is
 * no longer live.
 */
export async function fanOutBatch (sql: Sql, payload: { postId: string, authorId: string, after: string | null }, batchSize: number): Promise<{ delivered: string[], last: string | null }> {
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

/** One batch of a deleted post's feed rows removed; returns the feeds they were on. */
export async function deleteFeedItemsOfPost (sql: Sql, postId: string, batchSize: number): Promise<string[]> {
  const removed = await sql<{ feed_user_id: string }[]>`
      delete from feed_items
       where post_id = ${postId}
         and feed_user_id in (select feed_user_id from feed_items where post_id = ${postId} limit ${batchSize})
      returning feed_user_id::text`
  return removed.map((row) => row.feed_user_id)
}

/** Deletes a post marked deleted, once its feed rows are gone. */
export async function deleteMarkedPost (sql: Sql, postId: string): Promise<void> {
  await sql`delete from posts where id = ${postId} and deleted_at is not null`
}

/**
 * Brings the followee's `postLimit` most recent live posts into the follower's feed, while the follow still exists;
 * returns how many feed rows it inserted.
 */
export async function backfillFeed (sql: Sql, followerId: string, followeeId: string, postLimit: number): Promise<number> {
  return sql.begin(async (tx) => {
    const [follow] = await tx`
        select 1 from follows where follower_id = ${followerId} and followee_id = ${followeeId} for key share`
    if (follow === undefined) return 0
    const rows = await tx`
        with recent as (
          select id, created_at from posts
           where author_id = ${followeeId} and deleted_at is null
           order by created_at desc, id desc
           limit ${postLimit}
             for share
        )
        insert into feed_items (feed_user_id, post_id, created_at)
        select ${followerId}, id, created_at from recent
        on conflict do nothing
        returning post_id`
    return rows.length
  })
}

/**
 * One batch of the followee's posts removed from the follower's feed, unless the follower follows them again by now;
 * returns how many rows it deleted.
 */
export async function deleteFeedItemsOfFollowee (sql: Sql, followerId: string, followeeId: string, batchSize: number): Promise<number> {
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
  return removed.length
}
