import type { Sql } from '../../plugins/database.ts'
import type { FeedPosition, Post } from './schemas.ts'

interface PostRow {
  id: string
  user_id: string
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
  userId: row.user_id,
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
 * Keyset pagination: `(created_at, id) < (cursor)` as a row-value comparison, ordered `created_at desc, id desc`,
 * matches posts_feed_idx (user_id, created_at desc, id desc) column for column. It becomes an Index Cond, so every
 * page is one index range scan of `limit + 1` entries however deep it is (OFFSET would read and discard all
 * earlier rows). The author comes from the same statement (join users), never from one query per post.
 *
 * The cursor time is sent as text and cast by PostgreSQL (`::text::timestamptz`): a parameter PostgreSQL types
 * as timestamptz is serialized by postgres.js through a JS Date, which silently drops the microseconds.
 */
export function feedPageQuery (sql: Sql, userId: string, limit: number, after?: FeedPosition) {
  return sql<FeedRow[]>`
    select p.id, p.user_id, p.body, p.created_at,
           to_char(p.created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as position_ts,
           a.id as author_id, a.name as author_name, a.avatar_url as author_avatar_url
      from posts p
      join users a on a.id = p.author_id
     where p.user_id = ${userId}
       ${after === undefined ? sql`` : sql`and (p.created_at, p.id) < (${after.t}::text::timestamptz, ${after.i}::bigint)`}
     order by p.created_at desc, p.id desc
     limit ${limit + 1}`
}

/**
 * Puts a post on `feedUserId`'s feed, written by `authorId`, in one statement (one round trip): the INSERT ...
 * SELECT finds no row when the feed owner does not exist, so nothing is written and null comes back (404 for the
 * route) without a foreign-key error; the author's public fields come from a CTE joined to the returned row.
 */
export async function insertPost (sql: Sql, post: { feedUserId: string, authorId: string, body: string }): Promise<Post | null> {
  const [row] = await sql<PostRow[]>`
    with author as (
      select id, name, avatar_url from users where id = ${post.authorId}
    ), inserted as (
      insert into posts (user_id, author_id, body)
      select owner.id, author.id, ${post.body}
        from users owner
       cross join author
       where owner.id = ${post.feedUserId}
      returning id, user_id, author_id, body, created_at
    )
    select i.id, i.user_id, i.body, i.created_at,
           a.id as author_id, a.name as author_name, a.avatar_url as author_avatar_url
      from inserted i
      join author a on a.id = i.author_id`
  return row === undefined ? null : toPost(row)
}
