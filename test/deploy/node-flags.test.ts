// The V8 flags every API process runs with (API_NODE_FLAGS, plugins/http/config.ts) are written out in files that
// cannot import them: the image's CMD, the Kubernetes Deployment and `npm start`. They say the same, and a server
// started without them says so.
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { parseAllDocuments } from 'yaml'
import { API_NODE_FLAGS } from '../../plugins/http/config.ts'
import { freePort } from '../free-port.ts'

const root = fileURLToPath(new URL('../../', import.meta.url))
const read = (file: string) => readFileSync(`${root}${file}`, 'utf8')

t.test('the image, the Deployment and npm start run server.ts with exactly the flags', async (t) => {
  const cmd = /^CMD (\[.*\])$/m.exec(read('Dockerfile'))?.[1]
  t.same(JSON.parse(cmd ?? '[]'), ['node', ...API_NODE_FLAGS, 'server.ts'], 'the Dockerfile\'s CMD')
  const deployment = parseAllDocuments(read('deploy/k8s/api-deployment.yaml')).map((doc) => doc.toJS() as { kind?: string, spec?: { template?: { spec?: { containers?: Array<{ name: string, command?: string[] }> } } } })
    .find((doc) => doc.kind === 'Deployment')
  const api = deployment?.spec?.template?.spec?.containers?.[0]
  t.same(api?.command, ['node', ...API_NODE_FLAGS, 'server.ts'], 'the API container\'s command')
  const start = (JSON.parse(read('package.json')) as { scripts: Record<string, string> }).scripts.start
  t.same(start?.split(' ').filter((word) => word.startsWith('--no-')), [...API_NODE_FLAGS], 'npm start')
})

t.test('a server started without them warns, naming what is missing', async (t) => {
  // The warning comes once the app is built, before the warm-up and the listen; the process is stopped then.
  const child = spawn(process.execPath, ['server.ts'], {
    cwd: root,
    env: { ...process.env, NODE_ENV: 'test', HOST: '127.0.0.1', PORT: String(await freePort()), LOG_LEVEL: 'warn', WARM_UP_S: '0', WORKER_ENABLED: 'false', RECONCILE_INTERVAL_S: '0' },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let output = ''
  const warned = new Promise<void>((resolve) => {
    const onData = (chunk: Buffer) => { output += chunk.toString(); if (output.includes('missingFlags')) resolve() }
    child.stdout.on('data', onData)
    child.stderr.on('data', onData)
  })
  const exited = new Promise((resolve) => child.once('exit', resolve))
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000)
  await Promise.race([warned, exited])
  child.kill('SIGTERM')
  await exited
  clearTimeout(timer)
  const line = output.split('\n').find((l) => l.includes('missingFlags'))
  t.ok(line !== undefined, 'a warning line')
  t.same((JSON.parse(line ?? '{}') as { missingFlags?: string[] }).missingFlags, [...API_NODE_FLAGS])
})
