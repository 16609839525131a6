// Abuse of the operations surface: a readiness flood must cost the database nothing, /metrics must not
// be public in production, and the service must not run with a secret anyone can read in the repository.
import { spawn, execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { get } from 'node:http'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { localStackSecret } from '../../config.ts'
import { readStackEnv, stackDir } from '../../scripts/local-stack.ts'
import { buildTestApp, hasLocalStack } from '../helper.ts'

const root = fileURLToPath(new URL('../../', import.meta.url))

/**
 * Probe statements (`select 1`) this app sent so far: every statement is observed in this histogram, labelled
 * by operation and table, and the probe is the only one without a table (the pollers for revocations and
 * currencies, which also run in the background, read theirs; housekeeping's purges are named by their function).
 */
async function statementsSent (app: Awaited<ReturnType<typeof buildTestApp>>): Promise<number> {
  const { values } = await app.metrics.dbQueryDuration.get()
  return values.filter((v) => v.metricName === 'ledger_db_query_duration_seconds_count' && v.labels.statement === 'SELECT').reduce((sum, v) => sum + v.value, 0)
}

t.test('a flood of 1,000 concurrent readiness calls over real sockets send no statement: only the background round does', async (t) => {
  const app = await buildTestApp(t)
  await app.listen({ host: '127.0.0.1', port: 0 })
  const address = app.server.address()
  const url = `http://127.0.0.1:${typeof address === 'object' && address !== null ? address.port : 0}/health/ready`

  // Counts are read just after a round ends (its statement is counted before the round is), so none is half done.
  const afterNextRound = async () => {
    const rounds = app.readiness.rounds()
    while (app.readiness.rounds() === rounds) await new Promise((resolve) => setTimeout(resolve, 2))
    return { rounds: app.readiness.rounds(), statements: await statementsSent(app) }
  }

  // The measure sees probes: each background round is one statement.
  const first = await afterNextRound()
  const second = await afterNextRound()
  t.equal(second.statements - first.statements, second.rounds - first.rounds, 'one probe statement per round: the measure sees probes')
  t.ok(second.statements > first.statements)

  // One socket per call (Node's global agent has no socket limit), all sent at once.
  const call = () => new Promise<number>((resolve, reject) => {
    get(url, (response) => {
      response.resume()
      response.on('end', () => resolve(response.statusCode ?? 0))
    }).on('error', reject)
  })
  const started = performance.now()
  const statuses = await Promise.all(Array.from({ length: 1000 }, call))
  const floodMs = Math.round(performance.now() - started)
  const after = await afterNextRound()
  const statements = after.statements - second.statements
  t.equal(statuses.filter((s) => s === 200).length, 1000, `every call answered 200 (in ${floodMs} ms)`)
  t.equal(statements, after.rounds - second.rounds, `only the background rounds sent probes (${statements} over the flood, not 1000)`)
  t.ok(statements <= Math.ceil(floodMs / 1000) + 2, 'about one a second, whatever the number of calls')
})

t.test('/metrics on the public port in production: 404 without a token, the bearer only with one, never with OPS_PORT', async (t) => {
  const production = await buildTestApp(t, { NODE_ENV: 'production', METRICS_TOKEN: '' })
  const bare = await production.inject({ method: 'GET', url: '/metrics' })
  t.equal(bare.statusCode, 404, 'no token configured: absent, not open')
  t.notMatch(bare.body, /ledger_http_request/, 'no metric leaks in the body')

  const staging = await buildTestApp(t, { NODE_ENV: 'staging', METRICS_TOKEN: '' })
  t.equal((await staging.inject({ method: 'GET', url: '/metrics' })).statusCode, 404, 'any NODE_ENV but development and test counts as production')

  const token = randomBytes(24).toString('hex')
  const withToken = await buildTestApp(t, { NODE_ENV: 'production', METRICS_TOKEN: token })
  t.equal((await withToken.inject({ method: 'GET', url: '/metrics' })).statusCode, 401, 'no credentials: 401')
  t.equal((await withToken.inject({ method: 'GET', url: '/metrics', headers: { authorization: `Bearer ${token.slice(0, -1)}x` } })).statusCode, 401, 'a wrong token: 401')
  const scraped = await withToken.inject({ method: 'GET', url: '/metrics', headers: { authorization: `Bearer ${token}` } })
  t.equal(scraped.statusCode, 200)
  t.match(scraped.body, /^ledger_http_requests_in_flight /m)

  const opsPort = await buildTestApp(t, { NODE_ENV: 'production', METRICS_TOKEN: token, OPS_PORT: '1' })
  t.equal((await opsPort.inject({ method: 'GET', url: '/metrics', headers: { authorization: `Bearer ${token}` } })).statusCode, 404,
    'with OPS_PORT, metrics are only on the operations listener')

  const development = await buildTestApp(t, { NODE_ENV: 'development', METRICS_TOKEN: '' })
  t.equal((await development.inject({ method: 'GET', url: '/metrics' })).statusCode, 200, 'development keeps the open endpoint (local only)')
})

interface Exit { code: number | null, stderr: string }

/** Runs `node server.ts` with exactly `env` (nothing inherited) and resolves when it exits; killed after 20 s. */
function boot (env: Record<string, string>): Promise<Exit> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['server.ts'], { cwd: root, env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000)
    child.once('exit', (code) => {
      clearTimeout(timer)
      resolve({ code, stderr })
    })
  })
}

t.test('without JWT_SECRET the server refuses to boot unless NODE_ENV is development or test', async (t) => {
  // Dependencies that refuse at once: a boot that got past its configuration would fail on them, differently.
  const urls = { DATABASE_URL: 'postgres://ledger_api@127.0.0.1:1/ledger', REDIS_URL: 'redis://127.0.0.1:1' }
  for (const nodeEnv of ['staging', 'production', undefined]) {
    const { code, stderr } = await boot(nodeEnv === undefined ? urls : { ...urls, NODE_ENV: nodeEnv })
    t.equal(code, 1, `NODE_ENV=${nodeEnv ?? '(unset)'}: exit code 1`)
    t.match(stderr, /JWT_SECRET: is required/, 'the message names the variable')
  }
  // The control: with a secret, the same boot gets past its configuration (and fails later, on the database).
  const { stderr } = await boot({ ...urls, NODE_ENV: 'staging', JWT_SECRET: randomBytes(32).toString('base64url'), DATABASE_CONNECT_TIMEOUT_S: '1' })
  t.notMatch(stderr, /JWT_SECRET/, 'a secret set: no complaint about it')
})

/** A JWT secret written as a literal value: `JWT_SECRET=abc...`, `JWT_SECRET: "abc..."`, a default in ${JWT_SECRET:-...}. */
const literalSecret = /JWT_SECRET\s*[:=]\s*["']?(?![$<"'{(])[A-Za-z0-9+/_.~-]{16,}(?![A-Za-z0-9+/_.~(-])|JWT_SECRET:-[^}]+}|dev-only-secret/

t.test('no JWT secret is committed: not in config, compose, deploy, scripts, tests or docs', async (t) => {
  // The check can fail: the value this repository used to carry, and the usual ways of writing one, are caught.
  for (const sample of [
    "const DEV_JWT_SECRET = 'ledger-api-dev-only-secret-never-use-in-production'",
    'JWT_SECRET=3q2+7w8Hn4JkLmNoPqRsTuVwXyZ012345',
    `      JWT_SECRET: ${'$'}{JWT_SECRET:-change-me-in-production}`,
    "  JWT_SECRET: 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'"
  ]) t.match(sample, literalSecret, `caught: ${sample.trim().slice(0, 40)}`)
  for (const fine of [`JWT_SECRET: ${'$'}{JWT_SECRET:?set JWT_SECRET}`, 'JWT_SECRET: localStackSecret(dir)', 'JWT_SECRET: randomBytes(32).toString()', 'JWT_SECRET=', '--from-literal=JWT_SECRET="$(openssl rand -base64 48)"']) {
    t.notMatch(fine, literalSecret, `not a secret: ${fine}`)
  }
  const files = execFileSync('git', ['ls-files', '-z'], { cwd: root, encoding: 'utf8' }).split('\0')
    .filter((file) => /^(config\.ts|compose\.yaml|Dockerfile|README\.md|\.env\.example|deploy\/|test\/|scripts\/|bench\/[^/]+\.ts)/.test(file))
  t.ok(files.length > 50, `${files.length} tracked files checked`)
  const offending = files.filter((file) => file !== 'test/security/operations.test.ts')
    .flatMap((file) => readFileSync(new URL(file, `file://${root}`), 'utf8').split('\n')
      .map((line, index) => ({ file, line: index + 1, text: line }))
      .filter(({ text }) => literalSecret.test(text)))
    .map(({ file, line }) => `${file}:${line}`)
  t.same(offending, [], 'no literal JWT secret in any tracked file')
})

t.test('the local stack generated its own secret (mode 0600) and the test path passes it', { skip: hasLocalStack ? false : 'needs the local stack started by scripts/test.ts' }, async (t) => {
  const file = join(stackDir(), 'jwt-secret')
  t.equal(statSync(file).mode & 0o777, 0o600, 'readable by its owner only')
  const secret = readFileSync(file, 'utf8').trim()
  t.ok(secret.length >= 32)
  t.equal(readStackEnv().JWT_SECRET, secret, '`npm run stack -- env` prints it')
  t.equal(process.env.JWT_SECRET, secret, 'scripts/test.ts passed it to the suite')
  t.equal(localStackSecret(stackDir()), secret, 'development without JWT_SECRET reads the same file (every process of the checkout agrees)')
})
