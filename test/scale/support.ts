// Shared by the test/scale files: real server processes (server.ts, also as a node:cluster primary) and the
// stack's optional extras (a streaming replica, a Redis Cluster), which these files start through scripts/local-stack.ts.
// Everything binds 127.0.0.1 and is bounded in time.
import { execFileSync, spawn, type ChildProcessByStdio } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import type { Readable } from 'node:stream'
import { fileURLToPath } from 'node:url'
import { API_NODE_FLAGS } from '../../plugins/http/config.ts'
import { freePort } from '../free-port.ts'
import { SUITE_LIMITS } from '../suite-limits.ts'

interface Teardown { teardown: (fn: () => unknown) => void }

const serverScript = fileURLToPath(new URL('../../server.ts', import.meta.url))

/** The backlog of each socket listening on `port`, one entry per socket: ss shows it as Send-Q for a listening socket. */
export function listenBacklogs (port: number): number[] {
  const lines = execFileSync('ss', ['-ltnH', `sport = :${port}`], { encoding: 'utf8' }).trim().split('\n').filter(Boolean)
  return lines.map((line) => Number(line.split(/\s+/)[2]))
}

/** The pid owning each socket listening on `port`, one entry per socket (ss -p). */
export function listenerPids (port: number): number[] {
  const lines = execFileSync('ss', ['-ltnpH', `sport = :${port}`], { encoding: 'utf8' }).trim().split('\n').filter(Boolean)
  return lines.map((line) => Number(/pid=(\d+)/.exec(line)?.[1]))
}

export interface ApiProcess {
  port: number
  url: string
  child: ChildProcessByStdio<null, Readable, Readable>
  /** Everything the process wrote so far (stdout and stderr, in arrival order). */
  output: () => string
  /** Resolves with the exit code (null when killed by a signal) once the process is gone. */
  exited: Promise<number | null>
}

type ServerProcess = Pick<ApiProcess, 'child' | 'output' | 'exited'> & { running: () => boolean }

/**
 * Starts `server.ts` on `port` as its own process (with WORKERS > 1 that is the cluster primary) against the test
 * stack, without waiting for it, and stops it when the test ends: SIGTERM, then SIGKILL after 15 s.
 */
export function startServer (t: Teardown, port: number, env: Record<string, string> = {}): ServerProcess {
  const child = spawn(process.execPath, [...API_NODE_FLAGS, serverScript], {
    // The suite's limits, as in buildTestApp (test/helper.ts): the process shares the suite's Redis buckets.
    env: { ...process.env, NODE_ENV: 'test', HOST: '127.0.0.1', LOG_LEVEL: 'warn', ...SUITE_LIMITS, ...env, PORT: String(port) },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let output = ''
  child.stdout.on('data', (chunk: Buffer) => { output += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { output += chunk.toString() })
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  const running = () => child.exitCode === null && child.signalCode === null
  t.teardown(async () => {
    if (!running()) return
    child.kill('SIGTERM')
    const timer = setTimeout(() => child.kill('SIGKILL'), 15_000)
    await exited
    clearTimeout(timer)
  })
  return { child, output: () => output, exited, running }
}

/**
 * startServer on a free port, resolved once /health/ready answers 200 and, with WORKERS > 1, every worker listens:
 * on the public port the first worker to listen answers readiness for itself alone (the primary's readiness of all
 * of them is on the operations port).
 */
export async function spawnApiServer (t: Teardown, env: Record<string, string> = {}, options: { timeoutMs?: number } = {}): Promise<ApiProcess> {
  const port = await freePort()
  const workers = Number(env.WORKERS) || 1
  const { child, output, exited, running } = startServer(t, port, env)
  const url = `http://127.0.0.1:${port}`
  const deadline = Date.now() + (options.timeoutMs ?? 30_000)
  while (Date.now() < deadline && running()) {
    const status = await fetch(`${url}/health/ready`, { signal: AbortSignal.timeout(2000) }).then((r) => r.status, () => 0)
    if (status === 200 && (workers === 1 || new Set(listenerPids(port)).size >= workers)) return { port, url, child, output, exited }
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  if (running()) child.kill('SIGKILL')
  throw new Error(`server.ts did not become ready on port ${port}: ${output().slice(-2000)}`)
}

/** Pids of the live processes whose parent is `pid` (Linux /proc), such as a cluster primary's workers. */
export function childPids (pid: number): number[] {
  const children: number[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
      // Fields after the command name (which may hold spaces): state, ppid, ...
      const [state, ppid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      if (Number(ppid) === pid && state !== 'Z') children.push(Number(entry))
    } catch {
      // The process ended while we looked.
    }
  }
  return children
}
