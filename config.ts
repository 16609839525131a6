// The configuration: every setting is an environment variable, parsed once at boot. Each concern declares its own
// settings with their documentation (plugins/*/config.ts, routes/*/config.ts); this file joins the infrastructure's,
// adds the checks that span several settings, and turns a bad environment into one message naming each variable.
// The domains' settings are joined by the composition root (settings.ts), so nothing here depends on a domain.
import { randomBytes } from 'node:crypto'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { z } from 'zod'
import { settingsGroup, type SettingsGroup } from './plugins/config-helpers.ts'
import { authConfig } from './plugins/auth/config.ts'
import { cacheConfig } from './plugins/cache/config.ts'
import { databaseConfig, defaultPoolMax } from './plugins/database/config.ts'
import { DEFAULT_WARM_UP_S, httpConfig } from './plugins/http/config.ts'
import { jobsConfig } from './plugins/jobs/config.ts'
import { metricsConfig } from './plugins/metrics/config.ts'
import { passwordsConfig } from './plugins/passwords/config.ts'
import { rateLimitConfig } from './plugins/rate-limit/config.ts'
import { redisConfig } from './plugins/redis/config.ts'

export { DEFAULT_POOL_MAX, PGBOUNCER_SERVER_CONNECTIONS, defaultPoolMax } from './plugins/database/config.ts'

/** NODE_ENV values that relax what production must set (JWT_SECRET, a token for /metrics on the public port). */
export const isDevelopmentEnv = (nodeEnv: string | undefined) => nodeEnv === 'development' || nodeEnv === 'test'

/**
 * The local stack's JWT secret (`npm run stack -- up` (scripts/stack/) generates the same file on `up`): the secret of development and
 * test when JWT_SECRET is unset. One file per checkout rather than a random secret per process, so that every
 * worker (WORKERS > 1) and every process of the checkout (npm start, the test suite, the bench) verify each
 * other's tokens, and local tokens survive restarts. Created exclusively (mode 0600) when missing, so two processes
 * starting together end up with the same secret.
 */
export function localStackSecret (stackDir = fileURLToPath(new URL('./.stack', import.meta.url))): string {
  const file = join(stackDir, 'jwt-secret')
  try {
    mkdirSync(stackDir, { recursive: true, mode: 0o700 })
    writeFileSync(file, `${randomBytes(48).toString('base64url')}\n`, { flag: 'wx', mode: 0o600 })
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error
  }
  return readFileSync(file, 'utf8').trim()
}

export const environmentConfig = settingsGroup('Environment', 'Which rules apply: production\'s unless told otherwise.', {
  NODE_ENV: z.string().regex(/^[a-z][a-z0-9_-]{0,31}$/, 'must be a lower-case name such as production, staging, development or test').optional()
    .describe('development and test relax two rules; unset or anything else (production, staging, a typo) counts as production, failing closed: JWT_SECRET is then required and /metrics on PORT needs METRICS_TOKEN. `npm start` on the local stack sets development.')
})

/** The infrastructure's settings, in the order the reference lists them. */
export const infrastructureConfig = [
  environmentConfig, httpConfig, databaseConfig, redisConfig, authConfig, metricsConfig, cacheConfig, rateLimitConfig,
  passwordsConfig, jobsConfig
] as const

type UnionToIntersection<U> = (U extends unknown ? (u: U) => void : never) extends (i: infer I) => void ? I : never
/** The keys and schemas of several groups, as one object shape. */
type ShapeOf<G extends readonly SettingsGroup[]> = UnionToIntersection<G[number]['shape']> extends infer S extends z.ZodRawShape ? S : never
type Flat<T> = { [K in keyof T]: T[K] }

type InfrastructureSettings = z.output<z.ZodObject<ShapeOf<typeof infrastructureConfig>>>
/** Settings that the checks below fill in or take away. */
interface Resolved {
  JWT_SECRET: string
  OPS_PORT: number
  OPS_HOST: string
  DATABASE_POOL_MAX: number
  DATABASE_POOL_WARM: number
  WARM_UP_S: number
}
/** The configuration of the infrastructure alone, as the plugins see it. */
export type InfrastructureConfig = Flat<Omit<InfrastructureSettings, 'WORKER_CONCURRENCY' | keyof Resolved> & Resolved>
/** The whole configuration: the infrastructure's and the given domains' settings. */
export type ComposedConfig<G extends readonly SettingsGroup[]> = Flat<InfrastructureConfig & z.output<z.ZodObject<ShapeOf<G>>>>

function shapeOf (groups: readonly SettingsGroup[]): Record<string, z.core.$ZodType> {
  const shape: Record<string, z.core.$ZodType> = {}
  for (const group of groups) {
    for (const [name, setting] of Object.entries(group.shape)) {
      if (name in shape) throw new Error(`${name} is declared by two settings groups`)
      shape[name] = setting
    }
  }
  return shape
}

/**
 * The schema of the whole configuration: the infrastructure's settings, those of `domains`, and the checks that span
 * several settings. The result parses an environment (strings) into the typed configuration.
 */
export function composeConfig<const G extends readonly SettingsGroup[]> (domains: G) {
  const settings = z.object(shapeOf([...infrastructureConfig, ...domains]))
  return z.preprocess((input) => {
    // In cluster mode REDIS_URL may be left out: the first seed node stands in for it.
    let env = input as Record<string, unknown>
    if (typeof env.REDIS_CLUSTER_NODES === 'string' && env.REDIS_URL === undefined) {
      const first = env.REDIS_CLUSTER_NODES.split(',').map((s) => s.trim()).find(Boolean)
      if (first !== undefined) env = { ...env, REDIS_URL: `redis://${first}` }
    }
    // No secret is committed: development and test without JWT_SECRET use the local stack's (see localStackSecret).
    if (env.JWT_SECRET === undefined && isDevelopmentEnv(env.NODE_ENV as string | undefined)) {
      env = { ...env, JWT_SECRET: localStackSecret(typeof env.LEDGER_STACK_DIR === 'string' ? env.LEDGER_STACK_DIR : undefined) }
    }
    return env
  }, settings).transform((parsed, ctx): ComposedConfig<G> => {
    const env = parsed as InfrastructureSettings
    if (env.WORKER_CONCURRENCY !== undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['WORKER_CONCURRENCY'],
        message: 'is replaced by one setting per lane: WORKER_FEED_CONCURRENCY (feed jobs, default 8) and WORKER_WEBHOOK_CONCURRENCY (webhook deliveries, default 64)'
      })
      return z.NEVER
    }
    if (env.JWT_SECRET === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['JWT_SECRET'],
        message: `is required (NODE_ENV is ${env.NODE_ENV ?? 'unset'}): set it to a random value of at least 32 characters; only NODE_ENV=development or test fall back to the local stack's secret`
      })
      return z.NEVER
    }
    const { WORKER_CONCURRENCY: _replaced, ...rest } = parsed as Record<string, unknown>
    const poolMax = env.DATABASE_POOL_MAX ?? defaultPoolMax(env.WORKERS)
    return {
      ...rest,
      JWT_SECRET: env.JWT_SECRET,
      OPS_PORT: env.OPS_PORT ?? env.METRICS_PORT,
      OPS_HOST: env.OPS_HOST ?? env.HOST,
      DATABASE_POOL_MAX: poolMax,
      // Unset: the whole pool; never more than the pool holds.
      DATABASE_POOL_WARM: Math.min(env.DATABASE_POOL_WARM ?? poolMax, poolMax),
      // Unset: production warms up; development and test start at once.
      WARM_UP_S: env.WARM_UP_S ?? (isDevelopmentEnv(env.NODE_ENV) ? 0 : DEFAULT_WARM_UP_S)
    } as ComposedConfig<G>
  })
}

export class ConfigError extends Error {
  override name = 'ConfigError'
}

/** Parses the environment once at boot; a bad value names its variable so the operator can fix it. */
export function parseConfig<T> (schema: z.ZodType<T>, env: NodeJS.ProcessEnv): T {
  const raw = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== ''))
  const parsed = schema.safeParse(raw)
  if (!parsed.success) {
    const lines = parsed.error.issues.map((issue) => `  ${issue.path.join('.') || '(env)'}: ${issue.message}`)
    throw new ConfigError(`invalid configuration:\n${lines.join('\n')}`)
  }
  return parsed.data
}

/** For a process's entry file: the configuration, or its one-line message on stderr and exit 1 (no stack trace). */
export function orExit<T> (load: () => T): T {
  try {
    return load()
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error
    console.error(error.message)
    process.exit(1)
  }
}
