// `npm run diagnose [-- --api URL] [--metrics-token T] [--window S] [--top N] [--json]`: one look at the live
// servers behind the API, for an incident or a slow day. Five sections, one module each ({ title, read(url,
// options), render(data) }), each read on its own and each allowed to fail alone ("unavailable: <reason>") so a
// dead Redis never hides what PostgreSQL says.
//
// Servers come from DATABASE_URL (PgBouncer), DATABASE_DIRECT_URL (PostgreSQL) and REDIS_URL, or flags of the same
// meaning; whatever is unset is taken from the project-local stack (`npm run stack -- env`, which starts
// nothing). Everything it runs is read-only. The API is http://127.0.0.1:$PORT (3000) unless --api says otherwise.
import { readStackEnv, withUserOf } from '../../local-stack.ts'
import { commandLine, reason, withTimeout } from '../format.ts'
import * as api from './api.ts'
import * as connections from './connections.ts'
import * as pgbouncer from './pgbouncer.ts'
import * as redis from './redis.ts'
import * as statements from './statements.ts'

const SECTION_TIMEOUT_MS = 10_000

export type Section<T> = ({ ok: true } & T) | { ok: false, error: string }

export interface Targets {
  databaseUrl?: string | undefined
  directUrl?: string | undefined
  redisUrl?: string | undefined
  apiUrl: string
  metricsToken?: string | undefined
}

export interface DiagnoseOptions extends Targets {
  /** 0: calls per second since pg_stat_statements was last reset; else over a window of this many seconds. */
  windowS: number
  top: number
}

export interface Diagnosis {
  generatedAt: string
  connections: Section<connections.Data>
  statements: Section<statements.Data>
  pgbouncer: Section<pgbouncer.Data>
  redis: Section<redis.Data>
  api: Section<api.Data>
}

async function section<T> (url: string | undefined, missing: string, timeoutMs: number, read: (url: string) => Promise<T>): Promise<Section<T>> {
  if (url === undefined || url === '') return { ok: false, error: missing }
  try {
    return { ok: true, ...await withTimeout(read(url), timeoutMs, 'the server') }
  } catch (error) {
    return { ok: false, error: reason(error) }
  }
}

export async function diagnose (options: DiagnoseOptions): Promise<Diagnosis> {
  const pgUrl = options.directUrl ?? options.databaseUrl
  const noPg = 'no DATABASE_DIRECT_URL or DATABASE_URL'
  // As the owner when the direct URL names one: the API's restricted role is not one of PgBouncer's stats_users.
  const bouncerUrl = options.databaseUrl === undefined || options.directUrl === undefined ? options.databaseUrl : withUserOf(options.databaseUrl, options.directUrl)
  const [c, s, p, r, a] = await Promise.all([
    section(pgUrl, noPg, SECTION_TIMEOUT_MS, connections.read),
    section(pgUrl, noPg, SECTION_TIMEOUT_MS + options.windowS * 1000, (url) => statements.read(url, options)),
    section(bouncerUrl, 'no DATABASE_URL (PgBouncer)', SECTION_TIMEOUT_MS, pgbouncer.read),
    section(options.redisUrl, 'no REDIS_URL', SECTION_TIMEOUT_MS, redis.read),
    section(options.apiUrl, 'no API URL', SECTION_TIMEOUT_MS, (url) => api.read(url, options))
  ])
  if (s.ok) {
    const all = s.all ?? []
    s.all = undefined
    if (a.ok) {
      s.hints = statements.nPlusOneHints(a.nPlusOne, all)
      s.evidence = `${a.source} (ledger_db_n_plus_one_total, since the API process started)`
    }
  }
  return { generatedAt: new Date().toISOString(), connections: c, statements: s, pgbouncer: p, redis: r, api: a }
}

function block<T extends { source: string }> (probe: { title: string, render: (data: T) => string[] }, s: Section<T>): string[] {
  return [`== ${probe.title}${s.ok ? `  (${s.source})` : ''}`, ...s.ok ? probe.render(s) : [`  unavailable: ${s.error}`], '']
}

export function render (d: Diagnosis): string {
  return [
    `ledger-api diagnose  ${d.generatedAt}`, '',
    ...block(connections, d.connections), ...block(statements, d.statements), ...block(pgbouncer, d.pgbouncer),
    ...block(redis, d.redis), ...block(api, d.api)
  ].join('\n')
}

/** DATABASE_URL / DATABASE_DIRECT_URL / REDIS_URL from the environment; what is unset comes from `npm run stack -- env`. */
export function resolveTargets (env: NodeJS.ProcessEnv, flags: Partial<Targets>): Omit<Targets, 'apiUrl' | 'metricsToken'> {
  const targets = {
    databaseUrl: flags.databaseUrl ?? (env.DATABASE_URL || undefined),
    directUrl: flags.directUrl ?? (env.DATABASE_DIRECT_URL || undefined),
    redisUrl: flags.redisUrl ?? (env.REDIS_URL || undefined)
  }
  if (targets.databaseUrl !== undefined && targets.redisUrl !== undefined) return targets
  let local: Record<string, string>
  try {
    local = readStackEnv()
  } catch {
    return targets
  }
  // The direct URL is only borrowed from the stack together with its PgBouncer URL, never mixed with another.
  const fromStack = targets.databaseUrl === undefined
  return {
    databaseUrl: targets.databaseUrl ?? local.DATABASE_URL,
    directUrl: targets.directUrl ?? (fromStack ? local.DATABASE_DIRECT_URL : undefined),
    redisUrl: targets.redisUrl ?? local.REDIS_URL
  }
}

const usage = `usage: npm run diagnose -- [--api URL] [--metrics-token T] [--json] [--window S] [--top N]
                               [--database-url URL] [--direct-url URL] [--redis-url URL]
  --api            the API's base URL (default http://127.0.0.1:$PORT, PORT defaulting to 3000)
  --metrics-token  bearer token for GET /metrics (default: $METRICS_TOKEN)
  --window S       count statement calls over the next S seconds instead of since the last reset (0-300)
  --top N          rows per statement and route table (default 10)
  --json           one JSON object instead of text
  database, direct and Redis URLs default to DATABASE_URL, DATABASE_DIRECT_URL and REDIS_URL, then to the local stack`

if (import.meta.main) {
  const apiUrl = (api?: string) => api ?? `http://127.0.0.1:${process.env.PORT || 3000}`
  const values = commandLine({
    api: { type: 'string' },
    'metrics-token': { type: 'string' },
    json: { type: 'boolean', default: false },
    window: { type: 'string', default: '0' },
    top: { type: 'string', default: '10' },
    'database-url': { type: 'string' },
    'direct-url': { type: 'string' },
    'redis-url': { type: 'string' },
    help: { type: 'boolean', default: false }
  }, usage, (v) => Number(v.window) >= 0 && Number(v.window) <= 300 && Number.isInteger(Number(v.top)) && Number(v.top) >= 1 && URL.canParse(apiUrl(v.api)))
  const targets = resolveTargets(process.env, { databaseUrl: values['database-url'], directUrl: values['direct-url'], redisUrl: values['redis-url'] })
  const result = await diagnose({
    ...targets,
    apiUrl: apiUrl(values.api),
    metricsToken: values['metrics-token'] ?? (process.env.METRICS_TOKEN || undefined),
    windowS: Number(values.window),
    top: Number(values.top)
  })
  process.stdout.write(values.json ? `${JSON.stringify(result, null, 2)}\n` : `${render(result)}\n`)
}
