// The Node servers the bench starts as child processes: the API (bench/server.ts, or server.ts itself), the bare
// baseline (bench/bare-server.ts).
import { spawn, type ChildProcess } from 'node:child_process'
import { createServer } from 'node:net'

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
