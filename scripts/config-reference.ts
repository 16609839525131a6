// `npm run config`: writes .env.example and docs/configuration.md from the settings schemas, so that a setting is
// documented once, where it is parsed: its group's title and paragraph, its `.describe()` text, its default (or the
// example value its metadata gives). test/scripts/config-reference.test.ts fails when either file is behind them.
//
// The parsed settings come from settings.ts, in its order. Three groups are documented here without being parsed:
// the OpenTelemetry SDK's variables (plugins/tracing/config.ts), compose.yaml's, and those of the local stack and the
// test runner, which the tooling reads itself.
import { writeFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { z } from 'zod'
import { settingsGroup, type SettingMeta, type SettingsGroup } from '../plugins/config-helpers.ts'
import { tracingConfig } from '../plugins/tracing/config.ts'
import { configGroups } from '../settings.ts'

export const envExampleFile = fileURLToPath(new URL('../.env.example', import.meta.url))
export const referenceFile = fileURLToPath(new URL('../docs/configuration.md', import.meta.url))

const composeConfig = settingsGroup('compose.yaml only', 'Read by `docker compose` to fill in compose.yaml; the API never reads them.', {
  POSTGRES_PASSWORD: z.string().default('ledger-local-only')
    .describe('Password of the `ledger` database user, shared by PostgreSQL, PgBouncer and the API URLs in compose.'),
  REDIS_PASSWORD: z.string().default('redis-local-only')
    .describe('Password Redis requires (requirepass) and the API\'s REDIS_URL carries in compose.')
})

const toolingConfig = settingsGroup('Local stack and tests', 'Read by the local stack (`npm run stack`, used by `npm start` and `npm test` when DATABASE_URL and REDIS_URL are unset) and by the test runner.', {
  LEDGER_STACK_DIR: z.string().default('./.stack')
    .describe('Folder for the stack\'s data, config, logs and sockets (as root, under a private parent it moves to /var/tmp/ledger-api-stack-<hash>).'),
  STACK_PG_PORT: z.string().default('61432')
    .describe('PostgreSQL port on 127.0.0.1. Stack ports sit above Linux\'s ephemeral range, so a restart never finds its port taken by an outgoing socket. Unset: .stack/ports, else the default, else (a default held by another process) a block in 61000-65529 derived from the stack folder. Set but taken: the start stops with one message.'),
  STACK_PGBOUNCER_PORT: z.string().default('62432')
    .describe('PgBouncer port on 127.0.0.1, chosen like STACK_PG_PORT.'),
  STACK_REDIS_PORT: z.string().default('61379')
    .describe('Redis port on 127.0.0.1, chosen like STACK_PG_PORT.'),
  STACK_PG_REPLICA_PORT: z.string().default('61433')
    .describe('Port of the streaming replica (`npm run stack -- replica up`).'),
  STACK_REDIS_CLUSTER_PORT: z.string().default('57001')
    .describe('First of the Redis Cluster\'s node ports (`npm run stack -- cluster up`); its nodes use the next ports too, their cluster bus ports 10000 above (40000 below above 55535).'),
  STACK_REDIS_CLUSTER_REPLICAS: z.string().default('1')
    .describe('Replicas per cluster master: 1 (3 masters + 3 replicas) or 0 (3 masters).'),
  DATABASE_ADMIN_URL: z.string().optional()
    .describe('A superuser, only for the test runner and the bench, which create and bootstrap databases of their own. Unset: the local stack\'s.'),
  LEDGER_TEST_DATABASE: z.string().default('ledger_test')
    .describe('The test suite\'s database (to run two suites on one stack).'),
  LEDGER_TEST_REDIS_DB: z.string().default('1')
    .describe('The test suite\'s Redis database number.')
})

/** Every documented group: the parsed ones first, in settings.ts's order. */
export const documentedGroups: readonly SettingsGroup[] = [...configGroups, tracingConfig, composeConfig, toolingConfig]

interface Setting extends SettingMeta {
  name: string
  description: string
  /** The default as an environment variable spells it; undefined when there is none. */
  default: string | undefined
  required: boolean
}

function envText (value: unknown): string {
  return Array.isArray(value) ? value.join(',') : String(value)
}

/** A group's settings as the reference prints them, read from each key's schema and metadata. */
export function settingsOf (group: SettingsGroup): Setting[] {
  return Object.entries(group.shape).map(([name, schema]) => {
    const meta = (z.globalRegistry.get(schema) ?? {}) as SettingMeta & { description?: string }
    if (meta.description === undefined || meta.description.trim() === '') throw new Error(`${name} has no .describe() text`)
    const def = schema._zod.def as { type: string, defaultValue?: unknown }
    return {
      name,
      description: meta.description,
      default: def.type === 'default' ? envText(def.defaultValue) : undefined,
      required: def.type !== 'default' && def.type !== 'optional',
      ...(meta.example === undefined ? {} : { example: meta.example }),
      ...(meta.fillIn === true ? { fillIn: true } : {}),
      ...(meta.deprecated === true ? { deprecated: true } : {})
    }
  })
}

function titleOf (group: SettingsGroup): { title: string, about: string } {
  const meta = z.globalRegistry.get(group) ?? {}
  if (meta.title === undefined) throw new Error(`a settings group has no title: ${Object.keys(group.shape).join(', ')}`)
  return { title: meta.title, about: meta.description ?? '' }
}

/** `text` as `# ` comment lines of at most `width` characters. */
function comment (text: string, width = 116): string[] {
  const lines: string[] = []
  let line = ''
  for (const word of text.split(/\s+/).filter(Boolean)) {
    if (line !== '' && line.length + 1 + word.length > width - 2) {
      lines.push(`# ${line}`)
      line = word
    } else {
      line = line === '' ? word : `${line} ${word}`
    }
  }
  if (line !== '') lines.push(`# ${line}`)
  return lines
}

const ENV_HEADER = [
  '# ledger-api environment. Copy to .env. `docker compose` reads it only to fill in compose.yaml',
  '# (JWT_SECRET, POSTGRES_PASSWORD, LOG_LEVEL); other settings reach the container only through the api',
  '# service\'s `environment:`. For a local run: `node --env-file=.env scripts/start.ts`.',
  '# Every variable the service reads is listed; a commented line shows the default used when it is unset or empty.',
  '# Generated by `npm run config` from the settings schemas (plugins/*/config.ts, routes/*/config.ts): edit the',
  '# .describe() text there, not this file. docs/configuration.md has the same, as tables.'
]

/** The text of .env.example. */
export function envExample (groups: readonly SettingsGroup[] = documentedGroups): string {
  const out = [...ENV_HEADER]
  for (const group of groups) {
    const { title, about } = titleOf(group)
    out.push('', `# ---- ${title} `.padEnd(110, '-'), ...comment(about), '')
    for (const setting of settingsOf(group)) {
      if (setting.deprecated === true) continue
      out.push(...comment(setting.description))
      const value = setting.default ?? setting.example ?? ''
      out.push(setting.fillIn === true ? `${setting.name}=${value}` : `# ${setting.name}=${value}`)
    }
  }
  return `${out.join('\n')}\n`
}

function cell (text: string): string {
  return text.replaceAll('|', '\\|').replaceAll('\n', ' ')
}

function defaultCell (setting: Setting): string {
  if (setting.default !== undefined) return setting.default === '' ? 'empty' : `\`${setting.default}\``
  return setting.required ? 'required' : 'unset'
}

/** The text of docs/configuration.md. */
export function configurationReference (groups: readonly SettingsGroup[] = documentedGroups): string {
  const out = [
    '# Configuration',
    '',
    '<!-- Generated by `npm run config` from the settings schemas (plugins/*/config.ts, routes/*/config.ts): edit the',
    '.describe() text there, not this file. -->',
    '',
    'Every setting is an environment variable (`.env.example` lists them all with their defaults). They are parsed once',
    'at start; an empty value counts as unset, and a bad value stops the process with a message naming the variable',
    '(`invalid configuration:` then one line per variable), exit code 1.'
  ]
  for (const group of groups) {
    const { title, about } = titleOf(group)
    out.push('', `## ${title}`, '')
    if (about !== '') out.push(about, '')
    out.push('| variable | default | description |', '|---|---|---|')
    for (const setting of settingsOf(group)) {
      out.push(`| \`${setting.name}\` | ${defaultCell(setting)} | ${cell(setting.description)} |`)
    }
  }
  return `${out.join('\n')}\n`
}

if (import.meta.main) {
  await writeFile(envExampleFile, envExample())
  await writeFile(referenceFile, configurationReference())
  console.error(`wrote ${envExampleFile} and ${referenceFile}`)
}
