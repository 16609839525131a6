// The project-local data stack (PgBouncer in transaction mode: local runs hit production's pooling constraints).
// Progress goes to stderr, so `eval "$(npm run -s stack -- env)"` sees only machine-readable output.
import { randomBytes } from 'node:crypto'
import { chmodSync, existsSync, lstatSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { clusterNodePorts, clusterPorts, clusterSize, isPostgres, type Layout, logFile, MAIN_PORT_VARS, pidFile, pidFilePort, pidOf, type PortVar, resolveLayout, settlePorts } from './layout.ts'
import { die, IS_ROOT, log, portInUse, procComm, readPid, run, signal, SVC_USER, userCanEnter, waitFor, which } from './proc.ts'
import { API_USER, clusterNode, type Ctx, DB_USER, ensureBins, formCluster, pgbouncerConf, READY_TIMEOUT, type Service, SERVICES, SUPER_USER, validateCluster } from './services.ts'

const USAGE = `usage: npm run stack -- up|down|status|env|pgbouncer-conf|help
       npm run stack -- start|stop|restart postgres|pgbouncer|redis
       npm run stack -- replica|cluster up|down|status|env

  up              start whatever is not running (idempotent), wait until all accept connections
  down            stop every process of the stack (the replica and cluster too)
  status          one line per service: name, running/stopped, pid, port
  env             DATABASE_URL, DATABASE_DIRECT_URL, DATABASE_ADMIN_URL, REDIS_URL, STACK_DIR (for eval or .env),
                  and JWT_SECRET once \`up\` has generated it (jwt-secret in the stack folder, mode 0600)
  pgbouncer-conf  the pgbouncer.ini that \`start pgbouncer\` writes (starts nothing)
  replica         a streaming hot standby cloned from the primary; \`down\` deletes it; env: DATABASE_REPLICA_URL
  cluster         a Redis Cluster of 3 masters (+ 3 replicas unless STACK_REDIS_CLUSTER_REPLICAS=0), nothing
                  persistent; env: REDIS_CLUSTER_NODES

Ports: STACK_PG_PORT (61432), STACK_PGBOUNCER_PORT (62432), STACK_REDIS_PORT (61379), STACK_PG_REPLICA_PORT (61433),
STACK_REDIS_CLUSTER_PORT (57001); when unset: the stack folder's \`ports\` file, else the defaults, else (a default
held by another process) a block derived from the folder's path. LEDGER_STACK_DIR: the stack folder.\n`
const STOP_TIMEOUT = 30
const MAIN = ['postgres', 'pgbouncer', 'redis'] as const

// Our connections pass host/port/user/db; the caller's libpq settings (PGSSLMODE=require, say) would change them.
for (const name of ['PGHOST', 'PGHOSTADDR', 'PGPORT', 'PGUSER', 'PGDATABASE', 'PGDATA', 'PGOPTIONS', 'PGSERVICE', 'PGSERVICEFILE', 'PGSSLMODE', 'PGREQUIRESSL', 'PGTARGETSESSIONATTRS']) delete process.env[name]

/** Serialises concurrent starts and stops (two test runners calling `up`): a file naming the holder's pid. */
async function takeLock (dir: string) {
  const file = join(dir, '.lock')
  const take = () => {
    try { writeFileSync(file, String(process.pid), { flag: 'wx' }); return true } catch {}
    const holder = readPid(file)
    // Ours already (a restart stops, then starts); a dead holder's (or an older stack's empty file) nobody releases.
    if (holder === process.pid) return true
    if (holder === undefined || procComm(holder) === undefined) rmSync(file, { force: true })
    return false
  }
  if (!(await waitFor(120, take))) die(`another stack command is still working on ${dir}`)
  process.on('exit', () => rmSync(file, { force: true }))
}

/** Everything that may create or start something goes through here; `vars` are the ports of what is to start. */
async function prepareStart (vars: PortVar[]): Promise<Ctx> {
  const bins = ensureBins(await resolveLayout())
  if (IS_ROOT && which('runuser') === undefined) die('running as root needs runuser (util-linux) to drop privileges')
  if (IS_ROOT && !run('id', ['-u', SVC_USER]).ok) {
    log(`creating system user ${SVC_USER} (PostgreSQL and PgBouncer refuse to run as root)`)
    run('useradd', ['--system', '--user-group', '--no-create-home', '--home-dir', '/var/lib/postgresql', '--shell', '/usr/sbin/nologin', SVC_USER], { progress: true })
  }
  // The service user may only exist now, which can change where the stack lives.
  const { dir, link } = await resolveLayout()
  if (link !== undefined) {
    if (existsSync(link) && !lstatSync(link).isSymbolicLink()) die(`${link} exists but the ${SVC_USER} user cannot reach it (a parent directory is not traversable); remove it or set LEDGER_STACK_DIR`)
    mkdirSync(dir, { recursive: true })
    rmSync(link, { force: true })
    symlinkSync(dir, link)
  }
  for (const sub of ['pg', 'run', 'log', 'redis', 'pgbouncer']) mkdirSync(join(dir, sub), { recursive: true })
  // Unix socket paths are limited to ~107 bytes: a hint here beats a bind error buried in a log.
  if (`${dir}/run/.s.PGSQL.65535`.length > 100) die(`stack folder path is too long for unix sockets (${dir}); set LEDGER_STACK_DIR to a shorter path`)
  if (IS_ROOT) {
    run('chown', ['-R', `${SVC_USER}:`, dir])
    if (!userCanEnter(join(dir, 'run'))) die(`user ${SVC_USER} cannot reach ${dir} (a parent directory is not traversable); set LEDGER_STACK_DIR to a folder under e.g. /var/tmp`)
  }
  await takeLock(dir)
  // Again under the lock: a start running in parallel may just have saved its choice.
  const l = await resolveLayout()
  await settlePorts(l, vars)
  return { l, bins }
}

/** A command that stops, under the lock: it never installs anything, and without a stack folder there is nothing to stop. */
const stopping = (act: (l: Layout) => Promise<unknown>, done?: string) => async () => {
  const l = await resolveLayout()
  if (existsSync(l.dir)) {
    await takeLock(l.dir)
    await act(l)
  }
  if (done !== undefined) log(done)
}

async function start (ctx: Ctx, name: string, service: Service) {
  const { l } = ctx
  const port = service.port ?? l.ports[service.portVar]
  const launch = async () => {
    if (!isPostgres(name)) rmSync(pidFile(l, name), { force: true })
    log(`starting ${name} on 127.0.0.1:${port}`)
    if (!(await service.launch(ctx)).ok) die(`${name} failed to start`, logFile(l, name))
  }
  const pid = pidOf(l, name)
  // settlePorts saw its ports free, under the lock.
  if (pid === undefined) await launch()
  else if (isPostgres(name) ? pidFilePort(l, name) !== port : !(await portInUse(port))) {
    die(`${name} (pid ${pid}) is running on another port than ${service.portVar}=${port}; run: npm run stack -- ${name === 'replica' ? 'replica down' : `restart ${name}`}`)
  } else log(`${name} already running (pid ${pid})`)
  // Daemons write their pid file only after forking: a missing process counts after 3 s.
  const ready = () => waitFor(READY_TIMEOUT, () => service.ready(ctx), (i) => i >= 30 && pidOf(l, name) === undefined)
  let up = await ready()
  if (!up && service.retry === true) {
    log(`${name} did not come up; retrying once`)
    await launch()
    up = await ready()
  }
  if (!up) die(pidOf(l, name) === undefined ? `${name} exited during startup` : `${name} did not accept connections on 127.0.0.1:${port} within ${READY_TIMEOUT}s`, logFile(l, name))
  service.prepare?.(ctx)
}

const gone = (pid: number) => waitFor(STOP_TIMEOUT, () => procComm(pid) === undefined)
async function stop (l: Layout, name: string) {
  const pid = pidOf(l, name)
  // `down` stops the extras whether or not they were started: only a main service not running is news.
  if (pid === undefined) return name === 'replica' || name.startsWith('cluster-') ? undefined : log(`${name} is not running`)
  log(`stopping ${name} (pid ${pid})`)
  // PostgreSQL: a fast shutdown, else an immediate one (what `pg_ctl stop -m fast|immediate` send). Newer PgBouncer
  // takes SIGTERM as "wait for clients to leave", which an app holding pooled connections never does.
  const signals: NodeJS.Signals[] = isPostgres(name) ? ['SIGINT', 'SIGQUIT', 'SIGKILL'] : ['SIGTERM', 'SIGKILL']
  for (const sig of signals) {
    if (sig !== signals[0]) log(`${name} (pid ${pid}) still running after ${STOP_TIMEOUT}s; sending ${sig}`)
    signal(pid, sig)
    if (await gone(pid)) break
  }
  if (procComm(pid) !== undefined) die(`could not stop ${name} (pid ${pid})`)
  // A killed daemon leaves its pid file behind (postgres cleans up its own).
  if (!isPostgres(name)) rmSync(pidFile(l, name), { force: true })
}

const statusLine = (name: string, pid: number | undefined, port: number) => `${name.padEnd(10)} ${(pid === undefined ? 'stopped' : 'running').padEnd(8)} pid=${String(pid ?? '-').padEnd(8)} port=${port}\n`

// Made once per stack folder (never committed), so `npm start`'s tokens survive restarts and every process of this
// checkout signs with the same key; under the lock of `up`. base64url needs no quoting.
function ensureJwtSecret (l: Layout) {
  const file = join(l.dir, 'jwt-secret')
  if (existsSync(file) && readFileSync(file, 'utf8').length > 0) return
  writeFileSync(file, `${randomBytes(48).toString('base64url')}\n`, { mode: 0o600 })
  chmodSync(file, 0o600)
  log(`generated the local JWT secret (${file})`)
}

function env (l: Layout): string {
  const secret = join(l.dir, 'jwt-secret')
  return [
    `DATABASE_URL=postgres://${API_USER}@127.0.0.1:${l.ports.STACK_PGBOUNCER_PORT}/ledger`,
    `DATABASE_DIRECT_URL=postgres://${DB_USER}@127.0.0.1:${l.ports.STACK_PG_PORT}/ledger`,
    // For the test runner and benchmarks, which create databases of their own (scripts/local-stack.ts).
    `DATABASE_ADMIN_URL=postgres://${SUPER_USER}@127.0.0.1:${l.ports.STACK_PG_PORT}/postgres`,
    `REDIS_URL=redis://127.0.0.1:${l.ports.STACK_REDIS_PORT}`,
    // Single quotes, not shell escapes: still eval-safe, and dotenv-style parsers only know how to strip quotes.
    /^[\w./:@+-]+$/.test(l.dir) ? `STACK_DIR=${l.dir}` : `STACK_DIR='${l.dir.replaceAll("'", "'\\''")}'`,
    ...(existsSync(secret) ? [`JWT_SECRET=${readFileSync(secret, 'utf8').trim()}`] : [])
  ].map((line) => `${line}\n`).join('')
}

async function replicaDown (l: Layout) {
  await stop(l, 'replica')
  rmSync(l.replicaData, { recursive: true, force: true })
}
async function clusterDown (l: Layout) {
  for (const port of clusterNodePorts(l)) await stop(l, `cluster-${port}`)
  rmSync(l.clusterDir, { recursive: true, force: true })
}
const out = (text: string) => process.stdout.write(text)
/** A read-only command: it prints, starts nothing and writes nothing. */
const print = (text: (l: Layout) => string) => async () => out(text(await resolveLayout()))
const COMMANDS: Record<string, () => Promise<unknown>> = {
  async up () {
    const ctx = await prepareStart(MAIN_PORT_VARS)
    ensureJwtSecret(ctx.l)
    for (const name of MAIN) await start(ctx, name, SERVICES[name])
    const { ports, dir } = ctx.l
    out(`stack up: postgres 127.0.0.1:${ports.STACK_PG_PORT}, pgbouncer 127.0.0.1:${ports.STACK_PGBOUNCER_PORT} (transaction pool), redis 127.0.0.1:${ports.STACK_REDIS_PORT}, dir ${dir}\n`)
  },
  down: stopping(async (l) => {
    // The extras first (the replica streams from postgres), then clients of a service before the service.
    await clusterDown(l)
    if (existsSync(l.replicaData)) await replicaDown(l)
    for (const name of [...MAIN].reverse()) await stop(l, name)
  }, 'stack down'),
  status: print((l) => MAIN.map((name) => statusLine(name, pidOf(l, name), l.ports[SERVICES[name].portVar])).join('')),
  env: print(env),
  'pgbouncer-conf': print(pgbouncerConf),
  async 'replica up' () {
    const ctx = await prepareStart(['STACK_PG_REPLICA_PORT'])
    if (pidOf(ctx.l, 'postgres') === undefined) die('postgres (the primary) is not running; run: npm run stack -- up')
    await start(ctx, 'replica', SERVICES.replica)
    out(`replica up: 127.0.0.1:${ctx.l.ports.STACK_PG_REPLICA_PORT} streaming from 127.0.0.1:${ctx.l.ports.STACK_PG_PORT}\n`)
  },
  'replica down': stopping(replicaDown, 'replica down'),
  'replica status': print((l) => statusLine('replica', pidOf(l, 'replica'), l.ports.STACK_PG_REPLICA_PORT)),
  'replica env': print((l) => `DATABASE_REPLICA_URL=postgres://${API_USER}@127.0.0.1:${l.ports.STACK_PG_REPLICA_PORT}/ledger\n`),
  async 'cluster up' () {
    const ctx = await prepareStart(['STACK_REDIS_CLUSTER_PORT'])
    validateCluster(ctx.l)
    for (const port of clusterPorts(ctx.l)) await start(ctx, `cluster-${port}`, clusterNode(port))
    await formCluster(ctx)
    out(`cluster up: ${clusterSize(ctx.l)} nodes from 127.0.0.1:${ctx.l.ports.STACK_REDIS_CLUSTER_PORT}\n`)
  },
  'cluster down': stopping(clusterDown, 'cluster down'),
  'cluster status': print((l) => clusterPorts(validateCluster(l)).map((p) => statusLine('cluster', pidOf(l, `cluster-${p}`), p)).join('')),
  'cluster env': print((l) => `REDIS_CLUSTER_NODES=${clusterPorts(validateCluster(l)).map((p) => `127.0.0.1:${p}`).join(',')}\n`)
}
for (const name of MAIN) {
  COMMANDS[`stop ${name}`] = stopping((l) => stop(l, name))
  COMMANDS[`start ${name}`] = async () => start(await prepareStart([SERVICES[name].portVar]), name, SERVICES[name])
  COMMANDS[`restart ${name}`] = async () => { await COMMANDS[`stop ${name}`]!(); await COMMANDS[`start ${name}`]!() }
}

const args = process.argv.slice(2)
if (Object.hasOwn(COMMANDS, args.join(' '))) await COMMANDS[args.join(' ')]!()
else {
  process.stderr.write(USAGE)
  if (!(args.length === 1 && ['help', '-h', '--help'].includes(args[0] ?? ''))) process.exit(2)
}
