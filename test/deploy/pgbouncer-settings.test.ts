// deploy/pgbouncer/pgbouncer.ini is the one source of PgBouncer's pooling settings (see its header). compose.yaml
// mounts it as is; this file holds everything else to it: the local stack's generated ini (scripts/stack/),
// the Kubernetes ConfigMap's copy, and config.ts's pool arithmetic.
import { readFileSync } from 'node:fs'
import t from 'tap'
import { PGBOUNCER_SERVER_CONNECTIONS } from '../../config.ts'
import { runStack } from '../../scripts/local-stack.ts'

const BEGIN = ';; >>> shared pooling settings'
const END = ';; <<< shared pooling settings'
const read = (path: string) => readFileSync(new URL(`../../${path}`, import.meta.url), 'utf8')

interface Ini {
  /** Every setting of the [pgbouncer] section. */
  pgbouncer: Map<string, string>
  /** The settings between the markers. */
  shared: Map<string, string>
  /** The lines between the markers, as written. */
  sharedText: string
}

/** A strict reading of a pgbouncer.ini: one block of shared settings, inside [pgbouncer], no key set twice. */
function parseIni (text: string, source: string): Ini {
  const pgbouncer = new Map<string, string>()
  const shared = new Map<string, string>()
  const sharedLines: string[] = []
  let section = ''
  let state: 'before' | 'inside' | 'after' = 'before'
  for (const raw of text.split('\n')) {
    const line = raw.trim()
    if (line.startsWith(BEGIN)) {
      if (state !== 'before' || section !== 'pgbouncer') throw new Error(`${source}: misplaced or repeated "${BEGIN}"`)
      state = 'inside'
      continue
    }
    if (line.startsWith(END)) {
      if (state !== 'inside') throw new Error(`${source}: "${END}" without its begin line`)
      state = 'after'
      continue
    }
    if (state === 'inside') sharedLines.push(line)
    if (line === '' || line.startsWith(';') || line.startsWith('#')) continue
    const header = /^\[([a-z_]+)\]$/.exec(line)
    if (header?.[1] !== undefined) {
      if (state === 'inside') throw new Error(`${source}: a section header inside the shared block`)
      section = header[1]
      continue
    }
    const setting = /^([a-z_]+)\s*=\s*(.*)$/.exec(line)
    if (setting?.[1] === undefined || setting[2] === undefined) {
      if (section === 'databases') continue // `* = host=...` and friends
      throw new Error(`${source}: cannot read "${line}"`)
    }
    if (section !== 'pgbouncer') continue
    const [, key, value] = setting
    if (pgbouncer.has(key)) throw new Error(`${source}: ${key} is set twice`)
    pgbouncer.set(key, value)
    if (state === 'inside') shared.set(key, value)
  }
  if (state !== 'after') throw new Error(`${source}: no complete block of shared pooling settings`)
  return { pgbouncer, shared, sharedText: sharedLines.join('\n') }
}

/** The literal block scalar under `key: |` in a YAML file, without its indentation. */
function yamlBlock (text: string, key: string): string {
  const lines = text.split('\n')
  const start = lines.findIndex((line) => new RegExp(`^(\\s*)${key.replace('.', '\\.')}:\\s*\\|\\s*$`).test(line))
  if (start < 0) throw new Error(`no "${key}: |" block`)
  const keyIndent = (lines[start] ?? '').search(/\S/)
  const body: string[] = []
  for (const line of lines.slice(start + 1)) {
    if (line.trim() !== '' && line.search(/\S/) <= keyIndent) break
    body.push(line)
  }
  const indent = Math.min(...body.filter((line) => line.trim() !== '').map((line) => line.search(/\S/)))
  return body.map((line) => line.slice(indent)).join('\n')
}

const source = parseIni(read('deploy/pgbouncer/pgbouncer.ini'), 'deploy/pgbouncer/pgbouncer.ini')
const sorted = (settings: Map<string, string>) => Object.fromEntries([...settings].sort(([a], [b]) => a.localeCompare(b)))

t.test('the source holds the pooling settings', async (t) => {
  for (const key of [
    'pool_mode', 'default_pool_size', 'max_db_connections', 'max_client_conn', 'query_wait_timeout',
    'server_connect_timeout', 'server_login_retry', 'server_reset_query', 'ignore_startup_parameters'
  ]) {
    t.ok(source.shared.has(key), `${key} is a shared setting`)
  }
  t.equal(source.shared.get('pool_mode'), 'transaction', 'transaction pooling')
  t.match(read('compose.yaml'), /file: \.\/deploy\/pgbouncer\/pgbouncer\.ini/, 'compose.yaml mounts the source itself')
})

t.test('the local stack renders the shared block verbatim and adds only local settings', async (t) => {
  const local = parseIni(runStack(['pgbouncer-conf'], { quiet: true }), 'npm run stack -- pgbouncer-conf')
  t.same(sorted(local.shared), sorted(source.shared), 'same shared settings')
  t.equal(local.sharedText, source.sharedText, 'copied verbatim, comments included')
  const localOnly = ['listen_addr', 'listen_port', 'unix_socket_dir', 'auth_type', 'auth_file', 'admin_users', 'stats_users', 'pidfile', 'logfile']
  t.same([...local.pgbouncer.keys()].filter((key) => !local.shared.has(key) && !localOnly.includes(key)), [],
    'nothing but listen address/port, trust auth, admin users and paths besides the shared block')
  t.equal(local.pgbouncer.get('listen_addr'), '127.0.0.1', 'loopback only')
  t.equal(local.pgbouncer.get('auth_type'), 'trust', 'trust on loopback (production keeps scram-sha-256)')
})

t.test('the Kubernetes ConfigMap carries the same shared settings', async (t) => {
  const k8s = parseIni(yamlBlock(read('deploy/k8s/pgbouncer-configmap.yaml'), 'pgbouncer.ini'), 'deploy/k8s/pgbouncer-configmap.yaml')
  t.same(sorted(k8s.shared), sorted(source.shared), 'every shared setting, with the same value')
  t.same([...k8s.pgbouncer.keys()].filter((key) => !source.pgbouncer.has(key)), [], 'no setting the source does not know')
  t.equal(k8s.pgbouncer.get('auth_type'), 'scram-sha-256', 'real authentication in production')
})

t.test("config.ts's pool arithmetic uses PgBouncer's server-side cap", async (t) => {
  t.equal(PGBOUNCER_SERVER_CONNECTIONS, Number(source.shared.get('max_db_connections')),
    'PGBOUNCER_SERVER_CONNECTIONS = max_db_connections')
})
