// The configuration reference (scripts/config-reference.ts): the committed .env.example and docs/configuration.md are
// what the settings schemas generate, every parsed setting is documented, and the defaults .env.example shows are
// the ones the configuration applies. Each failure says what to run.
import { randomBytes } from 'node:crypto'
import { readdir, readFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { configurationReference, documentedGroups, envExample, envExampleFile, referenceFile, settingsOf } from '../../scripts/config-reference.ts'
import { configGroups, loadConfig } from '../../settings.ts'

const REGENERATE = 'run `npm run config` and commit .env.example and docs/configuration.md'

t.test('.env.example is what the settings schemas generate', async (t) => {
  t.equal(await readFile(envExampleFile, 'utf8'), envExample(), `.env.example is behind the settings schemas: ${REGENERATE}`)
})

t.test('docs/configuration.md is what the settings schemas generate', async (t) => {
  t.equal(await readFile(referenceFile, 'utf8'), configurationReference(), `docs/configuration.md is behind the settings schemas: ${REGENERATE}`)
})

t.test('every parsed setting has its description, once, and is in both files', async (t) => {
  const names = configGroups.flatMap((group) => settingsOf(group).map((setting) => setting.name))
  t.equal(new Set(names).size, names.length, 'no setting is declared by two groups')
  const documented = new Set(documentedGroups.flatMap((group) => settingsOf(group).map((setting) => setting.name)))
  const reference = configurationReference()
  const env = envExample()
  t.same(names.filter((name) => !documented.has(name)), [], 'every parsed setting is documented')
  t.same(names.filter((name) => !reference.includes(`| \`${name}\` |`)), [], 'every parsed setting has its row in docs/configuration.md')
  const offered = new Set([...env.matchAll(/^(?:# )?([A-Z][A-Z0-9_]*)=/gm)].map((match) => match[1]))
  const former = configGroups.flatMap((group) => settingsOf(group).filter((setting) => setting.deprecated === true).map((setting) => setting.name))
  t.same(former.sort(), ['METRICS_PORT', 'WORKER_CONCURRENCY'], 'only the former names are left out of .env.example')
  t.same(names.filter((name) => !offered.has(name)).sort(), former.sort(), 'every other setting has its line in .env.example')
})

t.test('the values .env.example shows are the defaults the configuration applies', async (t) => {
  // Every line of the example, uncommented: the result must be the configuration of an environment that sets none.
  const shown = Object.fromEntries([...envExample().matchAll(/^(?:# )?([A-Z][A-Z0-9_]*)=(.*)$/gm)].map((match) => [match[1], match[2]]))
  const required = { DATABASE_URL: shown.DATABASE_URL, REDIS_URL: shown.REDIS_URL, JWT_SECRET: randomBytes(32).toString('base64url') }
  const { DATABASE_DIRECT_URL: _direct, DATABASE_REPLICA_URL: _replica, REDIS_CLUSTER_NODES: _cluster, ...examples } = shown
  t.same(loadConfig({ ...examples, ...required }), loadConfig(required))
  t.doesNotThrow(() => loadConfig({ ...shown, ...required }), 'the example values of the optional settings are valid too')
})

t.test('the infrastructure\'s configuration imports no domain: the domains\' settings join in settings.ts', async (t) => {
  const root = fileURLToPath(new URL('../../', import.meta.url))
  const plugins = (await readdir(`${root}plugins`, { recursive: true })).filter((file) => file === 'config-helpers.ts' || file.endsWith('/config.ts'))
  t.ok(plugins.length >= 10, 'the plugins\' settings files are found')
  for (const file of ['config.ts', ...plugins.map((file) => `plugins/${file}`)]) {
    const imports = [...(await readFile(`${root}${file}`, 'utf8')).matchAll(/^(?:import|export) [^;]*? from '([^']+)'/gm)].map((match) => match[1] ?? '')
    t.same(imports.filter((path) => /(^|\/)routes\/|settings\.ts$/.test(path)), [], `${file} imports nothing from routes/ nor settings.ts`)
  }
})
