// The Dockerfile cannot fall behind the sources: its runtime stage copies the whole build context, and no module the
// image's commands import (nor the SQL the migration runner reads) is kept out by .dockerignore. The base is a build
// argument defaulting to the official image, and there is no `# syntax` line (it makes BuildKit fetch a frontend
// from a registry). The image itself is built and run by `npm run image:test` (test/image/image.test.ts).
import { readFileSync } from 'node:fs'
import dockerignoreFilter from '@balena/dockerignore'
import t from 'tap'
import { importsOf, moduleClosure, runtimeFiles } from './runtime-files.ts'

// A CommonJS module (module.exports = the factory) whose types declare an ES default export: Node's default import
// is the factory itself.
const ignore = dockerignoreFilter as unknown as typeof dockerignoreFilter.default

const read = (file: string) => readFileSync(new URL(`../../${file}`, import.meta.url), 'utf8')

interface Instruction { keyword: string, args: string }

/** Dockerfile instructions with continuation lines joined; comments and parser directives dropped. */
function instructions (text: string): Instruction[] {
  const joined = text.split('\n').filter((line) => !/^\s*#/.test(line)).join('\n').replace(/\\\n/g, ' ')
  return joined.split('\n').map((line) => line.trim()).filter(Boolean).map((line) => {
    const [keyword = '', ...rest] = line.split(/\s+/)
    return { keyword: keyword.toUpperCase(), args: rest.join(' ') }
  })
}

/** The instructions of the stage named `name` (from its FROM to the next). */
function stage (all: Instruction[], name: string): Instruction[] {
  const start = all.findIndex((i) => i.keyword === 'FROM' && new RegExp(`\\bAS\\s+${name}$`, 'i').test(i.args))
  if (start === -1) return []
  const end = all.findIndex((i, index) => index > start && i.keyword === 'FROM')
  return all.slice(start, end === -1 ? undefined : end)
}

/** What the runtime stage's COPY instructions from the build context leave out of `files` (. copies everything). */
function notCopied (dockerfile: string, dockerignore: string, files: readonly string[]): string[] {
  const copies = stage(instructions(dockerfile), 'runtime').filter((i) => i.keyword === 'COPY' && !i.args.startsWith('--from'))
  const sources = copies.flatMap((i) => i.args.split(/\s+/).filter((arg) => !arg.startsWith('--')).slice(0, -1))
  const filter = ignore().add(dockerignore.split('\n').map((line) => line.trim()).filter((line) => line !== '' && !line.startsWith('#')))
  const copied = (file: string) => sources.some((source) => {
    const path = source.replace(/^\.\/?/, '').replace(/\/$/, '')
    return path === '' || file === path || file.startsWith(`${path}/`) ||
      (path.includes('*') && new RegExp(`^${path.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*')}$`).test(file))
  })
  return files.filter((file) => !copied(file) || filter.ignores(file))
}

const dockerfile = read('Dockerfile')
const dockerignore = read('.dockerignore')

t.test('the base is a build argument defaulting to the official image, with no # syntax line', async (t) => {
  t.notMatch(dockerfile, /^#\s*syntax\s*=/im, 'no parser directive that fetches a frontend')
  const all = instructions(dockerfile)
  t.same(all[0], { keyword: 'ARG', args: 'BASE=node:24-bookworm-slim' }, 'ARG BASE before the first FROM')
  const froms = all.filter((i) => i.keyword === 'FROM')
  t.ok(froms.length >= 2, 'a dependency stage and a runtime stage')
  for (const from of froms) t.match(from.args, /^\$\{BASE\} AS [a-z]+$/, `FROM ${from.args}`)
})

t.test('the runtime stage runs as the non-root node user and serves by default', async (t) => {
  const runtime = stage(instructions(dockerfile), 'runtime')
  const users = runtime.filter((i) => i.keyword === 'USER').map((i) => i.args)
  t.same(users, ['node'], 'USER node, once')
  const userAt = runtime.findIndex((i) => i.keyword === 'USER')
  t.notOk(runtime.slice(userAt).some((i) => i.keyword === 'COPY' || i.keyword === 'RUN'), 'nothing is written into the image as node (the app cannot change its own files)')
  t.same(runtime.find((i) => i.keyword === 'CMD')?.args, '["node", "--no-memory-reducer", "--no-flush-bytecode", "server.ts"]')
  t.same(runtime.find((i) => i.keyword === 'STOPSIGNAL')?.args, 'SIGTERM')
})

t.test('every module the server, the worker and the migration runner load is in the build context and copied', async (t) => {
  const files = runtimeFiles()
  for (const entry of ['server.ts', 'worker.ts', 'scripts/migrate.ts', 'app.ts', 'routes/webhooks/index.ts', 'sql/001_database_settings.sql']) {
    t.ok(files.includes(entry), `${entry} is derived as needed`)
  }
  t.same(notCopied(dockerfile, dockerignore, files), [], 'nothing needed is left out')
})

t.test('.dockerignore keeps local state, secrets and development files out', async (t) => {
  const filter = ignore().add(dockerignore.split('\n').map((line) => line.trim()).filter((line) => line !== '' && !line.startsWith('#')))
  for (const file of ['.env', '.env.local', '.git/config', '.stack/jwt-secret', '.engine/data/x', 'node_modules/fastify/package.json', 'test/helper.ts', 'bench/run.ts', 'scripts/stack/index.ts', 'scripts/ops/clients.ts', 'deploy/k8s/kustomization.yaml']) {
    t.ok(filter.ignores(file), `${file} stays out`)
  }
})

t.test('the checks can fail', async (t) => {
  // A COPY list naming the top-level modules one by one misses the one added after it was written.
  const listed = dockerfile.replace('COPY . .', 'COPY package.json app.ts server.ts cluster.ts ops-server.ts config.ts settings.ts telemetry.ts ./\nCOPY plugins ./plugins\nCOPY routes ./routes\nCOPY sql ./sql\nCOPY scripts/migrate.ts ./scripts/')
  t.same(notCopied(listed, dockerignore, runtimeFiles()), ['worker.ts'], 'a hand-kept COPY list that falls behind')
  t.same(notCopied(dockerfile, `${dockerignore}\nroutes/webhooks/outbound.ts\n`, runtimeFiles()), ['routes/webhooks/outbound.ts'], 'an ignore rule that drops a module')
  t.same(importsOf("import a from './a.ts'\nimport type { B } from '../b.ts'\nconst c = await import('./c/index.ts')\nimport './d.ts'\nimport e from 'node:fs'"), ['./a.ts', '../b.ts', './c/index.ts', './d.ts'])
  t.throws(() => moduleClosure(['no-such-file.ts']), /ENOENT/, 'a module that does not exist')
})
