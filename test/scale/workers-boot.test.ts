// A cluster whose workers cannot boot (here: the port is taken) must not restart them forever: the primary gives
// up after a few consecutive boot failures and exits 1, so whatever supervises it (systemd, Kubernetes) sees it.
import { spawn } from 'node:child_process'
import { createServer } from 'node:net'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { SUITE_LIMITS } from '../suite-limits.ts'

t.test('workers that cannot start make the primary give up and exit 1 instead of restarting forever', { timeout: 110_000 }, async (t) => {
  // Something else holds the port, so every worker fails before it listens.
  const squatter = createServer().listen(0, '127.0.0.1')
  await new Promise((resolve) => squatter.once('listening', resolve))
  t.teardown(() => { squatter.close() })
  const address = squatter.address()
  const port = typeof address === 'object' && address !== null ? address.port : 0
  const child = spawn(process.execPath, [fileURLToPath(new URL('../../server.ts', import.meta.url))], {
    env: { ...process.env, ...SUITE_LIMITS, NODE_ENV: 'test', HOST: '127.0.0.1', PORT: String(port), WORKERS: '2', LOG_LEVEL: 'info' },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let output = ''
  child.stdout.on('data', (chunk: Buffer) => { output += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { output += chunk.toString() })
  const killer = setTimeout(() => child.kill('SIGKILL'), 100_000)
  t.teardown(() => { clearTimeout(killer); child.kill('SIGKILL') })
  const code = await new Promise((resolve) => child.once('exit', (exitCode) => resolve(exitCode)))
  t.equal(code, 1, 'exit 1, so the process manager above (systemd, Kubernetes) sees the failure')
  t.match(output, /"msg":"worker keeps failing to start; stopping"/)
  t.match(output, /EADDRINUSE/, 'the workers say why')
})
