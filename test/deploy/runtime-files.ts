// What the image's processes load, derived from the sources rather than listed by hand: every module that the
// entry points import, transitively (static and dynamic imports of relative paths, type-only ones included), and
// the SQL files the migration runner reads. The Dockerfile test checks that .dockerignore keeps none of them out;
// the image test checks that each is in the built image.
import { readdirSync, readFileSync } from 'node:fs'
import { dirname, join, normalize } from 'node:path'
import { fileURLToPath } from 'node:url'

export const projectRoot = fileURLToPath(new URL('../../', import.meta.url))

/** The image's commands: the API (CMD), the job worker and the migration runner (compose, deploy/k8s). */
export const imageEntryPoints = ['server.ts', 'worker.ts', 'scripts/migrate.ts'] as const

const relativeSpecifier = /(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)['"](\.{1,2}\/[^'"]+)['"]/g

/** Relative specifiers imported by one source text. */
export function importsOf (source: string): string[] {
  return [...source.matchAll(relativeSpecifier)].map((match) => match[1] as string)
}

/** Project-relative paths of every module reachable from `entries`, sorted. A missing module throws. */
export function moduleClosure (entries: readonly string[], root = projectRoot): string[] {
  const seen = new Set<string>()
  const pending = [...entries]
  while (pending.length > 0) {
    const file = pending.pop() as string
    if (seen.has(file)) continue
    seen.add(file)
    const source = readFileSync(join(root, file), 'utf8')
    for (const specifier of importsOf(source)) {
      const target = normalize(join(dirname(file), specifier))
      if (target.startsWith('..')) throw new Error(`${file} imports ${specifier}, outside the project`)
      pending.push(target)
    }
  }
  return [...seen].sort()
}

/** The SQL the migration runner reads at run time (scripts/migrate.ts: sql/*.sql and sql/functions/*.sql). */
export function migrationFiles (root = projectRoot): string[] {
  const sqlDir = join(root, 'sql')
  const top = readdirSync(sqlDir).filter((name) => name.endsWith('.sql')).map((name) => `sql/${name}`)
  const functions = readdirSync(join(sqlDir, 'functions')).filter((name) => name.endsWith('.sql')).map((name) => `sql/functions/${name}`)
  return [...top, ...functions].sort()
}

/** Every file the image must contain besides node_modules. */
export function runtimeFiles (root = projectRoot): string[] {
  return [...new Set([...moduleClosure(imageEntryPoints, root), ...migrationFiles(root), 'package.json'])].sort()
}
