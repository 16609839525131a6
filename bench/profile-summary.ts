// `node bench/profile-summary.ts <file.cpuprofile> [top]`: where a V8 CPU profile (from `npm run bench -- --cpu-prof`)
// spent its time: self time by function and by package (node_modules/<name>, node:internal, or this project's files),
// and inclusive time of this project's own functions.
import { readFileSync } from 'node:fs'

interface ProfileNode {
  id: number
  callFrame: { functionName: string, url: string, lineNumber: number }
  children?: number[]
}
interface Profile {
  nodes: ProfileNode[]
  samples: number[]
  timeDeltas: number[]
}

const [file, topArg] = process.argv.slice(2)
if (file === undefined) {
  console.error('usage: node bench/profile-summary.ts <file.cpuprofile> [top=25]')
  process.exit(2)
}
const top = Number(topArg ?? 25)
const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile

const byId = new Map(profile.nodes.map((n) => [n.id, n]))
const parent = new Map<number, number>()
for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id)

const selfUs = new Map<number, number>()
for (let i = 0; i < profile.samples.length; i++) {
  const id = profile.samples[i]!
  selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0))
}
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

const byFunction = new Map<string, number>()
const byPackage = new Map<string, number>()
const inclusiveProject = new Map<string, number>()
for (const [id, us] of selfUs) {
  const node = byId.get(id)!
  byFunction.set(label(node), (byFunction.get(label(node)) ?? 0) + us)
  const pkg = packageOf(node.callFrame.url)
  byPackage.set(pkg, (byPackage.get(pkg) ?? 0) + us)
  // Charge the sample to every distinct project function on its stack (inclusive time).
  const seen = new Set<string>()
  for (let cursor: number | undefined = id; cursor !== undefined; cursor = parent.get(cursor)) {
    const frame = byId.get(cursor)!
    if (packageOf(frame.callFrame.url).startsWith('project: ')) {
      const key = label(frame)
      if (!seen.has(key)) {
        seen.add(key)
        inclusiveProject.set(key, (inclusiveProject.get(key) ?? 0) + us)
      }
    }
  }
}

const print = (title: string, map: Map<string, number>) => {
  console.log(`\n${title}`)
  for (const [key, us] of [...map].sort((a, b) => b[1] - a[1]).slice(0, top)) {
    console.log(`${(us / total * 100).toFixed(1).padStart(6)} %  ${(us / 1000).toFixed(0).padStart(7)} ms  ${key}`)
  }
}
console.log(`${file}: ${(total / 1e6).toFixed(1)} s sampled`)
print('self time by package', byPackage)
print('self time by function', byFunction)
print('inclusive time of project functions', inclusiveProject)
