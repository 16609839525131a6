import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { feedRoutes } from './feed.ts'
import { createFeedJobHandlers } from './feed-jobs.ts'
import { followsRoutes } from './follows.ts'

/**
 * Social: follows, posts and the feed, with the jobs that fan posts out to followers' feeds. This file is the
 * domain's public face: its two plugins.
 */

/** What runs whether or not this process serves HTTP: the feed lane of the job worker. */
async function socialServices (app: FastifyInstance) {
  // Fan-out, backfill and removals clear the cached first page of each feed they change.
  app.jobs.addLane('feed', {
    handlers: createFeedJobHandlers({ cache: app.cache, batchSize: app.config.FEED_FAN_OUT_BATCH }),
    concurrency: app.config.WORKER_FEED_CONCURRENCY
  })
}

async function socialRoutes (app: FastifyInstance) {
  await app.register(followsRoutes)
  await app.register(feedRoutes)
  app.warmUp.add((who) => ({ method: 'GET', url: '/feed', authorization: who.user.authorization }))
}

export const social = {
  services: fp(socialServices, { name: 'social', dependencies: ['jobs', 'cache'] }),
  routes: fp(socialRoutes, { name: 'social-routes', dependencies: ['warm-up'] })
}
