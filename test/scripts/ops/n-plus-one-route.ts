// A feed page loaded the naive way, for the diagnose test to find: the caller's feed posts, then one author lookup
// per post (1 + N statements). The test registers it on its own app; app.ts never serves it. Its URL and its two
// statements are what the test's assertions name, so they match the benchmark's baseline route of the same URL.
import type { FastifyPluginAsync } from 'fastify'

export const feedNPlusOneRoutes: FastifyPluginAsync = async (app) => {
  app.get('/bench/feed-n-plus-one', { schema: { hide: true } }, async (request) => {
    const posts = await app.db<Array<{ id: string, author_id: string, body: string }>>`
      select p.id, p.author_id, p.body, p.created_at
        from feed_items f join posts p on p.id = f.post_id
       where f.feed_user_id = ${request.user.id} and p.deleted_at is null
       order by f.created_at desc, f.post_id desc
       limit 21`
    const data = []
    for (const post of posts) {
      // Deliberately sequential, one round trip per post: the anti-pattern diagnose must name.
      const [author] = await app.db<Array<{ name: string }>>`select name, avatar_url from users where id = ${post.author_id}`
      data.push({ id: post.id, body: post.body, authorName: author?.name ?? '' })
    }
    return { data }
  })
}
