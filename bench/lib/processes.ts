// Child processes of the bench: the API and the bare baseline (Node, IPC channel so they die with us), pgbench and
// redis-benchmark (bounded by their own -T / -n).
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { percentiles, type Percentiles } from './load.ts'

export interface NodeServer {
  child: ChildProcess
  pid: number
  port: number
  url: string
  exited: Promise<number | null>
  stop: () => Promise<void>
}

export function freePort (): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => resolve(typeof address === 'object' && address !== null ? address.port : 0))
    })
  })
}

/**
 * Starts `node file` on a free port. With `ipc` (bench/server.ts, bench/bare-server.ts) it resolves once the child
 * reports that it listens, and the child stops when we go away; without it (the real entry point, `node server.ts`,
 * e.g. a node:cluster primary and its workers) it does not; either way, unless `ready` is false, it then waits for
 * /health/ready. Stopped with SIGTERM, then SIGKILL.
 */
export async function startNodeServer (file: string, env: NodeJS.ProcessEnv, options: { nodeArgs?: string[], ipc?: boolean, ready?: boolean } = {}): Promise<NodeServer> {
  const { nodeArgs = [], ipc = true, ready = true } = options
  const port = await freePort()
  const child = spawn(process.execPath, [...nodeArgs, file], {
    env: { ...env, PORT: String(port), HOST: '127.0.0.1' },
    stdio: ['ignore', 'inherit', 'inherit', ...(ipc ? ['ipc' as const] : [])]
  })
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  const url = `http://127.0.0.1:${port}`
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return
    child.kill('SIGTERM')
    const timer = setTimeout(() => child.kill('SIGKILL'), ipc ? 15_000 : 20_000)
    await exited
    clearTimeout(timer)
  }
  try {
    if (ipc) {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`${file} did not start within 60 s`)), 60_000)
        child.once('message', () => { clearTimeout(timer); resolve() })
        exited.then((code) => { clearTimeout(timer); reject(new Error(`${file} exited with ${code} before listening`)) }).catch(() => {})
      })
    }
    if (ready) await waitReady(url)
  } catch (error) {
    await stop()
    throw error
  }
  return { child, pid: child.pid!, port, url, exited, stop }
}

async function waitReady (url: string, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs
  let last = ''
  while (Date.now() < deadline) {
    try {
      const response = await fetch(`${url}/health/ready`, { signal: AbortSignal.timeout(3000) })
      if (response.ok) return
      last = `${response.status} ${await response.text()}`
    } catch (error) {
      last = String(error)
    }
    await new Promise((resolve) => setTimeout(resolve, 250))
  }
  throw new Error(`${url} not ready after ${timeoutMs} ms: ${last}`)
}

function run (file: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs: number): Promise<{ code: number, stdout: string, stderr: string }> {
  return new Promise((resolve) => {
    execFile(file, args, { env, timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === 'number' ? error.code : 1
      resolve({ code, stdout, stderr })
    })
  })
}

export function findPgbench (): string | undefined {
  if (process.env.BENCH_PGBENCH) return process.env.BENCH_PGBENCH
  for (const dir of (process.env.PATH ?? '').split(':')) if (dir !== '' && existsSync(join(dir, 'pgbench'))) return join(dir, 'pgbench')
  const root = '/usr/lib/postgresql'
  if (!existsSync(root)) return undefined
  const versions = readdirSync(root).filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a))
  for (const version of versions) {
    const candidate = join(root, version, 'bin', 'pgbench')
    if (existsSync(candidate)) return candidate
  }
  return undefined
}

export interface PgbenchResult {
  script: string
  clients: number
  durationS: number
  tps: number
  transactions: number
  failed: number
  retried: number
  latency: Percentiles
  exitCode: number
  output: string
}

/** pgbench with a custom script through `url` (PgBouncer), simple protocol, per-transaction log for percentiles. */
export async function runPgbench (binary: string, url: string, script: string, options: { clients: number, threads: number, seconds: number, defines: Record<string, string | number> }): Promise<PgbenchResult> {
  const parsed = new URL(url)
  const logDir = mkdtempSync(join(tmpdir(), 'ledger-pgbench-'))
  try {
    const args = [
      '-h', parsed.hostname, '-p', parsed.port || '5432', '-U', decodeURIComponent(parsed.username),
      '-n', '-M', 'simple', '-c', String(options.clients), '-j', String(options.threads), '-T', String(options.seconds),
      '--max-tries=10', '-l', `--log-prefix=${join(logDir, 'pgbench')}`,
      '-f', script,
      ...Object.entries(options.defines).flatMap(([k, v]) => ['-D', `${k}=${v}`]),
      decodeURIComponent(parsed.pathname.slice(1))
    ]
    const env = { ...process.env, PGPASSWORD: decodeURIComponent(parsed.password), PGCONNECT_TIMEOUT: '10' }
    const { code, stdout, stderr } = await run(binary, args, env, (options.seconds + 60) * 1000)
    const number = (pattern: RegExp) => Number(pattern.exec(stdout)?.[1] ?? 0)
    const latencies: number[] = []
    for (const file of readdirSync(logDir)) {
      for (const line of readFileSync(join(logDir, file), 'utf8').split('\n')) {
        // client_id transaction_no time(us) script_no epoch us ...; failed transactions log a word instead of time.
        const time = Number(line.split(' ')[2])
        if (Number.isFinite(time) && line !== '') latencies.push(time / 1000)
      }
    }
    return {
      script,
      clients: options.clients,
      durationS: options.seconds,
      tps: number(/tps = ([\d.]+)/),
      transactions: number(/number of transactions actually processed: (\d+)/),
      failed: number(/number of failed transactions: (\d+)/),
      retried: number(/number of transactions retried: (\d+)/),
      latency: percentiles(latencies),
      exitCode: code,
      output: `${stdout}\n${stderr}`.trim()
    }
  } finally {
    rmSync(logDir, { recursive: true, force: true })
  }
}

export interface RedisBenchmarkResult {
  rps: number
  p50: number
  exitCode: number
  output: string
}

export async function runRedisBenchmark (redisUrl: string, requests: number): Promise<RedisBenchmarkResult | undefined> {
  const parsed = new URL(redisUrl)
  const args = ['-h', parsed.hostname, '-p', parsed.port || '6379', '-t', 'get', '-n', String(requests), '-q']
  if (parsed.password !== '') args.push('-a', decodeURIComponent(parsed.password), '--no-auth-warning')
  const { code, stdout, stderr } = await run('redis-benchmark', args, process.env, 120_000)
  if (code !== 0 && stdout === '') return undefined
  // "GET: 98039.22 requests per second, p50=0.255 msec" (the progress lines before it end in \r).
  const line = stdout.split(/[\r\n]/).filter((l) => l.startsWith('GET:')).at(-1) ?? ''
  return {
    rps: Number(/GET: ([\d.]+) requests per second/.exec(line)?.[1] ?? 0),
    p50: Number(/p50=([\d.]+) msec/.exec(line)?.[1] ?? 0),
    exitCode: code,
    output: `${line || stdout}${stderr}`.trim()
  }
}
