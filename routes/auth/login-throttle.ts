import { createHash } from 'node:crypto'
import type { Result } from 'ioredis'
import type { RedisClient } from '../../plugins/redis.ts'
import { traceRedis } from '../../plugins/tracing.ts'

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
