// The contract pipeline (scripts/openapi.ts): the committed openapi.json is what the app generates, the committed
// scripts/ops/api-schema.d.ts is what openapi-typescript makes from it, and Redocly's lint (redocly.yaml) finds no
// error and no warning in it. Each failure says what to run.
import { execFile } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { documentFile, documentOf, typesFile, typesOf } from '../../scripts/openapi.ts'
import { buildTestApp } from '../helper.ts'

const root = fileURLToPath(new URL('../../', import.meta.url))
const redocly = fileURLToPath(new URL('../../node_modules/@redocly/cli/bin/cli.js', import.meta.url))
const REGENERATE = 'run `npm run openapi` and commit openapi.json and scripts/ops/api-schema.d.ts'

t.test('openapi.json is the document the app generates', async (t) => {
  const app = await buildTestApp(t)
  const generated = await documentOf(app)
  const committed = await readFile(documentFile, 'utf8')
  t.equal(committed, generated, `openapi.json is behind the routes: ${REGENERATE}`)
})

t.test('scripts/ops/api-schema.d.ts is what openapi-typescript makes from openapi.json', async (t) => {
  const committed = await readFile(typesFile, 'utf8')
  t.equal(committed, await typesOf(await readFile(documentFile, 'utf8')), `the API types are behind openapi.json: ${REGENERATE}`)
})

interface LintReport { totals: { errors: number, warnings: number, ignored: number }, problems: Array<{ ruleId: string, severity: string, message: string, location?: Array<{ pointer?: string }> }> }

t.test('redocly lint (recommended rules, redocly.yaml) finds no error and no warning in openapi.json', async (t) => {
  // Telemetry and the CLI's check for a newer version would both reach out of this machine; both are turned off.
  const env = { ...process.env, REDOCLY_TELEMETRY: 'off', REDOCLY_SUPPRESS_UPDATE_NOTICE: 'true', NO_COLOR: '1' }
  const run = await new Promise<{ code: number, stdout: string, stderr: string }>((resolve) => {
    execFile(process.execPath, [redocly, 'lint', 'openapi.json', '--format=json'], { cwd: root, env, timeout: 60_000 }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : -1, stdout, stderr })
    })
  })
  let report: LintReport | undefined
  try { report = JSON.parse(run.stdout) as LintReport } catch {}
  const problems = (report?.problems ?? []).map((p) => `${p.severity} ${p.ruleId} at ${p.location?.[0]?.pointer ?? '?'}: ${p.message}`)
  t.equal(run.code, 0, 'redocly lint exits 0', { stderr: run.stderr, problems })
  t.ok(report !== undefined, 'redocly printed its JSON report', { stdout: run.stdout, stderr: run.stderr })
  t.same(problems, [], 'no problems (run `npx redocly lint` to see them with context)')
  t.same(report?.totals, { errors: 0, warnings: 0, ignored: 3 }, 'no errors, no warnings, and only the three exceptions in .redocly.lint-ignore.yaml (the health probes and the OAuth metadata)')
})
