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

interface FeedRow extends PostRow {
  /** created_at in UTC with microseconds, for the cursor (see FeedPositionSchema). */
  position_ts: string
}

/** One page of a feed: the posts, and where the next page starts (null on the last page). */
export interface FeedPageResult {
  posts: Post[]
  next: FeedPosition | null
}

export const toPost = (row: PostRow): Post => ({
  id: row.id,
  userId: row.user_id,
  body: row.body,
  createdAt: row.created_at.toISOString(),
  author: { id: row.author_id, name: row.author_name, avatarUrl: row.author_avatar_url }
})

// The query asks for one row more than the page holds: its presence alone says whether a next page exists, so
// the last page has a null cursor instead of leading the client to an empty page.
function toPageResult (rows: readonly FeedRow[], limit: number): FeedPageResult {
  const page = rows.slice(0, limit)
  const last = page.at(-1)
  return {
    posts: page.map(toPost),
    next: rows.length > limit && last !== undefined ? { t: last.position_ts, i: last.id } : null
  }
}

/**
 * The feed page statement, not yet executed (postgres.js runs a query when it is awaited), so scripts can embed
 * the very same text in `explain (...) ${feedPageQuery(...)}`.
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

export async function loadFeedPage (sql: Sql, userId: string, limit: number, after?: FeedPosition): Promise<FeedPageResult> {
  return toPageResult(await feedPageQuery(sql, userId, limit, after), limit)
}

/**
 * FOR BENCHMARKS AND TESTS ONLY, never used by a production route: the same page loaded the naive way, the posts
 * first and then one query per post for its author (1 + N round trips through PgBouncer). It exists so that the
 * benchmark can measure what the join saves and so that the span-count test demonstrably fails on an N+1.
 */
export async function loadFeedPageNPlusOne (sql: Sql, userId: string, limit: number, after?: FeedPosition): Promise<FeedPageResult> {
  const posts = await sql<Omit<FeedRow, 'author_name' | 'author_avatar_url'>[]>`
    select p.id, p.user_id, p.author_id, p.body, p.created_at,
           to_char(p.created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as position_ts
      from posts p
     where p.user_id = ${userId}
       ${after === undefined ? sql`` : sql`and (p.created_at, p.id) < (${after.t}::text::timestamptz, ${after.i}::bigint)`}
     order by p.created_at desc, p.id desc
     limit ${limit + 1}`
  const rows: FeedRow[] = []
  for (const post of posts.slice(0, limit)) {
    // Deliberately sequential, one round trip per post: this is the anti-pattern being measured.
    const [author] = await sql<{ name: string, avatar_url: string | null }[]>`
      select name, avatar_url from users where id = ${post.author_id}`
    rows.push({ ...post, author_name: author?.name ?? '', author_avatar_url: author?.avatar_url ?? null })
  }
  // The look-ahead row only says whether there is a next page; it needs no author.
  const lookAhead = posts[limit]
  if (lookAhead !== undefined) rows.push({ ...lookAhead, author_name: '', author_avatar_url: null })
  return toPageResult(rows, limit)
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
