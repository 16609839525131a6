// `node bench/profile-summary.ts <file.cpuprofile> [top]`: where a V8 CPU profile (from `npm run bench -- --cpu-prof`)
// spent its time: self time by function and by package (node_modules/<name>, node:internal, or this project's files),
// and inclusive time of this project's own functions.
import { readFileSync } from 'node:fs'

interface ProfileNode { id: number, callFrame: { functionName: string, url: string, lineNumber: number }, children?: number[] }

const [file, topArg] = process.argv.slice(2)
if (file === undefined) {
  console.error('usage: node bench/profile-summary.ts <file.cpuprofile> [top=25]')
  process.exit(2)
}
const top = Number(topArg ?? 25)
const profile = JSON.parse(readFileSync(file, 'utf8')) as { nodes: ProfileNode[], samples: number[], timeDeltas: number[] }
const byId = new Map(profile.nodes.map((n) => [n.id, n]))
const parent = new Map(profile.nodes.flatMap((node) => (node.children ?? []).map((child) => [child, node.id] as const)))

const selfUs = new Map<number, number>()
profile.samples.forEach((id, i) => selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0)))
const total = [...selfUs.values()].reduce((a, b) => a + b, 0)

function packageOf (url: string): string {
  if (url === '') return '(native/vm)'
  if (url.startsWith('node:')) return url.startsWith('node:internal') ? 'node:internal' : url
  const match = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)
  if (match?.[1] !== undefined) return match[1]
  const project = /\/(bench|plugins|routes|scripts)\/|\/(app|server|config|telemetry)\.ts$/.exec(url)
  return project === null ? url : `project: ${url.split('/').slice(-2).join('/')}`
}
const label = (n: ProfileNode) => `${n.callFrame.functionName || '(anonymous)'} ${n.callFrame.url.replace(/^.*node_modules\//, '').replace(/^file:\/\/.*\/main\//, '')}:${n.callFrame.lineNumber + 1}`
const add = (map: Map<string, number>, key: string, us: number) => map.set(key, (map.get(key) ?? 0) + us)

const byFunction = new Map<string, number>()
const byPackage = new Map<string, number>()
const inclusiveProject = new Map<string, number>()
for (const [id, us] of selfUs) {
  const node = byId.get(id)!
  add(byFunction, label(node), us)
  add(byPackage, packageOf(node.callFrame.url), us)
  // Charge the sample to every distinct project function on its stack (inclusive time).
  const seen = new Set<string>()
  for (let cursor: number | undefined = id; cursor !== undefined; cursor = parent.get(cursor)) {
    const frame = byId.get(cursor)!
    if (packageOf(frame.callFrame.url).startsWith('project: ') && !seen.has(label(frame))) {
      seen.add(label(frame))
      add(inclusiveProject, label(frame), us)
    }
  }
}

console.log(`${file}: ${(total / 1e6).toFixed(1)} s sampled`)
for (const [title, map] of [['self time by package', byPackage], ['self time by function', byFunction], ['inclusive time of project functions', inclusiveProject]] as const) {
  console.log(`\n${title}`)
  for (const [key, us] of [...map].sort((a, b) => b[1] - a[1]).slice(0, top)) {
    console.log(`${(us / total * 100).toFixed(1).padStart(6)} %  ${(us / 1000).toFixed(0).padStart(7)} ms  ${key}`)
  }
}
