import { createHash } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import type { Result } from 'ioredis'
import { serviceUnavailable } from '../../plugins/errors/index.ts'
import type { Metrics } from '../../plugins/metrics/index.ts'
import type { RedisClient } from '../../plugins/redis/index.ts'
import { traceRedis } from '../../plugins/tracing/index.ts'
import { IdentityError, toProblem } from './errors.ts'

declare module 'ioredis' {
  interface RedisCommander<Context> {
    loginAttempt: (key: string, maxFailures: number, windowMs: number) => Result<[number, number], Context>
    loginRefund: (key: string) => Result<number, Context>
  }
}

/**
 * Failed logins per account, from every address: one Redis counter per email, created by the window's first
 * attempt and expiring with the window (a fixed window: after `max` failures the email is refused until it
 * passes, whatever the password). An attempt takes its place before the password is checked, atomically, so
 * concurrent guesses cannot all pass a check that reads 9; a login that succeeds (or is never checked) gives its
 * place back. One key per call: valid on Redis Cluster. Returns {allowed, ms until the window ends}.
 */
const ATTEMPT_LUA = `
local max = tonumber(ARGV[1])
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count >= max then
  return { 0, redis.call('PTTL', KEYS[1]) }
end
count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return { 1, redis.call('PTTL', KEYS[1]) }
`

const REFUND_LUA = `
if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('DECR', KEYS[1]) <= 0 then redis.call('DEL', KEYS[1]) end
return 0
`

export interface LoginThrottle {
  /** Takes a place for one attempt at this email: { allowed: false, retryAfterMs } once the window is full. */
  attempt: (email: string) => Promise<{ allowed: true } | { allowed: false, retryAfterMs: number }>
  /** Gives the place back: the login succeeded, or its password was never checked. */
  refund: (email: string) => Promise<void>
}

export interface LoginThrottleOptions {
  maxFailures: number
  windowMs: number
}

// The email is hashed so that Redis holds no addresses; unknown emails get a counter exactly like known ones.
const keyOf = (email: string) => `login-failures:${createHash('sha256').update(email.toLowerCase()).digest('base64url')}`

export function createLoginThrottle (redis: RedisClient, options: LoginThrottleOptions): LoginThrottle {
  if (typeof redis.loginAttempt !== 'function') {
    redis.defineCommand('loginAttempt', { numberOfKeys: 1, lua: ATTEMPT_LUA })
    redis.defineCommand('loginRefund', { numberOfKeys: 1, lua: REFUND_LUA })
  }
  return {
    async attempt (email) {
      const [allowed, ttlMs] = await traceRedis('EVALSHA', 'login failures per account', () =>
        redis.loginAttempt(keyOf(email), options.maxFailures, options.windowMs))
      return allowed === 1 ? { allowed: true } : { allowed: false, retryAfterMs: ttlMs > 0 ? ttlMs : options.windowMs }
    },
    async refund (email) {
      await traceRedis('EVALSHA', 'login failures per account', () => redis.loginRefund(keyOf(email)))
    }
  }
}

export interface AccountGuard {
  /**
   * Takes this email's place for one password check, or throws 429 (with Retry-After and the RateLimit headers)
   * until the account's window passes. Returns false when Redis could not be asked and the guard fails open.
   */
  admit: (email: string) => Promise<boolean>
  /**
   * Gives the place back (the password was right, or never checked). Not awaited by the request: the answer does
   * not depend on it, and a hung Redis must cost a login one command timeout (the check), not two. Never throws.
   */
  refund: (email: string) => void
}

/** The throttle as the routes use it: Redis failures counted and logged, and open or closed like the rate limiter. */
export function createAccountGuard (redis: RedisClient, options: LoginThrottleOptions & { failOpen: boolean, onRedisError: (error: unknown) => void }): AccountGuard {
  const throttle = createLoginThrottle(redis, options)
  return {
    async admit (email) {
      let admitted
      try {
        admitted = await throttle.attempt(email)
      } catch (error) {
        options.onRedisError(error)
        // Like the per-IP limiter: with Redis down, serve (the per-IP limit and the hash queue still bound it) or 503.
        if (options.failOpen) return false
        throw serviceUnavailable('login throttle', error)
      }
      if (!admitted.allowed) {
        const retryAfterS = Math.max(1, Math.ceil(admitted.retryAfterMs / 1000))
        throw toProblem(new IdentityError('account_locked', { retryAfterS, maxFailures: options.maxFailures }))
      }
      return true
    },
    refund: (email) => { throttle.refund(email).catch(options.onRedisError) }
  }
}

/** The app's guard: its settings from the config, Redis failures counted as a dependency error and logged. */
export function accountGuard (app: FastifyInstance): AccountGuard {
  const metrics: Metrics = app.metrics
  let lastLogged = 0
  return createAccountGuard(app.redis, {
    maxFailures: app.config.LOGIN_MAX_FAILURES,
    windowMs: app.config.LOGIN_FAILURE_WINDOW_S * 1000,
    failOpen: app.config.RATE_LIMIT_FAIL_OPEN,
    onRedisError: (error) => {
      metrics.dependencyErrors.inc({ dependency: 'redis', operation: 'login_throttle' })
      const now = Date.now()
      if (now - lastLogged > 10_000) {
        lastLogged = now
        app.log.warn({ err: error, failOpen: app.config.RATE_LIMIT_FAIL_OPEN }, 'login throttle cannot reach redis')
      }
    }
  })
}
