// The dependency rule, checked on every import of every TypeScript file (static, dynamic and type-only):
//   entry files (app.ts, server.ts, worker.ts, ...) -> routes/<domain>/ -> plugins/ -> libraries.
// - plugins/ is infrastructure: it imports plugins/, config.ts and libraries, never routes/ or an entry file.
//   A domain registers into it (app.jobs.addLane, app.housekeeping.add) instead of being imported by it.
// - config.ts imports no domain module; it may compose a domain's own settings schema, routes/<domain>/config.ts.
// - A domain imports another only through that domain's public file, routes/<domain>/index.ts; routes/common/ holds
//   schema helpers every domain may import, and imports no domain itself. A domain imports no entry file but
//   config.ts.
// - test/ and scripts/ never import bench/ (a benchmark may use test fixtures, not the other way round).
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { dirname, join, normalize } from 'node:path'
import t from 'tap'
import { importsOf, projectRoot } from './deploy/runtime-files.ts'

const skipped = new Set(['node_modules', '.stack', '.git', '.tap', 'coverage', 'results'])
const entryFiles = new Set(['app.ts', 'server.ts', 'worker.ts', 'cluster.ts', 'ops-server.ts', 'telemetry.ts'])

function sourceFiles (root: string, dir = ''): string[] {
  return readdirSync(join(root, dir)).flatMap((name) => {
    if (skipped.has(name)) return []
    const path = dir === '' ? name : `${dir}/${name}`
    if (statSync(join(root, path)).isDirectory()) return sourceFiles(root, path)
    return /\.(ts|mts|js|mjs)$/.test(name) && !name.endsWith('.d.ts') ? [path] : []
  })
}

/** The domain a project path belongs to (`routes/<domain>/...`), or undefined. */
const domainOf = (path: string) => /^routes\/([^/]+)\//.exec(path)?.[1]

/** Why `file` may not import `target` (both project-relative), or undefined when it may. */
export function ruleBroken (file: string, target: string): string | undefined {
  const top = (path: string) => path.split('/')[0]
  if ((top(file) === 'test' || top(file) === 'scripts') && top(target) === 'bench') return 'test/ and scripts/ never import bench/'
  if (top(file) === 'plugins') {
    if (top(target) === 'routes') return 'a plugin imports no domain (routes/)'
    if (entryFiles.has(target)) return 'a plugin imports no entry file'
  }
  if (file === 'config.ts' && top(target) === 'routes' && !/^routes\/[^/]+\/config\.ts$/.test(target)) {
    return 'config.ts imports no domain module (only a domain\'s settings schema, routes/<domain>/config.ts)'
  }
  const from = domainOf(file)
  const to = domainOf(target)
  if (from !== undefined) {
    if (entryFiles.has(target)) return 'a domain imports no entry file'
    if (from === 'common' && to !== undefined && to !== 'common') return 'routes/common/ imports no domain'
    if (to !== undefined && to !== from && to !== 'common' && target !== `routes/${to}/index.ts`) {
      return `a domain imports another only through its index.ts (routes/${to}/index.ts)`
    }
  }
  return undefined
}

/** Every import in the tree under `root` that breaks a rule, as `file -> target: rule`. */
export function violations (root: string): string[] {
  const found: string[] = []
  for (const file of sourceFiles(root)) {
    for (const specifier of importsOf(readFileSync(join(root, file), 'utf8'))) {
      const target = normalize(join(dirname(file), specifier))
      const rule = ruleBroken(file, target)
      if (rule !== undefined) found.push(`${file} -> ${target}: ${rule}`)
    }
  }
  return found
}

t.test('every import follows the dependency rule', async (t) => {
  t.same(violations(projectRoot), [])
})

t.test('the rule catches each kind of backward import', async (t) => {
  t.ok(ruleBroken('plugins/housekeeping/index.ts', 'routes/identity/sessions.ts'), 'a plugin importing a domain')
  t.ok(ruleBroken('plugins/jobs/index.ts', 'app.ts'), 'a plugin importing an entry file')
  t.ok(ruleBroken('config.ts', 'plugins/passwords/scrypt.ts') === undefined, 'config may use infrastructure')
  t.ok(ruleBroken('config.ts', 'routes/identity/index.ts'), 'config importing a domain')
  t.ok(ruleBroken('config.ts', 'routes/webhooks/config.ts') === undefined, 'config composing a domain\'s settings schema')
  t.ok(ruleBroken('routes/webhooks/repository.ts', 'routes/ledger/repository.ts'), 'a domain reaching into another')
  t.ok(ruleBroken('routes/webhooks/repository.ts', 'routes/ledger/index.ts') === undefined, 'through the public file')
  t.ok(ruleBroken('routes/ledger/schemas.ts', 'routes/common/text.ts') === undefined, 'the shared schema helpers')
  t.ok(ruleBroken('routes/common/text.ts', 'routes/ledger/index.ts'), 'the shared helpers importing a domain')
  t.ok(ruleBroken('routes/ledger/transactions.ts', 'app.ts'), 'a domain importing an entry file')
  t.ok(ruleBroken('test/routes/social/feed.test.ts', 'bench/feed-n-plus-one.ts'), 'a test importing a benchmark')
  t.ok(ruleBroken('scripts/ops/diagnose.ts', 'bench/lib/traffic.ts'), 'a script importing a benchmark')
  t.ok(ruleBroken('bench/server.ts', 'test/feed-n-plus-one.ts') === undefined, 'a benchmark may use a test fixture')
})
