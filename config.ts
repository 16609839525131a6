import { z } from 'zod'

// Used only outside production, so `npm start` works on a fresh machine; production must set JWT_SECRET.
const DEV_JWT_SECRET = 'ledger-api-dev-only-secret-never-use-in-production'

const boolean = z.enum(['true', 'false', '1', '0']).transform((v) => v === 'true' || v === '1')
const list = z.string().transform((v) => v.split(',').map((s) => s.trim()).filter(Boolean))
const url = (protocols: string[]) => z.string().refine((value) => {
  try {
    return protocols.includes(new URL(value).protocol)
  } catch {
    return false
  }
}, { message: `must be a URL starting with ${protocols.join(' or ')}//` })

export const configSchema = z.object({
  NODE_ENV: z.enum(['development', 'production', 'test']).default('development'),
  HOST: z.string().min(1).default('127.0.0.1'),
  PORT: z.coerce.number().int().min(0).max(65535).default(3000),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),

  DATABASE_URL: url(['postgres:', 'postgresql:']),
  DATABASE_DIRECT_URL: url(['postgres:', 'postgresql:']).optional(),
  DATABASE_POOL_MAX: z.coerce.number().int().min(1).max(100).default(10),
  DATABASE_IDLE_TIMEOUT_S: z.coerce.number().int().min(0).default(30),
  DATABASE_CONNECT_TIMEOUT_S: z.coerce.number().int().min(1).max(60).default(5),

  REDIS_URL: url(['redis:', 'rediss:']),
  REDIS_COMMAND_TIMEOUT_MS: z.coerce.number().int().min(10).max(60_000).default(500),

  JWT_SECRET: z.string().min(32, 'must be at least 32 characters').optional(),
  JWT_ISSUER: z.string().min(1).default('ledger-api'),
  JWT_AUDIENCE: z.string().min(1).default('ledger-api'),
  JWT_TTL_S: z.coerce.number().int().min(60).max(3600).default(900),

  BODY_LIMIT_BYTES: z.coerce.number().int().min(1024).max(10 * 1024 * 1024).default(64 * 1024),
  TRUST_PROXY: list.default([]),
  REQUEST_TIMEOUT_MS: z.coerce.number().int().min(1000).default(30_000),

  CACHE_TTL_S: z.coerce.number().int().min(1).default(300),
  CACHE_JITTER: z.coerce.number().min(0).max(1).default(0.1),
  FEED_CACHE_TTL_S: z.coerce.number().int().min(1).default(30),

  RATE_LIMIT_STANDARD_CAPACITY: z.coerce.number().int().min(1).default(60),
  RATE_LIMIT_STANDARD_REFILL_PER_S: z.coerce.number().positive().default(1),
  RATE_LIMIT_PRO_CAPACITY: z.coerce.number().int().min(1).default(600),
  RATE_LIMIT_PRO_REFILL_PER_S: z.coerce.number().positive().default(10),
  RATE_LIMIT_PUBLIC_CAPACITY: z.coerce.number().int().min(1).default(20),
  RATE_LIMIT_PUBLIC_REFILL_PER_S: z.coerce.number().positive().default(20 / 60),
  RATE_LIMIT_FAIL_OPEN: boolean.default(true),

  PRESSURE_MAX_EVENT_LOOP_DELAY_MS: z.coerce.number().int().min(0).default(1000),
  PRESSURE_MAX_HEAP_USED_MB: z.coerce.number().int().min(0).default(0),

  PASSWORD_HASH_COST: z.coerce.number().int().min(1024).max(1 << 20).default(16384),
  METRICS_TOKEN: z.string().min(16).optional()
}).transform((env, ctx) => {
  if (env.JWT_SECRET === undefined && env.NODE_ENV === 'production') {
    ctx.addIssue({ code: 'custom', path: ['JWT_SECRET'], message: 'is required when NODE_ENV=production' })
    return z.NEVER
  }
  return { ...env, JWT_SECRET: env.JWT_SECRET ?? DEV_JWT_SECRET }
})

export type Config = z.output<typeof configSchema>

export class ConfigError extends Error {
  override name = 'ConfigError'
}

/** Parses the environment once at boot; a bad value names its variable so the operator can fix it. */
export function loadConfig (env: NodeJS.ProcessEnv = process.env): Config {
  const raw = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== ''))
  const parsed = configSchema.safeParse(raw)
  if (!parsed.success) {
    const lines = parsed.error.issues.map((issue) => `  ${issue.path.join('.') || '(env)'}: ${issue.message}`)
    throw new ConfigError(`invalid configuration:\n${lines.join('\n')}`)
  }
  return parsed.data
}
