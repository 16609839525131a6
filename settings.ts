// The composition root of the configuration: the infrastructure's settings (config.ts) joined with each domain's.
// The one place that knows both, as app.ts is for the plugins and routes; `npm run config` documents these groups.
import { composeConfig, infrastructureConfig, orExit, parseConfig } from './config.ts'
import { identityConfig } from './routes/identity/config.ts'
import { ledgerConfig } from './routes/ledger/config.ts'
import { socialConfig } from './routes/social/config.ts'
import { webhooksConfig } from './routes/webhooks/config.ts'

const domainConfig = [identityConfig, ledgerConfig, socialConfig, webhooksConfig] as const

/** Every parsed settings group, in the order .env.example and docs/configuration.md list them. */
export const configGroups = [...infrastructureConfig, ...domainConfig]

export const configSchema = composeConfig(domainConfig)

export type Config = import('zod').output<typeof configSchema>

// app.config, decorated by app.ts: every plugin and domain reads its own settings from it (autoConfig).
declare module 'fastify' {
  interface FastifyInstance {
    config: Config
  }
}

export function loadConfig (env: NodeJS.ProcessEnv = process.env): Config {
  return parseConfig(configSchema, env)
}

/** For a process's entry file: the configuration, or its one-line message on stderr and exit 1 (no stack trace). */
export function loadConfigOrExit (): Config {
  return orExit(loadConfig)
}
