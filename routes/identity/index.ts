import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { MAX_ACCESS_TOKEN_AGE_S } from '../../plugins/auth/index.ts'
import { authRoutes } from './auth.ts'
import { purgeSessions } from './repository.ts'
import { usersRoutes } from './users.ts'

/**
 * Identity: users, their passwords and sessions, the OAuth token endpoint, service clients and the login throttle.
 * This file is the domain's public face: what other modules may use of it, and its two plugins.
 */

/** What runs whether or not this process serves HTTP: the purge of what sessions leave behind. */
async function identityServices (app: FastifyInstance) {
  app.housekeeping.add({
    operation: 'session_purge',
    done: 'purged ended sessions, used refresh tokens and old revocations',
    // Revocations are kept a little past the longest access token life (one hour), for clock differences.
    run: (batch) => purgeSessions(app.db, { refreshTokenTtlS: app.config.REFRESH_TOKEN_TTL_S, maxTokenAgeS: MAX_ACCESS_TOKEN_AGE_S + 300, batch })
  })
}

async function identityRoutes (app: FastifyInstance) {
  await app.register(authRoutes)
  await app.register(usersRoutes)
  // Someone's profile: a made-up id, so the read misses the cache and the database and answers 404.
  app.warmUp.add((who) => ({ method: 'GET', url: `/users/${who.otherUserId}`, authorization: who.user.authorization }))
}

export const identity = {
  services: fp(identityServices, { name: 'identity', dependencies: ['database', 'housekeeping'] }),
  routes: fp(identityRoutes, { name: 'identity-routes', dependencies: ['warm-up'] })
}
