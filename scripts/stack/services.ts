// The stack's services as a table: binary, configuration, start, readiness; index.ts starts and stops them.
import { existsSync, mkdirSync, readFileSync, realpathSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { clusterPorts, clusterSize, type Layout, logFile, pidFile, pidOf, PROJECT, type PortVar } from './layout.ts'
import { die, executable, IS_ROOT, log, portInUse, procComm, readPid, run, runAs, type Run, SVC_USER, waitFor, which } from './proc.ts'

// The owner (migrations, tools: DATABASE_DIRECT_URL) and the API's restricted role (DATABASE_URL, via PgBouncer).
export const DB_USER = 'ledger'
export const API_USER = 'ledger_api'
// The cluster's superuser: creates roles and databases (sql/bootstrap.sql), streams to the replica; never the service's.
export const SUPER_USER = 'postgres'
export const READY_TIMEOUT = 30
const PACKAGES = ['postgresql', 'postgresql-contrib', 'pgbouncer', 'redis-server']
const PG_TOOLS = ['initdb', 'pg_ctl', 'postgres', 'psql', 'pg_isready', 'pg_basebackup'] as const
const OTHER_TOOLS = { pgbouncer: '/usr/sbin/pgbouncer', 'redis-server': '/usr/bin/redis-server', 'redis-cli': '/usr/bin/redis-cli' }
export type Bins = Record<typeof PG_TOOLS[number] | keyof typeof OTHER_TOOLS, string>
export interface Ctx { l: Layout, bins: Bins }

/** The server tools' folder: the existing cluster's major version (only it can start that cluster), else the
 * `initdb` on PATH (its real folder, where the matching tools live), else the newest /usr/lib/postgresql/N. */
function pgBinDir (l: Layout): string | undefined {
  const bin = (version: string) => `/usr/lib/postgresql/${version}/bin`
  const versions = existsSync('/usr/lib/postgresql') ? readdirSync('/usr/lib/postgresql').filter((v) => executable(`${bin(v)}/initdb`)) : []
  const cluster = existsSync(join(l.pgData, 'PG_VERSION')) ? readFileSync(join(l.pgData, 'PG_VERSION'), 'utf8').trim() : ''
  if (versions.includes(cluster)) return bin(cluster)
  const initdb = which('initdb')
  if (initdb !== undefined) return dirname(realpathSync(initdb))
  const newest = versions.sort((a, b) => Number(a) - Number(b)).pop()
  return newest === undefined ? undefined : bin(newest)
}
/** PgBouncer's or Redis's binary: the one on PATH, else where Debian installs it; undefined when neither exists. */
export function serviceBin (tool: keyof typeof OTHER_TOOLS): string | undefined {
  return which(tool) ?? executable(OTHER_TOOLS[tool])
}
export function resolveBins (l: Layout): Bins {
  const dir = pgBinDir(l)
  // Server and client tools from one folder, so that versions match (Debian's /usr/bin/psql picks a version).
  const pg = PG_TOOLS.map((tool) => [tool, (dir === undefined ? undefined : executable(join(dir, tool))) ?? which(tool)])
  return Object.fromEntries([...pg, ...(Object.keys(OTHER_TOOLS) as Array<keyof typeof OTHER_TOOLS>).map((tool) => [tool, serviceBin(tool)])])
}
// pg_basebackup only matters to the replica, which says so when it is missing.
const missingBins = (l: Layout) => Object.entries(resolveBins(l)).filter(([tool, bin]) => bin === undefined && tool !== 'pg_basebackup').map(([tool]) => tool)

/** The binaries, installed with apt-get first when missing on Debian as root; elsewhere the exact install line. */
export function ensureBins (l: Layout): Bins {
  const missing = missingBins(l)
  if (missing.length === 0) return resolveBins(l)
  const install = `sudo apt-get install -y ${PACKAGES.join(' ')}\n  (macOS: brew install postgresql@15 pgbouncer redis)`
  if (!(IS_ROOT && existsSync('/etc/debian_version') && which('apt-get') !== undefined)) die(`missing ${missing.join(' ')}. Install them with:\n    ${install}`)
  log(`missing ${missing.join(' ')}; installing with apt-get`)
  run('apt-get', ['update'], { progress: true })
  // --no-upgrade: installed packages (the system PostgreSQL/Redis) must not be upgraded and restarted as a side effect.
  run('apt-get', ['install', '-y', '--no-upgrade', ...PACKAGES], { progress: true, env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } })
  if (missingBins(l).length > 0) die(`still missing after apt-get install: ${missingBins(l).join(' ')}`)
  return resolveBins(l)
}

/** psql straight to a server, never reading the caller's ~/.psqlrc; the caller's PG* settings are cleared in index.ts. */
const psql = ({ bins }: Ctx, port: number, db: string, user: string, args: string[]): Run =>
  run(bins.psql, ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', '127.0.0.1', '-p', String(port), '-U', user, '-d', db, ...args],
    { env: { ...process.env, PGCONNECT_TIMEOUT: '3' } })
const query = (ctx: Ctx, port: number, db: string, user: string, sql: string) => {
  const r = psql(ctx, port, db, user, ['-tAc', sql])
  return r.ok ? r.out.trim() : undefined
}
function writeOwned (file: string, text: string) {
  mkdirSync(dirname(file), { recursive: true })
  writeFileSync(file, text)
  if (IS_ROOT) run('chown', [`${SVC_USER}:`, dirname(file), file])
}

function pgStart ({ l, bins }: Ctx, name: string, data: string, port: number, settings: string, args: string[] = []): Run {
  writeOwned(join(data, 'conf.d/ledger-stack.conf'), `# Generated by scripts/stack on every start; edits are overwritten.
listen_addresses = '127.0.0.1'
port = ${port}
unix_socket_directories = '${l.dir.replaceAll("'", "''")}/run'
max_connections = 100
shared_preload_libraries = 'pg_stat_statements'
${settings}`)
  return runAs(l.dir, bins.pg_ctl, ['-D', data, ...args, '-l', logFile(l, name), '-w', '-t', String(READY_TIMEOUT), 'start'], { progress: true })
}

function initPostgres ({ l, bins }: Ctx) {
  if (existsSync(join(l.pgData, 'PG_VERSION'))) return
  if (existsSync(l.pgData)) die(`${l.pgData} exists but holds no cluster (interrupted initdb?); move it away and rerun`)
  const initLog = logFile(l, 'initdb')
  log(`initialising PostgreSQL cluster in ${l.pgData}`)
  let output = ''
  // C.UTF-8 is missing on older macOS/glibc; plain C still stores UTF8.
  for (const locale of ['C.UTF-8', 'C']) {
    const r = runAs(l.dir, bins.initdb, ['-D', l.pgData, '-U', SUPER_USER, '--auth=trust', '-E', 'UTF8', `--locale=${locale}`])
    writeFileSync(initLog, output += r.out + r.err)
    if (r.ok) return
    if (locale !== 'C') { log('initdb with --locale=C.UTF-8 failed, retrying with --locale=C'); rmSync(l.pgData, { recursive: true, force: true }) }
  }
  die(`initdb failed (full log: ${initLog})`, initLog)
}

// A SIGKILLed postgres's pid can linger as a zombie (slow PID 1 in containers) or, after a reboot, belong to an
// unrelated process: postgres refuses to start while it answers kill -0. A zombie may yet be reaped: wait up to 10 s.
async function clearStalePostmasterPid ({ l }: Ctx) {
  const file = pidFile(l, 'postgres')
  const old = readPid(file)
  const exists = () => { try { return old !== undefined && process.kill(old, 0) } catch { return false } }
  await waitFor(10, () => !exists() || procComm(old ?? 0) !== undefined)
  if (!exists()) return
  log(`removing stale ${file} (pid ${old} is not our postgres)`)
  rmSync(file, { force: true })
}

function ensureDatabases (ctx: Ctx) {
  const port = ctx.l.ports.STACK_PG_PORT
  const asSuper = (sql: string) => query(ctx, port, 'postgres', SUPER_USER, sql)
  // A cluster made before the roles were split has `ledger` as its bootstrap superuser, which cannot be demoted.
  const bootstrap = asSuper('select rolname from pg_roles where oid = 10')
  const anew = `it predates the database roles of sql/bootstrap.sql. Make the stack anew: npm run stack -- down && rm -rf ${ctx.l.dir}`
  if (bootstrap !== SUPER_USER) die(`the PostgreSQL cluster in ${ctx.l.pgData} was initialised with '${bootstrap || 'another role'}' as its superuser, not '${SUPER_USER}'; ${anew}`)
  for (const db of ['ledger', 'ledger_test']) {
    if (asSuper(`select 1 from pg_database where datname = '${db}'`) !== '1') {
      log(`creating database ${db}`)
      const r = psql(ctx, port, 'postgres', SUPER_USER, ['-c', `create database "${db}"`])
      if (!r.ok) die(`could not create database ${db}: ${r.err.trim()}`)
    }
    // Roles, ownership, privileges, extensions (idempotent). Trust on loopback: the logins need no password here.
    const r = psql(ctx, port, db, SUPER_USER, ['-f', join(PROJECT, 'sql/bootstrap.sql')])
    if (!r.ok) die(`sql/bootstrap.sql failed in ${db}: ${r.err.trim()}`)
  }
}

const PGBOUNCER_SOURCE = join(PROJECT, 'deploy/pgbouncer/pgbouncer.ini')
const SHARED_BEGIN = ';; >>> shared pooling settings'
const SHARED_END = ';; <<< shared pooling settings'
/** The local pgbouncer.ini: the source's shared block verbatim, plus only what is local. */
export function pgbouncerConf (l: Layout): string {
  if (!existsSync(PGBOUNCER_SOURCE)) die(`${PGBOUNCER_SOURCE} is missing; it holds PgBouncer's pooling settings`)
  const text = readFileSync(PGBOUNCER_SOURCE, 'utf8')
  const count = (marker: string) => text.split('\n').filter((line) => line.startsWith(marker)).length
  const shared = new RegExp(`^${SHARED_BEGIN}.*\n([^]*?)^${SHARED_END}`, 'm').exec(text)?.[1] ?? ''
  const wellFormed = count(SHARED_BEGIN) === 1 && count(SHARED_END) === 1 && !/^[ \t]*\[/m.test(shared) && /^[ \t]*[a-z_]+[ \t]*=/m.test(shared)
  if (!wellFormed) die(`${PGBOUNCER_SOURCE} needs exactly one block of settings between a '${SHARED_BEGIN}' line and a '${SHARED_END}' line`)
  return `;; Generated by scripts/stack on every start of pgbouncer; edits are overwritten. The pooling settings are
;; copied from deploy/pgbouncer/pgbouncer.ini; only the local ones before them are the stack's own.
[databases]
* = host=127.0.0.1 port=${l.ports.STACK_PG_PORT}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = ${l.ports.STACK_PGBOUNCER_PORT}
unix_socket_dir = ${l.dir}/run
;; Loopback only. auth_type=trust still requires the user to be listed in auth_file.
auth_type = trust
auth_file = ${l.dir}/pgbouncer/userlist.txt
;; The admin console, for the stack's readiness check and \`npm run diagnose\`.
admin_users = ${DB_USER}
stats_users = ${DB_USER}
pidfile = ${pidFile(l, 'pgbouncer')}
logfile = ${logFile(l, 'pgbouncer')}

${SHARED_BEGIN} (from deploy/pgbouncer/pgbouncer.ini)
${shared.replace(/\n+$/, '')}
${SHARED_END}
`
}

function writePgbouncerConf (l: Layout) {
  writeOwned(join(l.dir, 'pgbouncer/userlist.txt'), `"${DB_USER}" ""\n"${API_USER}" ""\n`)
  writeOwned(join(l.dir, 'pgbouncer/pgbouncer.ini'), pgbouncerConf(l))
}
// max_client_conn=2000 needs a descriptor per client (4096 are asked for). The limit is raised inside the service
// user's session: runuser's pam_limits resets the soft limit (to 1024 on Debian), so raising it here would be lost.
const NOFILE_WRAPPER = `want=$1; shift
soft=$(ulimit -Sn); hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$want" ]; then want=$hard; fi
if [ "$soft" != unlimited ] && [ "$soft" -lt "$want" ]; then ulimit -Sn "$want"; fi
exec "$@"`

/** No persistence: Redis is a cache/queue here, and tests expect a clean instance after a restart. */
const launchRedis = ({ l, bins }: Ctx, name: string, port: number, dir: string, extra: string[]): Run =>
  runAs(l.dir, bins['redis-server'], ['--daemonize', 'yes', '--bind', '127.0.0.1', '--port', String(port), '--save', '', '--appendonly', 'no',
    '--dir', dir, '--pidfile', pidFile(l, name), '--logfile', logFile(l, name), '--unixsocket', '', ...extra], { progress: true })
const redisCli = ({ bins }: Ctx, port: number, ...args: string[]) => run(bins['redis-cli'], ['-h', '127.0.0.1', '-p', String(port), ...args]).out
const ping = (ctx: Ctx, port: number) => redisCli(ctx, port, 'ping').trim() === 'PONG'

export interface Service {
  portVar: PortVar
  port?: number // default: the port of portVar
  launch: (ctx: Ctx) => Run | Promise<Run> // only when not running and its port is free
  ready: (ctx: Ctx) => boolean // accepts connections (PgBouncer: and reaches PostgreSQL when that runs)
  prepare?: (ctx: Ctx) => void // after `ready`, on every start
  retry?: boolean // launched once more when not ready in time
}

export const SERVICES: Record<'postgres' | 'pgbouncer' | 'redis' | 'replica', Service> = {
  postgres: {
    portVar: 'STACK_PG_PORT',
    async launch (ctx) {
      const { l, bins } = ctx
      await clearStalePostmasterPid(ctx)
      initPostgres(ctx)
      // Settings in an include file, not on pg_ctl's command line, so a plain `pg_ctl restart` keeps them.
      const conf = join(l.pgData, 'postgresql.conf')
      if (!/^include_dir = 'conf.d'/m.test(readFileSync(conf, 'utf8'))) writeFileSync(conf, "\n# Added by scripts/stack; its settings live in conf.d/.\ninclude_dir = 'conf.d'\n", { flag: 'a' })
      // It is a ledger: even locally, never trade durability for speed, so fault tests see production's guarantees.
      return pgStart(ctx, 'postgres', l.pgData, l.ports.STACK_PG_PORT, 'shared_buffers = 256MB\nfsync = on\nsynchronous_commit = on\nfull_page_writes = on\n', ['-p', bins.postgres])
    },
    ready: ({ l, bins }) => run(bins.pg_isready, ['-q', '-h', '127.0.0.1', '-p', String(l.ports.STACK_PG_PORT), '-U', SUPER_USER, '-d', 'postgres']).ok,
    prepare: ensureDatabases
  },
  pgbouncer: {
    portVar: 'STACK_PGBOUNCER_PORT',
    launch ({ l, bins }) {
      writePgbouncerConf(l)
      return runAs(l.dir, '/bin/sh', ['-c', NOFILE_WRAPPER, 'sh', '4096', bins.pgbouncer, '-d', join(l.dir, 'pgbouncer/pgbouncer.ini')], { progress: true })
    },
    // The admin console answers while PostgreSQL is down (fault tests stop it); with it up, the whole path must work.
    ready: (ctx) => query(ctx, ctx.l.ports.STACK_PGBOUNCER_PORT, 'pgbouncer', DB_USER, 'show version') !== undefined &&
      (pidOf(ctx.l, 'postgres') === undefined || query(ctx, ctx.l.ports.STACK_PGBOUNCER_PORT, DB_USER, DB_USER, 'select 1') === '1'),
    // A stack from before the API role: its auth file learns the user (PgBouncer re-reads it on SIGHUP).
    prepare ({ l }) {
      if (readFileSync(join(l.dir, 'pgbouncer/userlist.txt'), 'utf8').includes(`"${API_USER}"`)) return
      writePgbouncerConf(l)
      process.kill(pidOf(l, 'pgbouncer') ?? 0, 'SIGHUP')
    }
  },
  redis: {
    portVar: 'STACK_REDIS_PORT',
    launch: (ctx) => launchRedis(ctx, 'redis', ctx.l.ports.STACK_REDIS_PORT, join(ctx.l.dir, 'redis'), ['--maxclients', '10000']),
    ready: (ctx) => ping(ctx, ctx.l.ports.STACK_REDIS_PORT)
  },
  // A streaming hot standby cloned from the running primary (pg_basebackup -R); disposable: stopping deletes it.
  replica: {
    portVar: 'STACK_PG_REPLICA_PORT',
    launch (ctx) {
      const { l, bins } = ctx
      if (!existsSync(join(l.replicaData, 'standby.signal'))) {
        if (bins.pg_basebackup === undefined) die('pg_basebackup not found (it ships with the PostgreSQL server package)')
        rmSync(l.replicaData, { recursive: true, force: true })
        log(`cloning the primary (127.0.0.1:${l.ports.STACK_PG_PORT}) into ${l.replicaData} with pg_basebackup`)
        const r = runAs(l.dir, bins.pg_basebackup, ['-h', '127.0.0.1', '-p', String(l.ports.STACK_PG_PORT), '-U', SUPER_USER, '-D', l.replicaData, '--write-recovery-conf', '--wal-method=stream', '--checkpoint=fast'])
        writeFileSync(logFile(l, 'replica-basebackup'), r.out + r.err)
        if (!r.ok) {
          rmSync(l.replicaData, { recursive: true, force: true })
          die('pg_basebackup failed', logFile(l, 'replica-basebackup'))
        }
      }
      // pg_hba and postgresql.conf come from the primary, whose defaults (wal_level = replica) let it stream as is.
      return pgStart(ctx, 'replica', l.replicaData, l.ports.STACK_PG_REPLICA_PORT, 'shared_buffers = 128MB\nhot_standby = on\n' +
        '# Tell the primary which rows replica queries still need, so vacuum does not cancel them (SQLSTATE 40001).\nhot_standby_feedback = on\n')
    },
    ready: (ctx) => query(ctx, ctx.l.ports.STACK_PG_REPLICA_PORT, 'postgres', DB_USER, 'select pg_is_in_recovery()') === 't'
  }
}

// The cluster bus needs a port of its own; Redis's default (port + 10000) does not exist above 55535, and port - 10000
// would lie in Linux's ephemeral range, where an outgoing connection's TIME_WAIT can keep it from binding for a minute.
const busPort = (port: number) => port + 10000 <= 65535 ? port + 10000 : port - 40000
export function validateCluster (l: Layout): Layout {
  if (!/^[01]$/.test(l.clusterReplicas)) die('STACK_REDIS_CLUSTER_REPLICAS must be 0 or 1')
  const first = l.ports.STACK_REDIS_CLUSTER_PORT
  if (first + clusterSize(l) - 1 > 65535 || first <= 10000) die(`STACK_REDIS_CLUSTER_PORT=${first} must leave room for ${clusterSize(l)} nodes and lie above 10000`)
  const others = [l.ports.STACK_PG_PORT, l.ports.STACK_PGBOUNCER_PORT, l.ports.STACK_REDIS_PORT, l.ports.STACK_PG_REPLICA_PORT]
  if (clusterPorts(l).some((p) => others.includes(p))) die(`the cluster's ports (${first} and up) overlap the stack's other ports`)
  return l
}

export const clusterNode = (port: number): Service => ({
  portVar: 'STACK_REDIS_CLUSTER_PORT',
  port,
  async launch (ctx) {
    const dir = join(ctx.l.clusterDir, String(port))
    if (await portInUse(busPort(port))) die(`port ${busPort(port)} on 127.0.0.1 (cluster bus of :${port}) is already in use; set STACK_REDIS_CLUSTER_PORT`)
    mkdirSync(dir, { recursive: true })
    if (IS_ROOT) run('chown', [`${SVC_USER}:`, ctx.l.clusterDir, dir])
    return launchRedis(ctx, `cluster-${port}`, port, dir,
      ['--cluster-enabled', 'yes', '--cluster-port', String(busPort(port)), '--cluster-config-file', join(dir, 'nodes.conf'), '--cluster-node-timeout', '5000'])
  },
  ready: (ctx) => ping(ctx, port),
  // The default ports sit in Linux's ephemeral range: a passing outgoing connection may hold one for a moment.
  retry: true
})

export async function formCluster (ctx: Ctx) {
  const { l } = ctx
  const ok = () => clusterPorts(l).every((p) => /^cluster_state:ok/m.test(redisCli(ctx, p, 'cluster', 'info')))
  if (ok()) return log('redis cluster already formed')
  // Formed earlier and still settling (or a node restarted): wait, never form it twice.
  if (/^cluster_slots_assigned:0\r?$/m.test(redisCli(ctx, l.ports.STACK_REDIS_CLUSTER_PORT, 'cluster', 'info'))) {
    log(`forming a Redis Cluster of ${clusterSize(l)} nodes (replicas per master: ${l.clusterReplicas})`)
    const r = run(ctx.bins['redis-cli'], ['--cluster', 'create', ...clusterPorts(l).map((p) => `127.0.0.1:${p}`), '--cluster-replicas', l.clusterReplicas, '--cluster-yes'])
    writeFileSync(join(l.clusterDir, 'create.log'), r.out + r.err)
    if (!r.ok) die('redis-cli --cluster create failed', join(l.clusterDir, 'create.log'))
  }
  if (!(await waitFor(READY_TIMEOUT, ok))) die(`the Redis Cluster did not reach cluster_state:ok within ${READY_TIMEOUT}s (logs: ${l.clusterDir}/*/redis.log)`)
}
