// `npm run clients -- create --name NAME --scope "funds:write events:read"` | `list` | `revoke CLIENT_ID`: the
// operator's tool for service clients (OAuth 2.0 client credentials). Like `npm start`, it uses the configured
// database (as its owner: DATABASE_DIRECT_URL, else DATABASE_URL), or else brings up and migrates the local stack. `create` prints exactly one JSON line on stdout,
// {"clientId","clientSecret"}: the secret exists nowhere else afterwards (only its hash is stored). `revoke` ends
// the client's live tokens on every API process within a second (plugins/auth/revocations.ts).
import { parseArgs } from 'node:util'
import postgres from 'postgres'
import { z } from 'zod'
import { scopes, type Scope } from '../../plugins/auth/index.ts'
import { createServiceClient } from '../../routes/identity/clients.ts'
import { listServiceClients, revokeServiceClient } from '../../routes/identity/repository.ts'
import { localStackUp } from '../local-stack.ts'
import { migrate } from '../migrate.ts'

const usage = `usage: npm run clients -- create --name NAME --scope "${scopes.join(' ')}"
       npm run clients -- list
       npm run clients -- revoke CLIENT_ID`

const NameSchema = z.string().trim().min(1).max(100)
const ScopeListSchema = z.string().transform((value) => [...new Set(value.split(/\s+/).filter(Boolean))])
  .pipe(z.array(z.enum(scopes)).min(1, 'name at least one scope'))

class UsageError extends Error {}

/**
 * As the database owner: the API's role may read service clients but not create them. DATABASE_DIRECT_URL, else
 * DATABASE_URL when only that is set (it must then name a role allowed to write service_clients), else the local
 * stack, migrated first.
 */
async function connect (): Promise<postgres.Sql> {
  let url = process.env.DATABASE_DIRECT_URL || process.env.DATABASE_URL
  if (url === undefined || url === '') {
    const stack = localStackUp()
    await migrate(stack.DATABASE_DIRECT_URL, (line) => console.error(line))
    url = stack.DATABASE_DIRECT_URL
  }
  // prepare: false in case the URL goes through PgBouncer in transaction mode.
  return postgres(url, { max: 1, prepare: false, onnotice: () => {}, connect_timeout: 10 })
}

async function run (argv: string[]): Promise<void> {
  const { positionals, values } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: { name: { type: 'string' }, scope: { type: 'string' } }
  })
  const [command, ...rest] = positionals
  if (command === 'create') {
    const name = NameSchema.safeParse(values.name)
    const granted = ScopeListSchema.safeParse(values.scope ?? '')
    if (!name.success || !granted.success || rest.length > 0) throw new UsageError(`create needs --name (1 to 100 characters) and --scope (from: ${scopes.join(' ')})`)
    const sql = await connect()
    try {
      const { client, secret } = await createServiceClient(sql, name.data, granted.data as Scope[])
      process.stdout.write(JSON.stringify({ clientId: client.id, clientSecret: secret }) + '\n')
    } finally {
      await sql.end({ timeout: 5 })
    }
    return
  }
  if (command === 'list' && rest.length === 0) {
    const sql = await connect()
    try {
      for (const client of await listServiceClients(sql)) process.stdout.write(JSON.stringify(client) + '\n')
    } finally {
      await sql.end({ timeout: 5 })
    }
    return
  }
  if (command === 'revoke' && rest.length === 1) {
    const id = z.uuid().toLowerCase().safeParse(rest[0])
    if (!id.success) throw new UsageError('revoke needs a client id (a UUID)')
    const sql = await connect()
    try {
      if (!await revokeServiceClient(sql, id.data)) {
        console.error(`clients: no active client ${id.data}`)
        process.exitCode = 1
        return
      }
      console.error(`clients: revoked ${id.data}; its tokens stop working within a second`)
    } finally {
      await sql.end({ timeout: 5 })
    }
    return
  }
  throw new UsageError(usage)
}

try {
  await run(process.argv.slice(2))
} catch (error) {
  if (error instanceof UsageError || (error as { code?: string }).code?.startsWith('ERR_PARSE_ARGS') === true) {
    console.error(error instanceof UsageError ? error.message : `${(error as Error).message}\n${usage}`)
    process.exitCode = 2
  } else {
    console.error('clients:', error instanceof Error ? error.message : error)
    process.exitCode = 1
  }
}
