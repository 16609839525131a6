// PgBouncer's min_pool_size (deploy/pgbouncer/pgbouncer.ini's shared block) keeps the API's server connections
// through a quiet period: a PgBouncer of its own, on the local stack's rendered configuration with
// server_idle_timeout shortened to 1 s, holds its server connections while a client stays connected, and the same
// configuration without min_pool_size loses them all. The contrast is what shows the setting does the work.
import { spawn } from 'node:child_process'
import { chownSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import postgres from 'postgres'
import t, { type Test } from 'tap'
import { runStack, stackDir } from '../../scripts/local-stack.ts'
import { freePort } from '../free-port.ts'

const PGBOUNCER = '/usr/sbin/pgbouncer'

interface PoolRow { user: string, sv_active: string, sv_idle: string, sv_used: string, sv_tested: string, sv_login: string }

/** Server connections PgBouncer holds for `user`, in any state. */
async function serverConnections (port: number, user: string): Promise<number> {
  const admin = postgres(`postgres://ledger@127.0.0.1:${port}/pgbouncer`, { max: 1, prepare: false, fetch_types: false, onnotice: () => {} })
  try {
    const rows = await admin<PoolRow[]>`SHOW POOLS`.simple()
    return rows.filter((row) => row.user === user)
      .reduce((sum, row) => sum + Number(row.sv_active) + Number(row.sv_idle) + Number(row.sv_used) + Number(row.sv_tested) + Number(row.sv_login), 0)
  } finally {
    await admin.end({ timeout: 1 })
  }
}

/** Starts PgBouncer on the stack's rendered configuration with `edit` applied; as the stack's owner when we are root. */
async function startPgBouncer (t: Test, edit: (conf: string) => string): Promise<number> {
  const port = await freePort()
  const dir = mkdtempSync(join(tmpdir(), 'pgbouncer-idle-'))
  const owner = statSync(stackDir())
  const asOwner = process.getuid?.() === 0 ? { uid: owner.uid, gid: owner.gid } : {}
  if (process.getuid?.() === 0) chownSync(dir, owner.uid, owner.gid)
  const conf = edit(runStack(['pgbouncer-conf'], { quiet: true }))
    .replace(/^listen_port = .*$/m, `listen_port = ${port}`)
    .replace(/^unix_socket_dir = .*$/m, 'unix_socket_dir =')
    .replace(/^pidfile = .*$/m, `pidfile = ${join(dir, 'pgbouncer.pid')}`)
    .replace(/^logfile = .*$/m, `logfile = ${join(dir, 'pgbouncer.log')}`) +
    '\nserver_idle_timeout = 1\n'
  const ini = join(dir, 'pgbouncer.ini')
  writeFileSync(ini, conf, { mode: 0o644 })
  const child = spawn(PGBOUNCER, [ini], { ...asOwner, stdio: 'ignore' })
  t.teardown(() => {
    child.kill('SIGTERM')
    rmSync(dir, { recursive: true, force: true })
  })
  const deadline = Date.now() + 10_000
  for (;;) {
    try {
      await serverConnections(port, 'nobody')
      return port
    } catch (error) {
      if (Date.now() > deadline) throw error
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  }
}

/** A burst of 10 statements at once from a client pool that stays connected, then 3.5 s of quiet (PgBouncer's janitor runs each second). */
async function afterQuiet (port: number): Promise<{ afterBurst: number, afterQuiet: number }> {
  const url = new URL(process.env.DATABASE_URL ?? '')
  const user = decodeURIComponent(url.username)
  const sql = postgres(`postgres://${url.username}@127.0.0.1:${port}${url.pathname}`, { max: 10, prepare: false, fetch_types: false, idle_timeout: 0 })
  try {
    await Promise.all(Array.from({ length: 10 }, () => sql`select pg_sleep(0.5)`))
    const afterBurst = await serverConnections(port, user)
    await new Promise((resolve) => setTimeout(resolve, 3500))
    return { afterBurst, afterQuiet: await serverConnections(port, user) }
  } finally {
    await sql.end({ timeout: 1 })
  }
}

t.test('with min_pool_size, server connections outlive server_idle_timeout while a client is connected', async (t) => {
  const minPoolSize = Number(/^min_pool_size = (\d+)$/m.exec(runStack(['pgbouncer-conf'], { quiet: true }))?.[1])
  t.equal(minPoolSize, 10, 'the shared block keeps as many as default_pool_size')
  const port = await startPgBouncer(t, (conf) => conf)
  const { afterBurst, afterQuiet: kept } = await afterQuiet(port)
  t.ok(afterBurst >= 2, `the burst opened server connections (${afterBurst})`)
  t.equal(kept, 10, 'min_pool_size of them open after three idle timeouts')
})

t.test('without min_pool_size the same quiet period closes them all', async (t) => {
  const port = await startPgBouncer(t, (conf) => conf.replace(/^min_pool_size = .*$/m, ''))
  const { afterBurst, afterQuiet: kept } = await afterQuiet(port)
  t.ok(afterBurst >= 2, `the burst opened server connections (${afterBurst})`)
  t.equal(kept, 0, 'none left: the next burst would wait for new backends')
})
