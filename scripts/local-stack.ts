import { execFileSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import postgres from 'postgres'

const stackScript = fileURLToPath(new URL('./stack.sh', import.meta.url))

export interface StackEnv {
  DATABASE_URL: string
  DATABASE_DIRECT_URL: string
  REDIS_URL: string
  STACK_DIR: string
}

/** Runs scripts/stack.sh; its progress goes to our stderr, its stdout is returned. */
export function stack (...args: string[]): string {
  return execFileSync('bash', [stackScript, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] })
}

/** What `stack.sh env` prints, as variables (it does not start anything). */
export function readStackEnv (): Record<string, string> {
  const env: Record<string, string> = {}
  for (const line of stack('env').split('\n')) {
    const match = /^([A-Z_]+)=(.*)$/.exec(line.trim())
    if (match?.[1] !== undefined && match[2] !== undefined) env[match[1]] = match[2].replace(/^['"]|['"]$/g, '')
  }
  return env
}

/** Brings the project-local PostgreSQL, PgBouncer and Redis up (idempotent) and returns their URLs. */
export function localStackUp (): StackEnv {
  stack('up')
  const env = readStackEnv()
  for (const key of ['DATABASE_URL', 'DATABASE_DIRECT_URL', 'REDIS_URL', 'STACK_DIR']) {
    if (env[key] === undefined) throw new Error(`stack.sh env did not print ${key}`)
  }
  return env as unknown as StackEnv
}

/**
 * Drops `database` (closing its connections) and creates it empty, over an admin connection to another database
 * on the same server. The name goes in as an escaped identifier; only plain lower-case names are accepted.
 */
export async function recreateDatabase (adminUrl: string, database: string): Promise<void> {
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(database)) throw new Error(`not a plain database name: ${database}`)
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {} })
  try {
    await admin`drop database if exists ${admin(database)} with (force)`
    await admin`create database ${admin(database)}`
  } finally {
    await admin.end({ timeout: 5 })
  }
}

/** The same URL pointing at another database (the test suite uses its own). */
export function withDatabase (url: string, database: string): string {
  const parsed = new URL(url)
  parsed.pathname = `/${database}`
  return parsed.toString()
}
