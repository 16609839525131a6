import { z } from 'zod'
import { boolean, settingsGroup } from '../config-helpers.ts'

const capacity = (fallback: number) => z.coerce.number().int().min(1).default(fallback)
const refill = (fallback: number) => z.coerce.number().positive().default(fallback)

export const rateLimitConfig = settingsGroup('Rate limits', 'Token buckets in Redis: per user by tier, per client on service clients, per client IP on the public routes.', {
  RATE_LIMIT_STANDARD_CAPACITY: capacity(60).describe('Bucket size for the `standard` tier.'),
  RATE_LIMIT_STANDARD_REFILL_PER_S: refill(1).describe('Tokens per second refilled for the `standard` tier.'),
  RATE_LIMIT_PRO_CAPACITY: capacity(600).describe('Bucket size for the `pro` tier.'),
  RATE_LIMIT_PRO_REFILL_PER_S: refill(10).describe('Tokens per second refilled for the `pro` tier.'),
  RATE_LIMIT_SERVICE_CAPACITY: capacity(6000)
    .describe('Bucket size per service client (the `service` tier, keyed by client id: back-office systems posting deposits and withdrawals in batches).'),
  RATE_LIMIT_SERVICE_REFILL_PER_S: refill(100).describe('Tokens per second refilled per service client.'),
  RATE_LIMIT_PUBLIC_CAPACITY: capacity(20).describe('Bucket size per client IP for POST /users and POST /auth/token (each its own bucket).'),
  RATE_LIMIT_PUBLIC_REFILL_PER_S: refill(20 / 60).describe('Tokens per second refilled per client IP on the public routes (20 a minute).'),
  RATE_LIMIT_FAIL_OPEN: boolean.default(true)
    .describe('With Redis unreachable: true keeps serving, false answers 503 (true/false/1/0).')
})
