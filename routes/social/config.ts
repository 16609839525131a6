import { z } from 'zod'
import { settingsGroup } from '../../plugins/config-helpers.ts'

export const socialConfig = settingsGroup('Feed', 'Follows and the feed: each post is fanned out to its author\'s followers\' feeds by a job.', {
  FEED_CACHE_TTL_S: z.coerce.number().int().min(1).default(30)
    .describe('Feed first-page cache TTL in seconds (at least 1; CACHE_JITTER applies too).'),
  FEED_FAN_OUT_BATCH: z.coerce.number().int().min(1).max(10_000).default(1000)
    .describe('Follower feeds one fan-out (or removal) step writes in one INSERT ... SELECT, one transaction (1-10000): it bounds each step\'s locks and duration. The job stores its cursor after each step, so a worker that dies loses at most one step\'s work (redone, once).')
})
