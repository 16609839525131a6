// compose.yaml: valid against the Compose Specification's JSON schema (the copy dclint ships and keeps current), the
// image run three ways (a one-shot migrate, the api without the job loop, the worker), the database roles of
// sql/bootstrap.sql (the superuser only in the init script, the migrator's URL only in migrate), and the security
// settings: no secret with a default, only the public port published, Redis behind a password. What no container
// may do (run as root, escalate, keep capabilities) is test/security/deploy.test.ts.
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { Ajv } from 'ajv'
import t from 'tap'
import { parse } from 'yaml'

interface Service {
  image?: string
  build?: unknown
  command?: string[]
  environment?: Record<string, string>
  ports?: string[]
  healthcheck?: { test: string[] }
  depends_on?: Record<string, { condition: string }>
  configs?: Array<{ source: string, target: string }>
  stop_grace_period?: string
}
interface Compose { services: Record<string, Service>, configs: Record<string, { file?: string, content?: string }> }

const text = readFileSync(new URL('../../compose.yaml', import.meta.url), 'utf8')
// merge: the `<<` keys the file uses for what the API and the worker share (Compose supports them).
const document = parse(text, { merge: true }) as unknown
const compose = document as Compose
const api = compose.services.api as Service
const env = api.environment ?? {}

const schemaFile = createRequire(import.meta.url).resolve('dclint/package.json').replace(/package\.json$/, 'schemas/compose.schema.json')
const schema = JSON.parse(readFileSync(schemaFile, 'utf8')) as Record<string, unknown>
// The schema names its draft-07 meta-schema by an https URL that Ajv registers under http://; the draft is Ajv's default.
delete schema.$schema
const validate = new Ajv({ allErrors: true, strict: false }).compile(schema)
const schemaErrors = (candidate: unknown) => validate(candidate) ? [] : (validate.errors ?? []).map((error) => `${error.instancePath} ${error.message}`)

t.test('compose.yaml is valid against the Compose Specification schema', async (t) => {
  t.equal(schema.title, 'Compose Specification')
  t.same(schemaErrors(document), [])
})

t.test('the schema check can fail', async (t) => {
  const broken = (change: (copy: any) => void) => {
    const copy = structuredClone(document) as any
    change(copy)
    return schemaErrors(copy).join('; ')
  }
  t.match(broken((c) => { c.services.api.cap_drop = 'ALL' }), /\/services\/api\/cap_drop must be array/, 'a list that is not one')
  t.match(broken((c) => { c.services.worker.privilaged = true }), /must NOT have additional properties/, 'a misspelt key')
  t.match(broken((c) => { c.services.migrate.depends_on.postgres.condition = 'service_started_eventually' }), /must be equal to one of the allowed values/, 'an unknown condition')
})

t.test('the image runs as migrate (once), api and worker', async (t) => {
  const migrate = compose.services.migrate as Service
  const worker = compose.services.worker as Service
  for (const name of ['migrate', 'api', 'worker']) t.equal(compose.services[name]?.image, 'ledger-api:local', `${name} runs the project's image`)
  t.same(migrate.command, ['node', 'scripts/migrate.ts'])
  t.equal(api.command, undefined, 'the api runs the image\'s CMD (node server.ts)')
  t.same(worker.command, ['node', 'worker.ts'])
  t.equal(env.WORKER_ENABLED, 'false', 'no job loop in the api: the worker service runs jobs')
  for (const [name, service] of [['api', api], ['worker', worker]] as const) {
    t.equal(service.depends_on?.migrate?.condition, 'service_completed_successfully', `${name} starts after a successful migration`)
    for (const key of ['DATABASE_URL', 'REDIS_URL', 'JWT_SECRET']) t.equal(service.environment?.[key], env[key], `${name} has the shared ${key}`)
  }
  t.equal(worker.ports, undefined, 'the worker has no listener to publish')
  t.ok(Number.parseInt(worker.stop_grace_period ?? '0') >= 20, 'the worker\'s grace period covers an attempt in flight (10 s) and its drain')
})

t.test('roles: the superuser only bootstraps, the migrator only migrates, the rest is ledger_api through PgBouncer', async (t) => {
  const postgres = compose.services.postgres as Service
  t.equal(postgres.environment?.POSTGRES_USER, 'postgres', 'the cluster\'s superuser is not one of the service\'s roles')
  const targets = Object.fromEntries((postgres.configs ?? []).map((config) => [config.source, config.target]))
  t.equal(compose.configs.bootstrap_sql?.file, './sql/bootstrap.sql')
  t.notMatch(targets.bootstrap_sql, /^\/docker-entrypoint-initdb\.d\//, 'bootstrap.sql is not run bare by the image')
  t.match(targets.bootstrap_roles, /^\/docker-entrypoint-initdb\.d\/.*\.sh$/, 'the init script runs it')
  const script = compose.configs.bootstrap_roles?.content ?? ''
  t.match(script, `--file ${targets.bootstrap_sql}`)
  t.match(script, /alter role ledger password :'migrator_password';/, 'passwords as psql variables, quoted by psql')
  t.match(script, /alter role ledger_api password :'api_password';/)
  t.notMatch(script, /\$\{/, 'nothing interpolated into the script by compose')

  for (const [name, service] of Object.entries(compose.services)) {
    const values = Object.entries(service.environment ?? {})
    const direct = values.filter(([key]) => key === 'DATABASE_DIRECT_URL')
    if (name === 'migrate') t.match(direct[0]?.[1], /^postgres:\/\/ledger:[^@]+@postgres:5432\/ledger$/, 'migrate connects straight to PostgreSQL as ledger')
    else t.same(direct, [], `${name} has no DATABASE_DIRECT_URL`)
    if (name !== 'migrate' && name !== 'postgres') {
      t.notOk(values.some(([, value]) => /MIGRATOR_DB_PASSWORD|POSTGRES_PASSWORD/.test(String(value))), `${name} sees neither the migrator's nor the superuser's password`)
    }
  }
  t.match(env.DATABASE_URL, /^postgres:\/\/ledger_api:[^@]+@pgbouncer:6432\/ledger$/)
  t.match(compose.configs.pgbouncer_userlist?.content, /^"ledger_api" "[^"]+"\n$/, 'PgBouncer knows the API\'s login only')
})

t.test('JWT_SECRET has no default: compose refuses to start without it', async (t) => {
  t.match(env.JWT_SECRET, /^\$\{JWT_SECRET:\?[^}]+\}$/)
})

t.test('only the public port is published; health and metrics are on the compose network', async (t) => {
  t.equal(env.NODE_ENV, 'production', 'production rules: /metrics on the public port needs a token or is absent')
  t.ok(Number(env.OPS_PORT) > 0, 'the operations listener is on')
  t.same(api.ports, [`${env.PORT ?? 3000}:3000`], 'the public port alone')
  for (const [name, service] of Object.entries(compose.services)) {
    if (name !== 'api') t.same(service.ports ?? [], [], `${name} publishes nothing`)
  }
  t.match(api.healthcheck?.test.join(' '), new RegExp(`127\\.0\\.0\\.1:${env.OPS_PORT}/health/ready`), 'the healthcheck uses the ops port')
})

t.test('Redis requires a password and the API and the worker send it', async (t) => {
  const redis = compose.services.redis as Service
  t.ok(redis.command?.includes('--requirepass'), 'requirepass')
  const password = redis.command?.[(redis.command?.indexOf('--requirepass') ?? -2) + 1]
  t.match(env.REDIS_URL, `:${password}@redis:6379`, 'REDIS_URL carries the same password')
  t.equal(compose.services.worker?.environment?.REDIS_URL, env.REDIS_URL)
})
