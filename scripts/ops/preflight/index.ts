// `npm run preflight -- --url URL [--token T | --login email:password] [--database-url URL] [--duration S]
// [--connections N] [--metrics-token T] [--read-only]`: the five-minute checklist before a deploy, run against a
// running service (staging, or a local server). One PASS/FAIL/SKIP line per check with its evidence; exit 0 only
// when nothing failed (a SKIP is not a failure: it says what could not be checked and why), 1 when something did
// or setup failed, 2 on a bad command line. One module per check (see each for what it proves):
// 1 load.ts, 2 injection.ts, 3 auth.ts, 4 pagination.ts, 5 resources (load.ts, measured during 1).
//
// Writes: a preflight runs against staging, where a few rows are acceptable, so writes are on unless --read-only.
// Without --token/--login it signs up one user `preflight-<hex>@example.test`. --read-only sends GETs only (plus
// the login). Checks run in the order 3, 4, 2, 1+5 (load last, so its 429s do not drain the token's bucket for the
// others); lines are printed in check order at the end, progress goes to stderr.
import { commandLine, reason } from '../format.ts'
import { auth } from './auth.ts'
import { progress, setUp, type CheckResult, type PreflightOptions, type Status } from './context.ts'
import { injection } from './injection.ts'
import { load, resources } from './load.ts'
import { pagination } from './pagination.ts'

/** In the order they run. */
export const CHECKS = [auth, pagination, injection, load, resources]

export async function preflight (options: PreflightOptions): Promise<{ header: string, results: CheckResult[] }> {
  const { ctx, header } = await setUp(options)
  const results: CheckResult[] = []
  for (const check of CHECKS) {
    if (check !== resources) progress(check === load ? '1 load + 5 resources' : `${check.id} ${check.name}`)
    results.push({ id: check.id, name: check.name, ...await check.run(ctx) })
  }
  return { header, results }
}

export function renderResults (results: CheckResult[]): string {
  const lines = [...results].sort((a, b) => a.id - b.id).flatMap((result) =>
    [`${result.status}  ${result.id} ${result.name}: ${result.evidence}`, ...result.details.map((detail) => `      ${detail}`)])
  const count = (status: Status) => results.filter((r) => r.status === status).length
  lines.push(`preflight: ${count('PASS')} passed, ${count('FAIL')} failed, ${count('SKIP')} skipped`)
  return lines.join('\n')
}

const usage = `usage: npm run preflight -- --url URL [--token T | --login email:password] [--client id:secret] [--database-url URL]
                          [--duration S] [--connections N] [--max-db-connections N] [--metrics-token T] [--read-only]
  --url                 the running service, e.g. http://127.0.0.1:3000
  --token / --login     who to test as; neither: sign up a throwaway preflight-<hex>@example.test user (a write)
  --client              a service client with funds:write that funds the user with 1-cent deposits when its
                        transactions list is shorter than two pages' worth (without it that list is skipped)
  --database-url        direct PostgreSQL URL of the service's database: its connections are sampled during the load
  --duration S          load duration in seconds (default 30)
  --connections N       load connections (default 100)
  --max-db-connections  PostgreSQL client connections must stay under this (default 20)
  --metrics-token       bearer token for GET /metrics (default: $METRICS_TOKEN), for the cache hit ratio
  --read-only           send GETs only; lists with fewer than 2 items are then skipped`

/** `a:b` split at its first colon, or undefined when there is none (or nothing before it). */
const pair = (value: string | undefined) => {
  const colon = value?.indexOf(':') ?? -1
  return value === undefined || colon <= 0 ? undefined : [value.slice(0, colon), value.slice(colon + 1)] as const
}

if (import.meta.main) {
  const values = commandLine({
    url: { type: 'string' },
    token: { type: 'string' },
    login: { type: 'string' },
    client: { type: 'string' },
    'database-url': { type: 'string' },
    duration: { type: 'string', default: '30' },
    connections: { type: 'string', default: '100' },
    'max-db-connections': { type: 'string', default: '20' },
    'metrics-token': { type: 'string' },
    'read-only': { type: 'boolean', default: false },
    help: { type: 'boolean', default: false }
  }, usage, (v) => {
    const [durationS, connections, maxDb] = [Number(v.duration), Number(v.connections), Number(v['max-db-connections'])]
    return v.url !== undefined && URL.canParse(v.url) && durationS > 0 && durationS <= 600 &&
      Number.isInteger(connections) && connections >= 1 && connections <= 1000 && Number.isInteger(maxDb) && maxDb >= 1 &&
      !(v.token !== undefined && v.login !== undefined) && (v.login === undefined || pair(v.login) !== undefined) &&
      (v.client === undefined || pair(v.client) !== undefined)
  })
  const login = pair(values.login)
  const client = pair(values.client)
  const started = performance.now()
  try {
    const { header, results } = await preflight({
      url: values.url!,
      token: values.token,
      login: login === undefined ? undefined : { email: login[0], password: login[1] },
      client: client === undefined ? undefined : { id: client[0], secret: client[1] },
      databaseUrl: values['database-url'],
      durationS: Number(values.duration),
      connections: Number(values.connections),
      maxDbConnections: Number(values['max-db-connections']),
      metricsToken: values['metrics-token'] ?? (process.env.METRICS_TOKEN || undefined),
      readOnly: values['read-only']
    })
    console.log(header)
    console.log(renderResults(results))
    console.log(`took ${((performance.now() - started) / 1000).toFixed(1)} s`)
    process.exit(results.some((r) => r.status === 'FAIL') ? 1 : 0)
  } catch (error) {
    console.log(`FAIL  0 setup: ${reason(error)}`)
    process.exit(1)
  }
}
