// scripts/local-stack.ts (the one programmatic way into scripts/stack/) and the stack's choice of ports: a second
// clone gets ports of its own when the defaults are taken, the choice is saved in the stack folder, and a port that
// is set explicitly but taken ends `npm start` with the stack's one message instead of a Node stack trace.
import { spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { hasLocalStack } from '../helper.ts'
import { parseEnvLines, pidFile, readPid, runStack, StackError, type StackService } from '../../scripts/local-stack.ts'

const DEFAULTS = { pg: 61432, pgbouncer: 62432, redis: 61379 }
const PORT_VARS = ['STACK_PG_PORT', 'STACK_PGBOUNCER_PORT', 'STACK_REDIS_PORT', 'STACK_PG_REPLICA_PORT', 'STACK_REDIS_CLUSTER_PORT']

/** Our environment without STACK_*_PORT (so the stack chooses), pointed at another stack folder. */
function envFor (stackDir: string, ports: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, LEDGER_STACK_DIR: stackDir, ...ports }
  for (const name of PORT_VARS) if (ports[name] === undefined) delete env[name]
  return env
}

function ports (stackDir: string, extra: Record<string, string> = {}) {
  const env = parseEnvLines(runStack(['env'], { quiet: true, env: envFor(stackDir, extra) }))
  return {
    pg: Number(new URL(env.DATABASE_DIRECT_URL ?? '').port),
    pgbouncer: Number(new URL(env.DATABASE_URL ?? '').port),
    redis: Number(new URL(env.REDIS_URL ?? '').port)
  }
}

function listen (port: number): Promise<Server | undefined> {
  return new Promise((resolve) => {
    const server = createServer()
    server.once('error', () => resolve(undefined))
    server.listen(port, '127.0.0.1', () => resolve(server))
  })
}

t.test('parseEnvLines reads KEY=value lines and strips quotes', async (t) => {
  t.same(parseEnvLines("A=1\n  B='x y'\nnot a line\nC=\"z\"\n"), { A: '1', B: 'x y', C: 'z' })
})

t.test('with a default port held by another process, ports are derived from the stack folder', async (t) => {
  // Whoever holds 61432 (another clone's stack, or this test), it is not the stack of these folders.
  const holder = await listen(DEFAULTS.pg)
  t.teardown(() => { holder?.close() })
  const a = ports('/nonexistent/ledger-a/.stack')
  const b = ports('/nonexistent/ledger-b/.stack')
  t.not(a.pg, DEFAULTS.pg, 'not the taken default')
  t.ok(a.pg >= 61000 && a.redis <= 65535, `above the ephemeral range (${JSON.stringify(a)})`)
  t.same([a.pgbouncer - a.pg, a.redis - a.pg], [2, 3], 'one block of ports')
  t.same(ports('/nonexistent/ledger-a/.stack'), a, 'the same folder gets the same ports')
  t.not(b.pg, a.pg, 'another folder gets other ports')
  t.equal(ports('/nonexistent/ledger-a/.stack', { STACK_PG_PORT: '61999' }).pg, 61999, 'an explicit port wins')
})

t.test("the stack folder's ports file is what every later command uses", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ledger-stack-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  writeFileSync(join(dir, 'ports'), 'STACK_PG_PORT=64001\nSTACK_PGBOUNCER_PORT=64003\nSTACK_REDIS_PORT=64004\n')
  t.same(ports(dir), { pg: 64001, pgbouncer: 64003, redis: 64004 })
  t.equal(ports(dir, { STACK_REDIS_PORT: '64100' }).redis, 64100, 'an explicit port still wins')
  const status = runStack(['status'], { quiet: true, env: envFor(dir) })
  t.match(status, /^postgres\s+stopped\s+pid=-\s+port=64001$/m, 'status reports the saved ports')
})

t.test('an explicitly set port that is taken: one clear message, exit 1, no Node stack trace', { skip: hasLocalStack ? false : 'needs the binaries of the local stack (scripts/test.ts)' }, async (t) => {
  const holder = await listen(0)
  if (holder === undefined) throw new Error('could not listen on 127.0.0.1')
  t.teardown(() => { holder.close() })
  const port = String((holder.address() as { port: number }).port)
  const dir = mkdtempSync(join(tmpdir(), 'ledger-stack-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const env = envFor(dir, { STACK_PG_PORT: port })

  const error = (() => {
    try {
      runStack(['up'], { quiet: true, env })
    } catch (error) {
      return error
    }
  })()
  t.ok(error instanceof StackError, 'the adapter throws a StackError')
  const stackError = error as StackError
  t.equal(stackError.exitCode, 1)
  const lines = stackError.stderr.trim().split('\n')
  t.equal(lines.length, 1, 'the script says one thing')
  t.match(lines[0], new RegExp(`^stack: error: port ${port} on 127\\.0\\.0\\.1 \\(wanted by postgres\\) is already in use .*; set STACK_PG_PORT to a free port$`))
  t.notOk(existsSync(join(dir, 'ports')), 'a failed start saves no ports')

  const { DATABASE_URL: _db, REDIS_URL: _redis, DATABASE_DIRECT_URL: _direct, ...withoutUrls } = env
  const start = spawnSync(process.execPath, [fileURLToPath(new URL('../../scripts/start.ts', import.meta.url))], {
    env: withoutUrls, encoding: 'utf8', timeout: 60_000
  })
  t.equal(start.status, 1, 'npm start exits 1')
  t.equal(start.stderr.trim(), lines[0], 'and prints exactly the script\'s message')
  t.notMatch(start.stderr, /^\s+at /m, 'no stack trace')
})

t.test("the adapter's pid files are the ones `stack status` reports", { skip: hasLocalStack ? false : 'needs the local stack (scripts/test.ts)' }, async (t) => {
  const status = runStack(['status'], { quiet: true })
  for (const service of ['postgres', 'pgbouncer', 'redis'] as StackService[]) {
    const pid = new RegExp(`^${service}\\s+running\\s+pid=(\\d+)`, 'm').exec(status)?.[1]
    t.equal(readPid(pidFile(service)), Number(pid), `${service}: pid ${pid}`)
  }
})
