import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod'

import { commonErrors } from '../common/schemas.ts'
import { decodeFeedCursor, toFeedPage } from './index.ts'
import { loadFeedPageNPlusOne } from './queries.ts'
import { FeedPageSchema, FeedQuerySchema } from './schemas.ts'

/**
 * BENCHMARKS AND TESTS ONLY. `GET /bench/feed-n-plus-one` serves the caller's feed like `GET /feed` but through
 * the N+1 loader and without the cache, so a benchmark can compare the two and the span-count test can prove it
 * would catch an N+1. app.ts never registers it: a test or benchmark registers it on its own app before
 * `ready()`. It is private like every other route and hidden from the OpenAPI document.
 */
export const feedNPlusOneRoutes: FastifyPluginAsyncZod = async (app) => {
  const { db, cursors } = app

  app.get('/bench/feed-n-plus-one', {
    schema: {
      hide: true,
      tags: ['bench'],
      summary: 'The feed loaded with one query per author (benchmark baseline)',
      querystring: FeedQuerySchema,
      response: { 200: FeedPageSchema, ...commonErrors }
    }
  }, async (request) => {
    const userId = request.user.id
    const { limit, cursor } = request.query
    const after = decodeFeedCursor(cursors, userId, cursor)
    return toFeedPage(cursors, userId, await loadFeedPageNPlusOne(db, userId, limit, after))
  })
}
