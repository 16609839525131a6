import { z } from 'zod'
import { settingsGroup } from '../config-helpers.ts'

/** scrypt's N by default: OWASP's 2^17 with r = 8, p = 1 (128 MiB per hash). */
export const DEFAULT_COST = 1 << 17

export const isPowerOfTwo = (n: number) => Number.isInteger(n) && n > 1 && (n & (n - 1)) === 0

export const passwordsConfig = settingsGroup('Password hashing', 'scrypt on libuv\'s thread pool, with a bounded number of hashes at once so that a burst of logins cannot take every thread.', {
  PASSWORD_HASH_COST: z.coerce.number().int()
    .refine((n) => isPowerOfTwo(n) && n >= 1024 && n <= 1 << 20, { message: 'must be a power of two from 1024 (2^10) to 1048576 (2^20), such as 131072 (2^17)' })
    .default(DEFAULT_COST)
    .describe('scrypt cost N for password hashes (r = 8): a power of two from 1024 (2^10) to 1048576 (2^20); OWASP: 131072 = 2^17, 128 MiB per hash. Any other value would fail every hash, so it stops the boot instead. Stored hashes below it are upgraded at the user\'s next login.'),
  PASSWORD_HASH_PARALLELISM: z.coerce.number().int().min(1).max(16).default(1)
    .describe('scrypt parallelism p (1-16); a stored hash below it is upgraded too.'),
  PASSWORD_HASH_CONCURRENCY: z.coerce.number().int().min(1).max(64).default(2)
    .describe('Hashes each process runs at once (1-64); each takes a libuv thread and 128 x N x r bytes (128 MiB at the defaults).'),
  PASSWORD_HASH_QUEUE: z.coerce.number().int().min(0).max(10_000).default(32)
    .describe('Hashes that may wait for one of those (0-10000); beyond that signup, login and password change answer 503 with Retry-After rather than queue on libuv.')
})
