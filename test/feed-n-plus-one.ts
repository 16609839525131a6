import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod'
import type { Sql } from '../plugins/database/index.ts'
import { responses } from '../plugins/openapi/index.ts'
import { feedPage, feedPosition } from '../routes/social/feed.ts'
import type { FeedRow } from '../routes/social/repository.ts'
import { FeedPageSchema, FeedQuerySchema, type FeedPosition } from '../routes/social/schemas.ts'

/**
 * The feed page loaded the naive way: the feed's posts first (feed rows joined to posts), then one query per post for its author (1 + N round trips
 * through PgBouncer). It exists so that the benchmark can measure what the join saves and so that the span-count
 * test demonstrably fails on an N+1. Rows come back with the same look-ahead row as feedPageQuery().
 */
export async function feedPageRowsNPlusOne (sql: Sql, userId: string, limit: number, after?: FeedPosition): Promise<FeedRow[]> {
  const posts = await sql<Omit<FeedRow, 'author_name' | 'author_avatar_url'>[]>`
    select p.id, p.author_id, p.body, p.created_at,
           to_char(f.created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as position_ts
      from feed_items f
      join posts p on p.id = f.post_id
     where f.feed_user_id = ${userId}
       and p.deleted_at is null
       ${after === undefined ? sql`` : sql`and (f.created_at, f.post_id) < (${after.t}::text::timestamptz, ${after.i}::bigint)`}
     order by f.created_at desc, f.post_id desc
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
  return rows
}

/**
 * BENCHMARKS AND TESTS ONLY. `GET /bench/feed-n-plus-one` serves the caller's feed like `GET /feed` but through
 * the N+1 loader and without the cache. app.ts never registers it: a test or benchmark registers it on its own
 * app before `ready()`. It is private like every other route and hidden from the OpenAPI document.
 */
export const feedNPlusOneRoutes: FastifyPluginAsyncZod = async (app) => {
  const { db, cursors } = app

  app.get('/bench/feed-n-plus-one', {
    schema: {
      hide: true,
      tags: ['bench'],
      summary: 'The feed loaded with one query per author (benchmark baseline)',
      querystring: FeedQuerySchema,
      ...responses({ 200: { schema: FeedPageSchema, description: 'One page of the feed.' } })
    }
  }, async (request) => {
    const userId = request.user.id
    const { limit, cursor } = request.query
    const rows = await feedPageRowsNPlusOne(db, userId, limit, feedPosition(cursors, userId, cursor))
    return feedPage(cursors, userId, rows, limit)
  })
}
