// The real image in a real engine (`npm run image:test`, not part of `npm test`: it needs root and takes a minute or
// more). A private dockerd (scripts/engine.sh) builds the project's Dockerfile on the stand-in base, then, against the
// local stack: the image's migration command, an API container (WORKER_ENABLED=false) and a worker container, both
// read-only, without capabilities, without new privileges, as the image's own non-root user, on the host's network
// bound to 127.0.0.1. They serve a signup, a service client's deposit and a transfer, and the worker container
// delivers the transfer's webhook to a receiver on loopback, verified with the Standard Webhooks library. `docker stop`
// then ends both with exit code 0 within the grace period, and stopping the engine leaves no dockerd, container,
// mount, network link or firewall rule behind.
import { execFile, execFileSync, spawn } from 'node:child_process'
import { randomBytes, randomUUID } from 'node:crypto'
import { createWriteStream, existsSync, readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import postgres from 'postgres'
import { Webhook } from 'standardwebhooks'
import t, { type Test } from 'tap'
import { createServiceClient } from '../../routes/identity/clients.ts'
import { parseEnvLines } from '../../scripts/local-stack.ts'
import { projectRoot, runtimeFiles } from '../deploy/runtime-files.ts'
import { freePort } from '../free-port.ts'
import { startReceiver, type Received } from '../webhook-receiver.ts'

const engineScript = join(projectRoot, 'scripts/engine.sh')
const DOCKER = '/usr/bin/docker'
const IMAGE = 'ledger-api:image-test'
/** docker stop's grace period: the worker's drain is WEBHOOK_TIMEOUT_MS (set below) plus the in-flight bookkeeping. */
const STOP_GRACE_S = 30
/** What every container of the image runs with, as a cluster's restricted pod security would ask. */
const HARDENED = ['--network', 'host', '--read-only', '--cap-drop', 'ALL', '--security-opt', 'no-new-privileges']

const { DATABASE_URL, DATABASE_DIRECT_URL, REDIS_URL } = process.env
if (DATABASE_URL === undefined || DATABASE_DIRECT_URL === undefined || REDIS_URL === undefined) {
  throw new Error('run through `npm run image:test`, which sets DATABASE_URL, DATABASE_DIRECT_URL and REDIS_URL')
}

const timings: Record<string, number> = {}
async function timed<T> (name: string, work: () => Promise<T> | T): Promise<T> {
  const started = performance.now()
  try {
    return await work()
  } finally {
    timings[name] = Math.round(performance.now() - started) / 1000
  }
}

function engine (command: 'up' | 'down' | 'env' | 'base' | 'status', timeoutMs = 120_000): string {
  return execFileSync('bash', [engineScript, command], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], timeout: timeoutMs }).trim()
}

const engineEnv = parseEnvLines(engine('env'))
const engineDir = engineEnv.ENGINE_DIR as string
const dockerEnv = { ...process.env, DOCKER_HOST: engineEnv.DOCKER_HOST, DOCKER_BUILDKIT: engineEnv.DOCKER_BUILDKIT }

interface Ran { code: number | null, stdout: string, stderr: string }

/** Runs the Debian docker client against our engine; resolves with its exit code and output (never rejects). */
function docker (args: string[], options: { timeoutMs?: number, env?: Record<string, string> } = {}): Promise<Ran> {
  return new Promise((resolve) => {
    execFile(DOCKER, args, { env: { ...dockerEnv, ...options.env }, timeout: options.timeoutMs ?? 60_000, maxBuffer: 16 * 1024 * 1024, encoding: 'utf8' },
      (error, stdout, stderr) => resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : null, stdout: stdout.trim(), stderr: stderr.trim() }))
  })
}

/** `-e NAME` for each variable (the values reach the container through the client's environment, not its argv). */
const envArgs = (env: Record<string, string>) => Object.keys(env).flatMap((name) => ['-e', name])

function commandOutput (command: string, args: string[]): string {
  try {
    return execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
  } catch (error) {
    // Not installed yet: on a fresh machine the engine's own install (docker.io) brings iptables during the test, and
    // a tool that was absent had set no rules, so the state before is empty rather than an error line.
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return ''
    return `(${command} failed: ${(error as Error).message.split('\n')[0]})`
  }
}

/** What an engine could leave behind on the host. */
function hostState () {
  const ruleLines = (text: string) => text.split('\n').filter((line) => line !== '' && !line.startsWith('#'))
  const mountPoints = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter(Boolean).map((line) => line.split(' ')[4] as string)
  const processes = readdirSync('/proc').filter((entry) => /^\d+$/.test(entry)).flatMap((pid) => {
    try {
      const command = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ')
      return command.includes(engineDir) ? [`${pid} ${command}`] : []
    } catch {
      return []
    }
  })
  return {
    firewall: [
      ...ruleLines(commandOutput('iptables-save', [])),
      ...ruleLines(commandOutput('ip6tables-save', [])),
      ...(existsSync('/usr/sbin/iptables-legacy-save') ? ruleLines(commandOutput('iptables-legacy-save', [])) : [])
    ],
    links: readdirSync('/sys/class/net').sort(),
    mounts: mountPoints.sort(),
    engineMounts: mountPoints.filter((point) => point.startsWith(engineDir) || point.startsWith('/run/docker') || point.startsWith('/run/containerd')),
    processes,
    hostPaths: ['/etc/docker/key.json', '/run/docker', '/run/containerd'].filter((path) => existsSync(path))
  }
}

const secretOf = (length: number) => randomBytes(length).toString('base64url')

let failedPhase: string | undefined
/** A phase runs only when every earlier one passed: later phases need what the earlier ones built or started. */
async function phase (name: string, body: (t: Test) => Promise<void>) {
  await t.test(name, { skip: failedPhase === undefined ? false : `${failedPhase} failed` }, async (t) => {
    await body(t)
    if (!t.passing()) failedPhase = name
  })
}

// Stopped first, so that the state compared at the end is the host's own, and stopped last, whatever happened.
engine('down')
const before = hostState()
t.teardown(() => { engine('down') })

const ports = { api: await freePort(), ops: await freePort() }
const pgbouncerUrl = new URL(DATABASE_URL)
const apiUrl = `http://127.0.0.1:${ports.api}`
const opsUrl = `http://127.0.0.1:${ports.ops}`
// As in production: the image's processes never see the owner's credentials; the API and the worker connect through
// PgBouncer as the restricted role, and only the migration command gets DATABASE_DIRECT_URL.
const runtimeEnv = {
  NODE_ENV: 'production',
  DATABASE_URL: pgbouncerUrl.toString(),
  REDIS_URL,
  JWT_SECRET: secretOf(48),
  METRICS_TOKEN: secretOf(24),
  // The receiver is on loopback; production refuses private and loopback targets.
  WEBHOOK_ALLOW_PRIVATE_TARGETS: 'true',
  WEBHOOK_TIMEOUT_MS: '5000',
  LOG_LEVEL: 'info'
}
const apiEnv = { ...runtimeEnv, HOST: '127.0.0.1', PORT: String(ports.api), OPS_PORT: String(ports.ops), WORKER_ENABLED: 'false' }
const owner = postgres(DATABASE_DIRECT_URL, { max: 1, onnotice: () => {} })
t.teardown(() => owner.end({ timeout: 5 }))
const receiver = await startReceiver()
t.teardown(() => receiver.close())
const containers: Record<'api' | 'worker', string> = { api: '', worker: '' }
const logsOf = async (id: string) => { const ran = await docker(['logs', '--tail', '40', id]); return `${ran.stdout}\n${ran.stderr}` }

await phase('the engine starts and the stand-in base is built or reused', async (t) => {
  await timed('engine up', () => engine('up', 900_000))
  t.match(engine('status'), /^running \d+$/)
  const base = await timed('base image', () => engine('base', 900_000))
  t.match(base, /^ledger-api-base:node24\.\d+\.\d+-[0-9a-f]{12}$/, `base ${base}`)
  process.env.IMAGE_TEST_BASE = base
})

await phase('the project\'s Dockerfile builds on it', async (t) => {
  const log = join(engineDir, 'log', 'build.log')
  const code = await timed('docker build', () => new Promise<number | null>((resolve) => {
    const out = createWriteStream(log)
    const build = spawn(DOCKER, ['build', '--network', 'host', '--progress', 'plain', '--build-arg', `BASE=${process.env.IMAGE_TEST_BASE}`, '-t', IMAGE, '.'],
      { cwd: projectRoot, env: dockerEnv, stdio: ['ignore', 'pipe', 'pipe'] })
    build.stdout.pipe(out, { end: false })
    build.stderr.pipe(out, { end: false })
    const timer = setTimeout(() => build.kill('SIGTERM'), 900_000)
    build.on('close', (status) => { clearTimeout(timer); out.end(); resolve(status) })
  }))
  t.equal(code, 0, `docker build (log: ${log})`)
  if (code !== 0) t.comment(readFileSync(log, 'utf8').split('\n').slice(-30).join('\n'))
  const size = await docker(['image', 'inspect', '--format', '{{.Size}} {{.Config.User}}', IMAGE])
  const [bytes, user] = size.stdout.split(' ')
  t.equal(user, 'node', 'the image runs as node unless told otherwise')
  timings['image MB'] = Math.round(Number(bytes) / 1e6)
})

await phase('the image holds every module its commands load, as root-owned files its user cannot change', async (t) => {
  const files = runtimeFiles()
  const check = await docker(['run', '--rm', ...HARDENED, IMAGE, 'node', '-e',
    "const fs = require('node:fs'); console.log(JSON.stringify(process.argv.slice(1).filter((f) => !fs.existsSync(f))))", ...files])
  t.equal(check.code, 0, check.stderr)
  t.same(JSON.parse(check.stdout || 'null'), [], `all ${files.length} runtime files are in /app`)

  const id = await docker(['run', '--rm', ...HARDENED, IMAGE, 'id', '-u'])
  t.equal(id.stdout, '1000', 'uid 1000 without --user')
  // Without --read-only as well: the files belong to root, so the process cannot rewrite its own code.
  const write = "const fs = require('node:fs'); for (const f of ['/app/server.ts', '/app/new.ts', '/tmp/x']) { try { fs.writeFileSync(f, 'x'); console.log('wrote ' + f) } catch (e) { console.log(e.code + ' ' + f) } }"
  const writable = await docker(['run', '--rm', '--network', 'host', '--cap-drop', 'ALL', '--security-opt', 'no-new-privileges', IMAGE, 'node', '-e', write])
  t.match(writable.stdout, /^EACCES \/app\/server\.ts$/m, 'its own code is not writable by node')
  t.match(writable.stdout, /^EACCES \/app\/new\.ts$/m, '/app takes no new file')
  const readOnly = await docker(['run', '--rm', ...HARDENED, IMAGE, 'node', '-e', write])
  t.notMatch(readOnly.stdout, /^wrote /m, 'read-only root filesystem: nothing is writable')
  t.match(readOnly.stdout, /^EROFS \/tmp\/x$/m)
  const escalate = await docker(['run', '--rm', ...HARDENED, IMAGE, 'sh', '-c', 'grep -E "^(CapEff|CapBnd|NoNewPrivs)" /proc/self/status'])
  t.match(escalate.stdout, /CapEff:\s+0{16}\nCapBnd:\s+0{16}\nNoNewPrivs:\s+1/, 'no capability, no new privileges')
})

await phase('the image\'s migration command migrates the database', async (t) => {
  const env = { DATABASE_DIRECT_URL }
  const migrate = await timed('migrate', () => docker(['run', '--rm', ...HARDENED, ...envArgs(env), IMAGE, 'node', 'scripts/migrate.ts'], { env, timeoutMs: 120_000 }))
  t.equal(migrate.code, 0, migrate.stderr)
  t.match(migrate.stdout, /migrations: [1-9]\d* applied, 0 already in place/)
  const [row] = await owner<{ count: number }[]>`select count(*)::int as count from schema_migrations`
  t.ok((row?.count ?? 0) > 0, `${row?.count} migrations recorded`)
  const again = await docker(['run', '--rm', ...HARDENED, ...envArgs(env), IMAGE, 'node', 'scripts/migrate.ts'], { env, timeoutMs: 120_000 })
  t.match(again.stdout, /migrations: 0 applied/, 'a second run applies nothing')
})

await phase('an API container and a worker container start, hardened, as uid 1000', async (t) => {
  const start = async (name: 'api' | 'worker', env: Record<string, string>, command: string[]) => {
    const ran = await docker(['run', '--detach', '--name', `ledger-image-test-${name}-${process.pid}`, ...HARDENED, '--stop-timeout', String(STOP_GRACE_S), ...envArgs(env), IMAGE, ...command], { env })
    t.equal(ran.code, 0, `${name}: ${ran.stderr}`)
    containers[name] = ran.stdout
  }
  const started = performance.now()
  await start('api', apiEnv, [])
  await start('worker', runtimeEnv, ['node', 'worker.ts'])
  let ready = false
  while (!ready && performance.now() - started < 60_000) {
    const state = await docker(['inspect', '--format', '{{.State.Running}}', containers.api, containers.worker])
    if (state.stdout.includes('false')) break
    ready = await fetch(`${opsUrl}/health/ready`).then((r) => r.status === 200, () => false)
    if (!ready) await new Promise((resolve) => setTimeout(resolve, 250))
  }
  timings['start to ready'] = Math.round(performance.now() - started) / 1000
  t.ok(ready, 'GET /health/ready on the ops port: 200')
  if (!ready) for (const id of Object.values(containers)) t.comment(await logsOf(id))
  t.equal((await fetch(`${apiUrl}/health/ready`)).status, 200, 'and on the public port')
  // Production warms up (WARM_UP_S unset: 8 s) before either port opens; its client runs on a worker thread.
  const warmedUp = (await logsOf(containers.api)).split('\n').find((line) => line.includes('"msg":"warmed up"'))
  t.match(warmedUp === undefined ? undefined : JSON.parse(warmedUp), { statuses: { 200: Number, 401: Number, 404: Number } }, 'the API warmed up before its ports opened')
  t.equal((await fetch(`${apiUrl}/metrics`)).status, 404, 'metrics are not on the public port')

  for (const [name, id] of Object.entries(containers)) {
    const inspect = JSON.parse((await docker(['inspect', id])).stdout)[0]
    t.equal(inspect.State.Running, true, `${name} is running`)
    t.equal(inspect.HostConfig.ReadonlyRootfs, true, `${name}: read-only root filesystem`)
    t.same(inspect.HostConfig.CapDrop, ['ALL'], `${name}: every capability dropped`)
    t.ok(inspect.HostConfig.SecurityOpt.includes('no-new-privileges'), `${name}: no new privileges`)
    t.equal(inspect.HostConfig.NetworkMode, 'host')
    t.notOk(inspect.Config.Env.some((entry: string) => entry.startsWith('DATABASE_DIRECT_URL=')), `${name}: no owner credentials`)
    // The process as the host's kernel sees it.
    const status = readFileSync(`/proc/${inspect.State.Pid}/status`, 'utf8')
    t.match(status, /^Uid:\s+1000\s+1000\s+1000\s+1000$/m, `${name}: uid 1000`)
    t.match(status, /^CapEff:\s+0{16}$/m, `${name}: no effective capability`)
    t.match(status, /^NoNewPrivs:\s+1$/m)
  }
})

interface Session { id: string, authorization: string }
const people: Record<'alice' | 'bob', Session> = { alice: { id: '', authorization: '' }, bob: { id: '', authorization: '' } }
let transferId = ''
let endpoint = { id: '', secret: '' }

const call = async (method: string, path: string, options: { authorization?: string, body?: unknown, key?: string } = {}) => {
  const headers: Record<string, string> = {}
  if (options.body !== undefined) headers['content-type'] = 'application/json'
  if (options.authorization !== undefined) headers.authorization = options.authorization
  if (options.key !== undefined) headers['idempotency-key'] = options.key
  const response = await fetch(`${apiUrl}${path}`, { method, headers, body: options.body === undefined ? undefined : JSON.stringify(options.body) })
  const text = await response.text()
  return { status: response.status, body: text === '' ? undefined : JSON.parse(text) }
}

await phase('it serves: signups, a service client\'s deposit, a transfer', async (t) => {
  for (const name of ['alice', 'bob'] as const) {
    const email = `${name}-${randomBytes(6).toString('hex')}@example.test`
    const password = 'correct horse battery staple'
    const signup = await call('POST', '/users', { body: { email, name, password } })
    t.equal(signup.status, 201, `${name} signs up`)
    const login = await call('POST', '/auth/token', { body: { email, password } })
    t.equal(login.status, 200, `${name} logs in`)
    people[name] = { id: signup.body.id, authorization: `Bearer ${login.body.access_token}` }
  }

  const registered = await call('POST', '/webhook-endpoints', { authorization: people.alice.authorization, body: { url: receiver.url } })
  t.equal(registered.status, 201, 'alice registers a webhook endpoint on loopback')
  endpoint = registered.body

  // Made the way the operator's `npm run clients -- create` makes one: as the owner, straight to PostgreSQL.
  const { client, secret } = await createServiceClient(owner, 'image test settlement system', ['funds:write'])
  const token = await call('POST', '/auth/token', { body: { grant_type: 'client_credentials', client_id: client.id, client_secret: secret } })
  t.equal(token.status, 200, 'client credentials grant')
  const deposit = await call('POST', '/transactions', {
    authorization: `Bearer ${token.body.access_token}`,
    key: randomUUID(),
    body: { kind: 'deposit', userId: people.alice.id, amount: 10_000, currency: 'USD', reference: `settlement-${randomBytes(6).toString('hex')}` }
  })
  t.equal(deposit.status, 201, 'the client deposits 100.00 USD to alice')
  const transfer = await call('POST', '/transactions', {
    authorization: people.alice.authorization, key: randomUUID(), body: { kind: 'transfer', toUserId: people.bob.id, amount: 2_500, currency: 'USD' }
  })
  t.equal(transfer.status, 201, 'alice transfers 25.00 USD to bob')
  transferId = transfer.body?.id
  t.same((await call('GET', '/balances', { authorization: people.alice.authorization })).body, { data: [{ currency: 'USD', balance: 7_500 }] })
  t.same((await call('GET', '/balances', { authorization: people.bob.authorization })).body, { data: [{ currency: 'USD', balance: 2_500 }] })
  const entries = await owner<{ delta: string }[]>`select delta::text from entries where transaction_id = ${transferId} order by delta`
  t.same(entries.map((entry) => entry.delta), ['-2500', '2500'], 'the transfer is two ledger entries that sum to zero')
})

await phase('the worker container delivers the transfer\'s webhook, signed', async (t) => {
  const isTransfer = (received: Received) => { try { return JSON.parse(received.body).data?.id === transferId } catch { return false } }
  const started = performance.now()
  while (!receiver.received.some(isTransfer) && performance.now() - started < 30_000) await new Promise((resolve) => setTimeout(resolve, 100))
  timings['webhook delivered after'] = Math.round(performance.now() - started) / 1000
  const delivery = receiver.received.find(isTransfer)
  t.ok(delivery, 'the receiver got the transfer\'s event')
  if (delivery === undefined) { t.comment(await logsOf(containers.worker)); return }
  const event = new Webhook(endpoint.secret).verify(delivery.body, delivery.headers as Record<string, string>) as { type: string, data: { id: string, kind: string, amount: number } }
  t.match(event, { type: 'transaction.created', data: { id: transferId, kind: 'transfer', amount: 2_500 } }, 'standardwebhooks verifies it')
  t.throws(() => new Webhook(`whsec_${randomBytes(24).toString('base64')}`).verify(delivery.body, delivery.headers as Record<string, string>), 'another secret does not')
  const deliveries = await call('GET', `/webhook-endpoints/${endpoint.id}/deliveries`, { authorization: people.alice.authorization })
  const recorded = deliveries.body?.data?.find((d: { transactionId: string }) => d.transactionId === transferId)
  t.match(recorded, { status: 'delivered', attempts: 1, lastStatusCode: 200 }, 'recorded as delivered')
})

await phase('docker stop ends both with exit code 0 within the grace period', async (t) => {
  const started = performance.now()
  const stopped = await Promise.all(Object.values(containers).map((id) => docker(['stop', '--time', String(STOP_GRACE_S), id], { timeoutMs: (STOP_GRACE_S + 30) * 1000 })))
  timings['docker stop'] = Math.round(performance.now() - started) / 1000
  t.ok(timings['docker stop'] < STOP_GRACE_S, `stopped in ${timings['docker stop']} s (grace ${STOP_GRACE_S} s)`)
  for (const [index, [name, id]] of Object.entries(containers).entries()) {
    t.equal(stopped[index]?.code, 0, `docker stop ${name}`)
    const state = JSON.parse((await docker(['inspect', '--format', '{{json .State}}', id])).stdout)
    t.match(state, { Running: false, ExitCode: 0, OOMKilled: false }, `${name} exited 0 by itself`)
    if (state.ExitCode !== 0) t.comment(await logsOf(id))
    t.equal((await docker(['rm', id])).code, 0, `${name} removed`)
  }
  t.equal((await docker(['ps', '--all', '--quiet'])).stdout, '', 'no container left')
})

await phase('stopping the engine leaves the host as it was', async (t) => {
  await timed('engine down', () => engine('down'))
  t.equal(engine('status'), 'stopped')
  const after = hostState()
  t.same(after.processes, [], 'no dockerd, containerd or shim of ours running')
  t.same(after.engineMounts, [], 'nothing mounted under the engine folder, /run/docker or /run/containerd')
  t.same(after.mounts, before.mounts, 'the host\'s mounts as before')
  t.same(after.firewall, before.firewall, 'iptables and ip6tables rules as before')
  t.same(after.links, before.links, 'no network link added or removed')
  t.same(after.hostPaths, before.hostPaths, 'dockerd\'s host files (trust key, plugin and shim folders) removed')
  t.comment(`timings (s): ${Object.entries(timings).map(([name, value]) => `${name} ${value}`).join(', ')}`)
})
