// Where a stack lives and which ports it uses: each from its STACK_* variable, else the `ports` file every start writes
// (so every later command finds the running stack), else the defaults when free, else a block derived from the folder's
// path (a second clone gets its own ports unasked). Defaults and blocks lie above Linux's ephemeral range (32768-60999),
// so no outgoing connection holds one (the cluster's 57001 is older: its start retries once).
import { createHash } from 'node:crypto'
import { existsSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { die, IS_ROOT, listener, log, portInUse, procComm, readPid, userCanEnter } from './proc.ts'

export const PROJECT = fileURLToPath(new URL('../..', import.meta.url)).replace(/\/$/, '')
export const PORT_VARS = ['STACK_PG_PORT', 'STACK_PGBOUNCER_PORT', 'STACK_REDIS_PORT', 'STACK_PG_REPLICA_PORT', 'STACK_REDIS_CLUSTER_PORT'] as const
export type PortVar = typeof PORT_VARS[number]
export const MAIN_PORT_VARS: PortVar[] = ['STACK_PG_PORT', 'STACK_PGBOUNCER_PORT', 'STACK_REDIS_PORT']
// Default, place in a derived block (postgres, replica, pgbouncer, redis, then up to 6 cluster nodes), owner.
const PORT_INFO: Record<PortVar, [number, number, string]> = {
  STACK_PG_PORT: [61432, 0, 'postgres'],
  STACK_PG_REPLICA_PORT: [61433, 1, 'replica'],
  STACK_PGBOUNCER_PORT: [62432, 2, 'pgbouncer'],
  STACK_REDIS_PORT: [61379, 3, 'redis'],
  STACK_REDIS_CLUSTER_PORT: [57001, 4, 'cluster']
}
// A block: BLOCK_SIZE consecutive ports from BLOCK_FIRST + BLOCK_SIZE * n, n < BLOCK_COUNT (up to 65529).
const BLOCK_FIRST = 61000; const BLOCK_SIZE = 10; const BLOCK_COUNT = 453; const BLOCK_TRIES = 64

const explicit = (v: PortVar) => (process.env[v] ?? '') !== ''
const sha = (text: string) => createHash('sha256').update(text).digest('hex')

export type Layout = Awaited<ReturnType<typeof resolveLayout>>
/** Where the stack lives and which ports it uses, writing nothing (so `env` and `status` have no side effects). */
export async function resolveLayout () {
  let dir = resolve(process.cwd(), process.env.LEDGER_STACK_DIR ?? join(PROJECT, '.stack'))
  // Set when <project>/.stack has to be a symlink to `dir` (as root, when the service user cannot reach the project).
  let link: string | undefined
  if ((process.env.LEDGER_STACK_DIR ?? '') === '' && IS_ROOT && !userCanEnter(PROJECT)) {
    // e.g. a clone under `mktemp -d` (mode 700): keyed by the project's path so clones never share a cluster.
    dir = `/var/tmp/ledger-api-stack-${sha(PROJECT).slice(0, 12)}`
    link = join(PROJECT, '.stack')
  }
  const [pgData, replicaData, clusterDir, portsFile] = ['pg/data', 'pg/replica', 'redis-cluster', 'ports'].map((p) => join(dir, p)) as [string, string, string, string]
  const chosen: { how?: 'default' | 'derived', vars: PortVar[] } = { vars: [] }
  const clusterReplicas = process.env.STACK_REDIS_CLUSTER_REPLICAS ?? '1'
  const layout = { dir, link, pgData, replicaData, clusterDir, portsFile, ports: {} as Record<PortVar, number>, clusterReplicas, chosen }
  const saved = existsSync(layout.portsFile) ? readFileSync(layout.portsFile, 'utf8') : ''
  const missing: PortVar[] = []
  for (const v of PORT_VARS) {
    const value = explicit(v) ? process.env[v] ?? '' : [...saved.matchAll(new RegExp(`^${v}=(\\d+)$`, 'gm'))].pop()?.[1]
    if (value === undefined) missing.push(v)
    else if (!/^\d{1,5}$/.test(value) || Number(value) < 1 || Number(value) > 65535) die(`${v}=${value} is not a valid TCP port`)
    else layout.ports[v] = Number(value)
  }
  if (missing.length > 0) await choosePorts(layout, missing)
  // Both PostgreSQLs and PgBouncer create run/.s.PGSQL.<port>: equal ports would collide (chosen ones never do).
  const own = [...MAIN_PORT_VARS, 'STACK_PG_REPLICA_PORT'] as const
  if (new Set(own.map((v) => layout.ports[v])).size !== own.length) die('STACK_PG_PORT, STACK_PGBOUNCER_PORT, STACK_REDIS_PORT and STACK_PG_REPLICA_PORT must all differ')
  return layout
}

export const clusterSize = (l: Layout) => l.clusterReplicas === '0' ? 3 : 6
const portsOf = (l: Layout, v: PortVar, base: number | undefined) =>
  base === undefined ? [] : Array.from({ length: v === 'STACK_REDIS_CLUSTER_PORT' ? clusterSize(l) : 1 }, (_, i) => base + i)
export const clusterPorts = (l: Layout) => portsOf(l, 'STACK_REDIS_CLUSTER_PORT', l.ports.STACK_REDIS_CLUSTER_PORT)

export const isPostgres = (service: string) => service === 'postgres' || service === 'replica'
// A cluster node's files live in its own folder, cluster-<port> in the names of its pid and log files.
const daemonFile = (l: Layout, name: string, kind: 'pid' | 'log') =>
  name.startsWith('cluster-') ? join(l.clusterDir, name.slice(8), `redis.${kind}`) : join(l.dir, kind === 'pid' ? 'run' : 'log', `${name}.${kind}`)
export const pidFile = (l: Layout, name: string) =>
  isPostgres(name) ? join(name === 'postgres' ? l.pgData : l.replicaData, 'postmaster.pid') : daemonFile(l, name, 'pid')
export const logFile = (l: Layout, name: string) => daemonFile(l, name, 'log')
const procName = (service: string) => service === 'replica' ? 'postgres' : /^(redis|cluster-)/.test(service) ? 'redis-server' : service
export function pidOf (l: Layout, service: string): number | undefined {
  const pid = readPid(pidFile(l, service))
  return pid !== undefined && procComm(pid)?.includes(procName(service)) === true ? pid : undefined
}
export const pidFilePort = (l: Layout, service: string) => Number(readFileSync(pidFile(l, service), 'utf8').split('\n')[3])

/** The cluster's node folders (not STACK_REDIS_CLUSTER_PORT), so a `down` also finds one started on other ports. */
export const clusterNodePorts = (l: Layout) => existsSync(l.clusterDir) ? readdirSync(l.clusterDir).filter((name) => /^\d+$/.test(name)).map(Number) : []

export const runsAnything = (l: Layout) =>
  ['postgres', 'pgbouncer', 'redis', 'replica', ...clusterNodePorts(l).map((p) => `cluster-${p}`)].some((s) => pidOf(l, s) !== undefined)

/** True when `port` of `v` is free or held by this stack's own process for it, not by a stranger. */
async function available (l: Layout, v: PortVar, port: number): Promise<boolean> {
  if (!(await portInUse(port))) return true
  const service = v === 'STACK_REDIS_CLUSTER_PORT' ? `cluster-${port}` : PORT_INFO[v][2]
  const pid = pidOf(l, service)
  if (pid === undefined) return false
  const holders = listener(port)
  if (holders !== undefined && holders.pids.length > 0) return holders.pids.includes(pid)
  // Cannot tell: a PostgreSQL's pid file names its port; another live process of ours most likely holds its own.
  return !isPostgres(service) || pidFilePort(l, service) === port
}

/** The first of `vars` with a port (at `baseOf(v)`) that a stranger holds or, with `others`, another variable has. */
async function blocked (l: Layout, vars: PortVar[], baseOf = (v: PortVar) => l.ports[v], others = false) {
  for (const v of vars) {
    for (const port of portsOf(l, v, baseOf(v))) {
      if (others && PORT_VARS.some((o) => o !== v && portsOf(l, o, l.ports[o]).includes(port))) return { v, port }
      if (!(await available(l, v, port))) return { v, port }
    }
  }
}

/** Fills `vars` with the defaults when they are usable, else with the first usable block the folder hashes to. */
async function choosePorts (l: Layout, vars: PortVar[]) {
  l.chosen.vars.push(...vars)
  const start = parseInt(sha(l.dir).slice(0, 8), 16) % BLOCK_COUNT
  const blocks = Array.from({ length: BLOCK_TRIES }, (_, i) => BLOCK_FIRST + (start + i) % BLOCK_COUNT * BLOCK_SIZE)
  // The defaults (-1 here), then the blocks that hold no default.
  for (const base of [-1, ...blocks.filter((b) => !Object.values(PORT_INFO).some(([d]) => d >= b && d < b + BLOCK_SIZE))]) {
    const portOf = (v: PortVar) => base < 0 ? PORT_INFO[v][0] : base + PORT_INFO[v][1]
    if (await blocked(l, vars, portOf, true) !== undefined) continue
    for (const v of vars) l.ports[v] = portOf(v)
    l.chosen.how = base < 0 ? l.chosen.how ?? 'default' : 'derived'
    return
  }
  die(`found no free ports in ${BLOCK_TRIES} blocks above ${BLOCK_FIRST}; set STACK_PG_PORT, STACK_PGBOUNCER_PORT and STACK_REDIS_PORT`)
}

const describe = (l: Layout, vars: PortVar[]) =>
  vars.map((v) => `${PORT_INFO[v][2]} ${l.ports[v]}${v === 'STACK_REDIS_CLUSTER_PORT' ? `-${l.ports[v] + clusterSize(l) - 1}` : ''}`).join(', ')

/** Under the lock, before starting `vars`' services: a saved port a stranger now holds is chosen again (the whole stack
 * when none of it runs, else an idle extra alone); an explicit or running one cannot move, so the start ends. Saves them. */
export async function settlePorts (l: Layout, vars: PortVar[]) {
  const stale: PortVar[] = []
  for (const v of vars.filter((v) => !explicit(v))) if (await blocked(l, [v]) !== undefined) stale.push(v)
  const auto = runsAnything(l) ? stale.filter((v) => v === 'STACK_PG_REPLICA_PORT' || v === 'STACK_REDIS_CLUSTER_PORT') : PORT_VARS.filter((v) => !explicit(v))
  if (stale.length > 0 && auto.length > 0) {
    log(`saved port(s) of ${describe(l, stale)} now held by another process; choosing again`)
    for (const v of auto) delete (l.ports as Partial<Layout['ports']>)[v]
    await choosePorts(l, auto)
  }
  const taken = await blocked(l, vars)
  if (taken !== undefined) {
    const { v, port } = taken
    const who = listener(port)?.who ?? ''
    const hint = explicit(v) ? `set ${v} to a free port` : `stop this stack (npm run stack -- down) so that its next start chooses free ports, or set ${v} to a free port`
    die(`port ${port} on 127.0.0.1 (wanted by ${v === 'STACK_REDIS_CLUSTER_PORT' ? 'a cluster node' : PORT_INFO[v][2]}) is already in use by another process${who === '' ? '' : ` ${who}`}; ${hint}`)
  }
  const content = '# The ports this stack last started on: written by scripts/stack, read by all its commands. STACK_*_PORT\n' +
    '# variables override them; delete this file while the stack is down to have the next start choose again.\n' +
    PORT_VARS.map((v) => `${v}=${l.ports[v]}\n`).join('')
  // Readers (env, status) take no lock: they see the old file or the new one, never half of one.
  writeFileSync(`${l.portsFile}.tmp.${process.pid}`, content)
  renameSync(`${l.portsFile}.tmp.${process.pid}`, l.portsFile)
  const how = { default: `ports: ${describe(l, l.chosen.vars)} (the defaults)`, derived: `a default port is held by another process (another clone's stack?), so this stack uses ports derived from its folder: ${describe(l, l.chosen.vars)}` }
  if (l.chosen.how !== undefined) log(`${how[l.chosen.how]}; saved in ${l.portsFile}`)
}
