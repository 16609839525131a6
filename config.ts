import { randomBytes } from 'node:crypto'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { isIP } from 'node:net'
import { availableParallelism } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { z } from 'zod'
import { DEFAULT_COST, isPowerOfTwo } from './plugins/passwords/scrypt.ts'

/** NODE_ENV values that relax what production must set (JWT_SECRET, a token for /metrics on the public port). */
export const isDevelopmentEnv = (nodeEnv: string | undefined) => nodeEnv === 'development' || nodeEnv === 'test'

/**
 * The local stack's JWT secret (scripts/stack.sh generates the same file on `up`): the secret of development and
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

const boolean = z.enum(['true', 'false', '1', '0']).transform((v) => v === 'true' || v === '1')
const list = z.string().transform((v) => v.split(',').map((s) => s.trim()).filter(Boolean))
const url = (protocols: string[]) => z.string().refine((value) => {
  try {
    return protocols.includes(new URL(value).protocol)
  } catch {
    return false
  }
}, { message: `must be a URL starting with ${protocols.join(' or ')}//` })
const hostPort = /^[A-Za-z0-9.-]+:\d{1,5}$/

/** A DNS server as c-ares takes it: an IP address, optionally with a port (`1.1.1.1`, `1.1.1.1:53`, `[2606:4700::1111]:53`). */
function isDnsServer (value: string): boolean {
  const bracketed = /^\[(.+)\]:(\d{1,5})$/.exec(value)
  if (bracketed !== null) return isIP(bracketed[1] ?? '') === 6 && Number(bracketed[2]) <= 65535
  const withPort = /^([\d.]+):(\d{1,5})$/.exec(value)
  if (withPort !== null) return isIP(withPort[1] ?? '') === 4 && Number(withPort[2]) <= 65535
  return isIP(value) !== 0
}

/**
 * PgBouncer's server-side cap in the local stack, compose and deploy/k8s: max_db_connections in
 * deploy/pgbouncer/pgbouncer.ini, which test/deploy/pgbouncer-settings.test.ts holds this constant to. With several
 * workers and no DATABASE_POOL_MAX, each worker gets an equal share of it, so workers x pool stays at 20 client
 * connections: queueing then happens in each worker's pool, not in PgBouncer, and PostgreSQL never sees more.
 */
export const PGBOUNCER_SERVER_CONNECTIONS = 20
export const DEFAULT_POOL_MAX = 10
export const defaultPoolMax = (workers: number) =>
  workers > 1 ? Math.max(2, Math.floor(PGBOUNCER_SERVER_CONNECTIONS / workers)) : DEFAULT_POOL_MAX

const schema = z.object({
  // Unset or anything but development and test (staging, production, a typo) counts as production: fail closed.
  NODE_ENV: z.string().regex(/^[a-z][a-z0-9_-]{0,31}$/, 'must be a lower-case name such as production, staging, development or test').optional(),
  HOST: z.string().min(1).default('127.0.0.1'),
  PORT: z.coerce.number().int().min(0).max(65535).default(3000),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  // API processes on this machine behind one port (node:cluster): `auto` is one per core. 1 (the default) runs
  // the server in this process, exactly as before.
  WORKERS: z.union([
    z.literal('auto').transform(() => availableParallelism()),
    z.coerce.number().int().min(1).max(256)
  ], { error: 'must be auto or a whole number from 1 to 256' }).default(1),
  // The operations listener (0: off): /health/live, /health/ready and /metrics on a port of their own, for the
  // kubelet and Prometheus; /metrics then leaves the public port. With WORKERS > 1 the primary serves it (the
  // sum of every worker's metrics; ready while its workers are). METRICS_PORT is its former name, still read.
  OPS_PORT: z.coerce.number().int().min(0).max(65535).optional(),
  OPS_HOST: z.string().min(1).optional(),
  METRICS_PORT: z.coerce.number().int().min(0).max(65535).default(0),

  DATABASE_URL: url(['postgres:', 'postgresql:']),
  DATABASE_DIRECT_URL: url(['postgres:', 'postgresql:']).optional(),
  // Per process. Unset: 10, or with several workers their share of PgBouncer's 20 (see defaultPoolMax).
  DATABASE_POOL_MAX: z.coerce.number().int().min(1).max(100).optional(),
  DATABASE_IDLE_TIMEOUT_S: z.coerce.number().int().min(0).default(30),
  DATABASE_CONNECT_TIMEOUT_S: z.coerce.number().int().min(1).max(60).default(5),
  // The circuit breaker of each pool (plugins/circuit-breaker.ts): connection failures in a row that open it, and
  // how long it refuses statements (503 at once) before one probe statement goes through.
  DATABASE_CIRCUIT_FAILURES: z.coerce.number().int().min(1).max(1000).default(5),
  DATABASE_CIRCUIT_OPEN_MS: z.coerce.number().int().min(10).max(60_000).default(250),
  // Optional streaming replica for list and feed reads; the caller's reads stay on the primary for
  // READ_YOUR_WRITES_S seconds after each of their writes.
  DATABASE_REPLICA_URL: url(['postgres:', 'postgresql:']).optional(),
  READ_YOUR_WRITES_S: z.coerce.number().int().min(1).max(3600).default(5),

  REDIS_URL: url(['redis:', 'rediss:']),
  // Redis Cluster seed nodes (host:port, comma-separated). When set the client runs in cluster mode; REDIS_URL,
  // which then defaults to the first node, only contributes its credentials and rediss: (TLS).
  REDIS_CLUSTER_NODES: list.pipe(z.array(z.string().regex(hostPort, 'must be host:port')).min(1)).optional(),
  REDIS_COMMAND_TIMEOUT_MS: z.coerce.number().int().min(10).max(60_000).default(500),

  JWT_SECRET: z.string().min(32, 'must be at least 32 characters').optional(),
  JWT_ISSUER: z.string().min(1).default('ledger-api'),
  JWT_AUDIENCE: z.string().min(1).default('ledger-api'),
  JWT_TTL_S: z.coerce.number().int().min(60).max(3600).default(900),
  // The OAuth issuer identifier published at /.well-known/oauth-authorization-server (RFC 8414): the public origin
  // clients reach the API at. Unset, the origin each request came to is used (fine locally; a deployment sets it,
  // so the metadata never depends on a Host header).
  OAUTH_ISSUER: url(['https:', 'http:'])
    .refine((value) => { const parsed = new URL(value); return parsed.pathname === '/' && parsed.search === '' && parsed.hash === '' && !value.endsWith('/') },
      { message: 'must be an origin such as https://api.example.com (no path, query, fragment or trailing slash)' })
    .optional(),

  BODY_LIMIT_BYTES: z.coerce.number().int().min(1024).max(10 * 1024 * 1024).default(64 * 1024),
  TRUST_PROXY: list.default([]),
  REQUEST_TIMEOUT_MS: z.coerce.number().int().min(1000).default(30_000),

  CACHE_TTL_S: z.coerce.number().int().min(1).default(300),
  CACHE_JITTER: z.coerce.number().min(0).max(1).default(0.1),
  // Near cache (plugins/near-cache.ts): hot cache entries also held in each API process, invalidated by Redis.
  CACHE_NEAR_MAX_ENTRIES: z.coerce.number().int().min(0).max(1_000_000).default(10_000),
  CACHE_NEAR_MAX_AGE_MS: z.coerce.number().int().min(1).max(60_000).default(1000),
  FEED_CACHE_TTL_S: z.coerce.number().int().min(1).default(30),
  // Feeds one fan-out step writes (one INSERT ... SELECT, one transaction): bounds each step's locks and duration;
  // the job stores its cursor after each step, so a worker that dies loses at most one step's work (redone, once).
  FEED_FAN_OUT_BATCH: z.coerce.number().int().min(1).max(10_000).default(1000),

  RATE_LIMIT_STANDARD_CAPACITY: z.coerce.number().int().min(1).default(60),
  RATE_LIMIT_STANDARD_REFILL_PER_S: z.coerce.number().positive().default(1),
  RATE_LIMIT_PRO_CAPACITY: z.coerce.number().int().min(1).default(600),
  RATE_LIMIT_PRO_REFILL_PER_S: z.coerce.number().positive().default(10),
  // Service clients (back-office systems posting deposits and withdrawals in batches), per client id.
  RATE_LIMIT_SERVICE_CAPACITY: z.coerce.number().int().min(1).default(6000),
  RATE_LIMIT_SERVICE_REFILL_PER_S: z.coerce.number().positive().default(100),
  RATE_LIMIT_PUBLIC_CAPACITY: z.coerce.number().int().min(1).default(20),
  RATE_LIMIT_PUBLIC_REFILL_PER_S: z.coerce.number().positive().default(20 / 60),
  RATE_LIMIT_FAIL_OPEN: boolean.default(true),

  PRESSURE_MAX_EVENT_LOOP_DELAY_MS: z.coerce.number().int().min(0).default(1000),
  PRESSURE_MAX_HEAP_USED_MB: z.coerce.number().int().min(0).default(0),

  // How long an Idempotency-Key replays its first answer (payment APIs keep them at least a day); older keys are
  // purged in the background and may be used afresh.
  IDEMPOTENCY_KEY_TTL_H: z.coerce.number().int().min(24).max(24 * 365).default(24),

  // How often each process re-reads token revocations (a revoked client's tokens stop within about this long),
  // and how long it may go without a successful read before it refuses tokens (503) rather than trust a stale list.
  // At most 800 ms: a revoked token or ended session must stop within 1 s on every process, poll round trip included.
  REVOCATION_POLL_MS: z.coerce.number().int().min(50).max(800).default(500),
  REVOCATION_MAX_STALENESS_S: z.coerce.number().int().min(1).max(300).default(10),

  // How often each process re-reads the active currencies (the currencies table): a currency enabled or retired
  // there is accepted or refused by every process within about this long.
  CURRENCIES_REFRESH_S: z.coerce.number().int().min(1).max(3600).default(60),

  // scrypt's N (OWASP: 2^17 with r = 8, p = 1). A value that is not a power of two would fail every hash, so it
  // stops the boot instead. Hashes below the current parameters are upgraded at the user's next login.
  PASSWORD_HASH_COST: z.coerce.number().int()
    .refine((n) => isPowerOfTwo(n) && n >= 1024 && n <= 1 << 20, { message: 'must be a power of two from 1024 (2^10) to 1048576 (2^20), such as 131072 (2^17)' })
    .default(DEFAULT_COST),
  PASSWORD_HASH_PARALLELISM: z.coerce.number().int().min(1).max(16).default(1),
  // Hashes each process runs at once (each takes a libuv thread and 128·N·r bytes: 128 MiB at the defaults), and
  // how many may wait; beyond that a login or signup gets 503 with Retry-After rather than queueing on libuv.
  PASSWORD_HASH_CONCURRENCY: z.coerce.number().int().min(1).max(64).default(2),
  PASSWORD_HASH_QUEUE: z.coerce.number().int().min(0).max(10_000).default(32),
  // Failed logins per email (from any address) within the window before that email gets 429 until it passes.
  LOGIN_MAX_FAILURES: z.coerce.number().int().min(1).max(1000).default(10),
  LOGIN_FAILURE_WINDOW_S: z.coerce.number().int().min(1).max(86_400).default(900),
  // How long a refresh token stays usable; each rotation starts a new one (the session slides with use).
  REFRESH_TOKEN_TTL_S: z.coerce.number().int().min(300).max(365 * 86_400).default(30 * 86_400),

  // The job worker (plugins/worker.ts): inside every API process unless WORKER_ENABLED=false (API-only processes
  // beside `npm run worker` ones). Jobs run in lanes that never share capacity: feed jobs (fan-out, backfill,
  // removals) and webhook deliveries each have their own attempts at once per process, so slow receivers never
  // hold up a feed, nor a feed backlog a delivery. The webhook lane's attempts are mostly waiting on receivers
  // (each holds a socket, not a database connection), hence its larger default; it should exceed 10 endpoints
  // (one principal's most) times WEBHOOK_ENDPOINT_CONCURRENCY, so that one principal can never fill a worker.
  // WORKER_CONCURRENCY, the single pool these replace, is refused with a message naming them. How long a claimed
  // job is leased before another worker may take it again (longer than any attempt); the idle poll's longest
  // pause (a Redis message wakes workers at once after a commit that queued work; the poll is the fallback).
  WORKER_ENABLED: boolean.default(true),
  WORKER_FEED_CONCURRENCY: z.coerce.number().int().min(1).max(256).default(8),
  WORKER_WEBHOOK_CONCURRENCY: z.coerce.number().int().min(1).max(1024).default(64),
  WORKER_CONCURRENCY: z.string().optional(),
  WORKER_LEASE_S: z.coerce.number().int().min(5).max(3600).default(60),
  WORKER_POLL_MAX_MS: z.coerce.number().int().min(10).max(60_000).default(1000),
  // Retries of a failed job attempt: exponential from JOB_RETRY_BASE_MS (each delay drawn in [half, whole] of its
  // step: jitter), capped at JOB_RETRY_MAX_DELAY_S, until JOB_RETRY_WINDOW_S after the job was queued (one
  // attempt is made at the end of the window); then the job (a webhook delivery) is marked failed.
  JOB_RETRY_BASE_MS: z.coerce.number().int().min(10).max(60_000).default(5000),
  JOB_RETRY_MAX_DELAY_S: z.coerce.number().int().min(1).max(86_400).default(3600),
  JOB_RETRY_WINDOW_S: z.coerce.number().int().min(1).max(30 * 86_400).default(86_400),

  // Webhooks: http and private/loopback targets only for local development and tests; the whole attempt's
  // timeout (10 s by contract) and, inside it, how long connecting (DNS, TCP, TLS handshake) may take, so a
  // receiver that never accepts frees its slot early; attempts in flight per endpoint across every worker process;
  // how long an endpoint that fails every attempt keeps being tried before it is disabled (3 days by contract);
  // how long finished deliveries stay listed before housekeeping purges them.
  WEBHOOK_ALLOW_PRIVATE_TARGETS: boolean.default(false),
  WEBHOOK_TIMEOUT_MS: z.coerce.number().int().min(100).max(10_000).default(10_000),
  WEBHOOK_CONNECT_TIMEOUT_MS: z.coerce.number().int().min(100).max(10_000).default(3000),
  WEBHOOK_ENDPOINT_CONCURRENCY: z.coerce.number().int().min(1).max(100).default(4),
  WEBHOOK_DISABLE_AFTER_H: z.coerce.number().int().min(1).max(24 * 365).default(72),
  WEBHOOK_DELIVERY_RETENTION_H: z.coerce.number().int().min(1).max(24 * 365).default(24 * 7),
  // Where webhook target names are resolved, at registration and for every delivery's connection: DNS servers as
  // ip, ip:port or [ipv6]:port, comma-separated. Unset: the system's resolvers (/etc/resolv.conf as the process
  // started). Lookups go through c-ares on the event loop, never getaddrinfo on libuv's thread pool; each one (A and
  // AAAA) ends within WEBHOOK_DNS_TIMEOUT_MS, and a name that did not answer by then is refused like one that does
  // not exist.
  WEBHOOK_DNS_SERVERS: list.pipe(z.array(z.string().refine(isDnsServer, 'must be IP addresses, each optionally with a port (1.1.1.1, 1.1.1.1:53, [2606:4700::1111]:53)'))).default([]),
  WEBHOOK_DNS_TIMEOUT_MS: z.coerce.number().int().min(50).max(10_000).default(3000),
  METRICS_TOKEN: z.string().min(16).optional(),
  // The ledger check (plugins/ledger-check.ts): the whole ledger's invariants, in one snapshot, once per this many
  // seconds among all API processes (each tries; one runs each interval). 0: this process never runs it, and the
  // ledger-check-not-run alert says so once no process does.
  RECONCILE_INTERVAL_S: z.coerce.number().int().min(0).max(86_400).default(600),
  // The longest one statement of the check may run (whole-table scans; the database's own guard rail is 5 s).
  RECONCILE_STATEMENT_TIMEOUT_S: z.coerce.number().int().min(1).max(3600).default(300)
})

export const configSchema = z.preprocess((input) => {
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
}, schema).transform((env, ctx) => {
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
  const { WORKER_CONCURRENCY: _replaced, ...settings } = env
  return {
    ...settings,
    JWT_SECRET: env.JWT_SECRET,
    OPS_PORT: env.OPS_PORT ?? env.METRICS_PORT,
    OPS_HOST: env.OPS_HOST ?? env.HOST,
    DATABASE_POOL_MAX: env.DATABASE_POOL_MAX ?? defaultPoolMax(env.WORKERS)
  }
})

export type Config = z.output<typeof configSchema>

export class ConfigError extends Error {
  override name = 'ConfigError'
}

/** Parses the environment once at boot; a bad value names its variable so the operator can fix it. */
/** For a process's entry file: the configuration, or its one-line message on stderr and exit 1 (no stack trace). */
export function loadConfigOrExit (): Config {
  try {
    return loadConfig()
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error
    console.error(error.message)
    process.exit(1)
  }
}

export function loadConfig (env: NodeJS.ProcessEnv = process.env): Config {
  const raw = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== ''))
  const parsed = configSchema.safeParse(raw)
  if (!parsed.success) {
    const lines = parsed.error.issues.map((issue) => `  ${issue.path.join('.') || '(env)'}: ${issue.message}`)
    throw new ConfigError(`invalid configuration:\n${lines.join('\n')}`)
  }
  return parsed.data
}
