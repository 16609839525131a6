// The one programmatic way into the local stack (scripts/stack/, the project-local PostgreSQL, PgBouncer and
// Redis): every entry point, test and bench that needs it goes through here. The stack runs as a child process
// (`npm run stack` is the same command), so its daemons, lock and exit codes never mix with the caller's own.
// Runs are bounded in time; a failure becomes a StackError carrying the stack's own message, and command-line
// entry points (localStackUp) print that message alone and exit 1 instead of a Node stack trace.
import { execFile, execFileSync } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import postgres from 'postgres'

export const stackCli = fileURLToPath(new URL('./stack/index.ts', import.meta.url))

export type StackService = 'postgres' | 'pgbouncer' | 'redis'
export type ServiceAction = 'start' | 'stop' | 'restart'

export interface StackEnv {
  DATABASE_URL: string
  DATABASE_DIRECT_URL: string
  /** The cluster's superuser, for creating databases (recreateDatabase); never given to the service. */
  DATABASE_ADMIN_URL: string
  REDIS_URL: string
  STACK_DIR: string
  /** Generated once by `up` into the stack folder (jwt-secret, mode 0600): local tokens survive restarts. */
  JWT_SECRET: string
}

export interface RunOptions {
  /** Kills the stack command after this long (default: 10 min for `up`, which may install packages; 30 s for `env`, `status` and `pgbouncer-conf`; else 3 min). */
  timeoutMs?: number
  /** Captures the stack's progress (stderr) instead of passing it through; it then only appears in a StackError. */
  quiet?: boolean
  /** The stack's environment (default: ours, so LEDGER_STACK_DIR and STACK_*_PORT carry over). */
  env?: NodeJS.ProcessEnv
}

/** The stack command failed, timed out or could not be spawned. `message` is what a user needs to read, without a trace. */
export class StackError extends Error {
  readonly args: string[]
  readonly exitCode: number | null
  readonly timedOut: boolean
  /** The stack's stderr when it was captured (quiet or async runs); otherwise it already went to our stderr. */
  readonly stderr: string

  constructor (args: string[], details: { exitCode: number | null, timedOut: boolean, stderr: string, cause?: unknown }) {
    const command = `npm run stack -- ${args.join(' ')}`
    // The stack's own error lines ("stack: error: ...") are the message; progress lines before them are not.
    const lines = details.stderr.trim().split('\n').filter(Boolean)
    const errors = lines.filter((line) => line.startsWith('stack: error:'))
    const said = (errors.length > 0 ? errors : lines.slice(-3)).join(' | ')
    const what = details.timedOut ? 'did not finish in time' : details.exitCode === null ? 'could not run' : `failed (exit ${details.exitCode})`
    super(said === '' ? `${command} ${what}` : `${command} ${what}: ${said}`, { cause: details.cause })
    this.name = 'StackError'
    this.args = args
    this.exitCode = details.exitCode
    this.timedOut = details.timedOut
    this.stderr = details.stderr
  }
}

function defaultTimeoutMs (args: string[]): number {
  if (args[0] === 'up') return 600_000
  if (['env', 'status', 'pgbouncer-conf'].includes(args[0] ?? '') || ['env', 'status'].includes(args[1] ?? '')) return 30_000
  return 180_000
}

interface ChildFailure { status?: number | null, code?: unknown, killed?: boolean, stderr?: string | Buffer | null, message?: string }

function stackError (args: string[], error: unknown): StackError {
  const failure = error as ChildFailure
  const timedOut = failure.code === 'ETIMEDOUT' || failure.killed === true
  const exitCode = typeof failure.status === 'number' ? failure.status : null
  let stderr = failure.stderr === undefined || failure.stderr === null ? '' : String(failure.stderr)
  // Not run at all: Node's own message is all there is.
  if (exitCode === null && !timedOut && stderr === '') stderr = failure.message ?? String(error)
  return new StackError(args, { exitCode, timedOut, stderr, cause: error })
}

/** Runs `npm run stack -- ...args` synchronously and returns its stdout; throws a StackError. */
export function runStack (args: string[], options: RunOptions = {}): string {
  try {
    return execFileSync(process.execPath, [stackCli, ...args], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', options.quiet === true ? 'pipe' : 'inherit'],
      timeout: options.timeoutMs ?? defaultTimeoutMs(args),
      ...(options.env !== undefined ? { env: options.env } : {})
    })
  } catch (error) {
    throw stackError(args, error)
  }
}

/**
 * Runs `npm run stack -- ...args` without blocking the event loop (load keeps flowing while a service stops
 * or starts) and resolves with its stdout. Progress is captured; it only shows up in a StackError.
 */
export function runStackAsync (args: string[], options: Omit<RunOptions, 'quiet'> = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const execOptions = { encoding: 'utf8' as const, timeout: options.timeoutMs ?? defaultTimeoutMs(args), ...(options.env !== undefined ? { env: options.env } : {}) }
    execFile(process.execPath, [stackCli, ...args], execOptions, (error, stdout, stderr) => {
      if (error === null) resolve(stdout)
      else reject(stackError(args, Object.assign(error, { stderr, status: typeof error.code === 'number' ? error.code : null })))
    })
  })
}

/** `KEY=value` lines, as `stack env` (and `replica env`, `cluster env`) print them, as an object. */
export function parseEnvLines (text: string): Record<string, string> {
  const env: Record<string, string> = {}
  for (const line of text.split('\n')) {
    const match = /^([A-Z_]+)=(.*)$/.exec(line.trim())
    if (match?.[1] !== undefined && match[2] !== undefined) env[match[1]] = match[2].replace(/^['"]|['"]$/g, '')
  }
  return env
}

/** What `stack env` prints, as variables (it starts nothing). */
export function readStackEnv (): Record<string, string> {
  return parseEnvLines(runStack(['env'], { quiet: true }))
}

/**
 * Brings the project-local PostgreSQL, PgBouncer and Redis up (idempotent) and returns their URLs. For command-line
 * entry points: the stack's progress and its error go to stderr as it runs, and on failure the process exits 1
 * with nothing more than that message (no Node stack trace).
 */
export function localStackUp (): StackEnv {
  try {
    runStack(['up'])
    const env = readStackEnv()
    for (const key of ['DATABASE_URL', 'DATABASE_DIRECT_URL', 'DATABASE_ADMIN_URL', 'REDIS_URL', 'STACK_DIR', 'JWT_SECRET']) {
      if (env[key] === undefined) throw new Error(`stack env did not print ${key}`)
    }
    stackDirCache = env.STACK_DIR
    return env as unknown as StackEnv
  } catch (error) {
    // With stderr passed through, a failed `up` has already said why; anything else is said here, once.
    const alreadyShown = error instanceof StackError && error.stderr === '' && error.exitCode !== null && !error.timedOut
    if (!alreadyShown) console.error(error instanceof Error ? error.message : String(error))
    process.exit(1)
  }
}

let stackDirCache: string | undefined

/** The stack folder, as `stack env` reports it (cached). */
export function stackDir (): string {
  if (stackDirCache !== undefined) return stackDirCache
  const dir = readStackEnv().STACK_DIR
  if (dir === undefined) throw new Error('stack env did not print STACK_DIR')
  stackDirCache = dir
  return dir
}

/** Where a service's pid file is (as in scripts/stack/layout.ts); `dir` defaults to this checkout's stack folder. */
export function pidFile (service: StackService, dir: string = stackDir()): string {
  return service === 'postgres' ? join(dir, 'pg', 'data', 'postmaster.pid') : join(dir, 'run', `${service}.pid`)
}

/** The pid in the first line of a pid file, or undefined when there is no such file or no valid pid in it. */
export function readPid (file: string): number | undefined {
  if (!existsSync(file)) return undefined
  const pid = Number(readFileSync(file, 'utf8').split('\n')[0])
  return Number.isInteger(pid) && pid > 1 ? pid : undefined
}

/** The pid of a running stack service, from its pid file; throws when there is none. */
export function servicePid (service: StackService): number {
  const file = pidFile(service)
  const pid = readPid(file)
  if (pid === undefined) throw new Error(`no valid pid in ${file}`)
  return pid
}

// A service this process stopped and has not started again is started on the way out (a test that crashes, or
// that tap ends early, between a stop and its start), so the next file and the next run find the stack up.
const stoppedByUs = new Set<StackService>()
let exitHookInstalled = false

function noteAction (action: ServiceAction, service: StackService, phase: 'before' | 'after') {
  if (phase === 'before' && action !== 'start') {
    stoppedByUs.add(service)
    if (!exitHookInstalled) {
      exitHookInstalled = true
      process.on('exit', () => {
        for (const stopped of stoppedByUs) {
          try { runStack(['start', stopped], { quiet: true, timeoutMs: 60_000 }) } catch {}
        }
      })
    }
  }
  if (phase === 'after' && action !== 'stop') stoppedByUs.delete(service)
}

/** `stack start|stop|restart SERVICE`, blocking; the stack's progress goes to stderr. */
export function controlServiceSync (action: ServiceAction, service: StackService): void {
  noteAction(action, service, 'before')
  runStack([action, service])
  noteAction(action, service, 'after')
}

/** `stack start|stop|restart SERVICE` without blocking the event loop; resolves with how long it took (ms). */
export async function controlService (action: ServiceAction, service: StackService): Promise<number> {
  const started = performance.now()
  noteAction(action, service, 'before')
  await runStackAsync([action, service])
  noteAction(action, service, 'after')
  return Math.round(performance.now() - started)
}

const bootstrapFile = fileURLToPath(new URL('../sql/bootstrap.sql', import.meta.url))

/**
 * Drops `database` (closing its connections), creates it empty and runs sql/bootstrap.sql in it (roles, ownership,
 * privileges, extensions), over a superuser connection (`DATABASE_ADMIN_URL`). The name goes in as an escaped
 * identifier; only plain lower-case names are accepted.
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
  const bootstrap = postgres(withDatabase(adminUrl, database), { max: 1, onnotice: () => {} })
  try {
    await bootstrap.file(bootstrapFile)
  } finally {
    await bootstrap.end({ timeout: 5 })
  }
}

/** Drops `database` if it exists (closing its connections), over a superuser connection. */
export async function dropDatabase (adminUrl: string, database: string): Promise<void> {
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(database)) throw new Error(`not a plain database name: ${database}`)
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {} })
  try {
    await admin`drop database if exists ${admin(database)} with (force)`
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

/**
 * The same server and database as `url`, as the user (and password) of `credentialsFrom`: the owner through
 * PgBouncer, for what the API's restricted role may not do (PgBouncer's admin console, writing ledger tables).
 */
export function withUserOf (url: string, credentialsFrom: string): string {
  const parsed = new URL(url)
  const from = new URL(credentialsFrom)
  parsed.username = from.username
  parsed.password = from.password
  return parsed.toString()
}
