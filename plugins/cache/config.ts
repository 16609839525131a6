import { z } from 'zod'
import { settingsGroup } from '../config-helpers.ts'

export const cacheConfig = settingsGroup('Cache', 'Cache-aside in Redis, and the near cache: hot entries also held in each API process, invalidated by Redis.', {
  CACHE_TTL_S: z.coerce.number().int().min(1).default(300)
    .describe('User profile cache TTL in seconds (at least 1).'),
  CACHE_JITTER: z.coerce.number().min(0).max(1).default(0.1)
    .describe('Random extra TTL as a fraction of the TTL (0-1; 0.1: up to +10 %), so entries written together do not expire together.'),
  CACHE_NEAR_MAX_ENTRIES: z.coerce.number().int().min(0).max(1_000_000).default(10_000)
    .describe('Cache entries also held in each API process (0-1000000; 0 turns the near cache off); Redis tells every process at once when an entry it holds changes (CLIENT TRACKING). Single Redis only: off on a Cluster.'),
  CACHE_NEAR_MAX_AGE_MS: z.coerce.number().int().min(1).max(60_000).default(1000)
    .describe('Longest time in ms a near-cache entry is served without asking Redis (1-60000).')
})
