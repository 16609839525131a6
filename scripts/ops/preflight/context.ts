// What every check gets (the document, a user's token, how to fill a list) and the one shape every check has.
// Setup signs up or logs in the user; it is the only part of a run that writes without being counted by a check.
import { randomBytes } from 'node:crypto'
import { apiClient, bearer, isObject, reply, said, send, type Api, type RequestSpec } from './http.ts'
import { Examples, operationsOf, Schemas, type OpenApiDocument, type Operation, type Slot } from './openapi.ts'

export type Status = 'PASS' | 'FAIL' | 'SKIP'

export interface CheckResult {
  id: number
  name: string
  status: Status
  evidence: string
  /** One line per failing item, or a note worth reading. */
  details: string[]
}

/** A check: its number and name on the result line, and what it does against a set-up run. */
export interface Check {
  id: number
  name: string
  run: (ctx: Context) => Promise<Omit<CheckResult, 'id' | 'name'>>
}

export interface LoadOptions {
  durationS: number
  connections: number
  databaseUrl?: string | undefined
  maxDbConnections: number
  metricsToken?: string | undefined
}

export interface PreflightOptions extends LoadOptions {
  url: string
  token?: string | undefined
  login?: { email: string, password: string } | undefined
  /** A service client with funds:write: money enters the ledger only through one. */
  client?: { id: string, secret: string } | undefined
  readOnly: boolean
}

type Creator = () => Promise<{ status: number, said: string }>

export interface Context {
  doc: OpenApiDocument
  ops: Operation[]
  api: Api
  schemas: Schemas
  examples: Examples
  base: string
  token: string
  userId: string
  readOnly: boolean
  options: LoadOptions
  /**
   * How to make an item of a list when the user's token may not (keyed by the creating operation's operationId), or
   * why it cannot be made: users cannot create money, so only with --client is the transactions list filled (1-cent
   * deposits). Keyed by the list's own operationId: how to add an item to a list no operation answers with (the
   * follow lists: a user signed up for the run, followed by or following the preflight user).
   */
  creators: Record<string, Creator | string>
  /** What the load check saw of the servers during its run, for the resources check. */
  duringLoad?: { sampler: { counts: number[], error?: string | undefined } | undefined, samplerError: string | undefined, caches: string }
}

export const progress = (line: string) => process.stderr.write(`preflight: ${line}\n`)

export class SetupError extends Error {
  override name = 'SetupError'
}

/** A valid request for `op`, with `override` (one slot and its value) applied on top. */
export function buildRequest (ctx: Context, op: Operation, options: { override?: { slot: Slot, value: unknown }, auth?: boolean, body?: boolean } = {}): RequestSpec {
  const { override } = options
  const headers: Record<string, string> = options.auth === false ? {} : bearer(ctx.token)
  const query = new URLSearchParams()
  let path = op.path
  for (const param of op.parameters ?? []) {
    const overridden = override?.slot.in === param.in && override.slot.name === param.name
    if (!overridden && param.required !== true && param.in !== 'path') continue
    const value = String(overridden ? override.value : ctx.examples.value(param.schema, true, param.name))
    if (param.in === 'path') path = path.replace(`{${param.name}}`, encodeURIComponent(value))
    else if (param.in === 'query') query.set(param.name, value)
    else if (param.in === 'header') headers[param.name] = value
  }
  const spec: RequestSpec = { method: op.method, url: query.size > 0 ? `${path}?${query}` : path, headers }
  const bodySchema = ctx.schemas.jsonBody(op.requestBody)
  if (bodySchema !== undefined && options.body !== false) {
    const body = ctx.examples.value(bodySchema)
    if (override?.slot.in === 'body' && isObject(body)) {
      const names = override.slot.name.split('.')
      let target: Record<string, unknown> = body
      for (const name of names.slice(0, -1)) {
        if (!isObject(target[name])) target[name] = {}
        target = target[name] as Record<string, unknown>
      }
      target[names.at(-1)!] = override.value
    }
    spec.body = body
  }
  return spec
}

const newCredentials = (prefix: string) => ({ email: `${prefix}-${randomBytes(6).toString('hex')}@example.test`, password: randomBytes(18).toString('base64url') })

async function logIn (api: Api, credentials: { email: string, password: string }) {
  const login = await reply(api.POST('/auth/token', { body: { grant_type: 'password', ...credentials } }))
  // Checked, not trusted: the server may be another version than the document the types were made from.
  const token = login.data?.access_token
  return login.status === 200 && typeof token === 'string' ? { ok: true as const, token } : { ok: false as const, login }
}

async function authenticate (api: Api, options: PreflightOptions): Promise<{ token: string, who: string }> {
  if (options.token !== undefined) return { token: options.token, who: 'from --token' }
  let credentials = options.login
  let who = credentials === undefined ? '' : credentials.email
  if (credentials === undefined) {
    if (options.readOnly) throw new SetupError('--read-only needs --token or --login (signing up a user is a write)')
    credentials = newCredentials('preflight')
    const signup = await reply(api.POST('/users', { body: { ...credentials, name: 'Preflight' } }))
    if (signup.status !== 201) throw new SetupError(`signing up ${credentials.email} -> ${signup.said}`)
    who = `${credentials.email} signed up for this run`
  }
  const login = await logIn(api, credentials)
  if (!login.ok) throw new SetupError(`logging in as ${credentials.email} -> ${login.login.said}`)
  return { token: login.token, who }
}

/** 1-cent deposits to `userId` from the service client, for lists the user cannot fill alone. */
async function fundingCreators (api: Api, client: { id: string, secret: string }, userId: string): Promise<Context['creators']> {
  const grant = await reply(api.POST('/auth/token', { body: { grant_type: 'client_credentials', client_id: client.id, client_secret: client.secret } }))
  const token = grant.data?.access_token
  if (grant.status !== 200 || typeof token !== 'string') throw new SetupError(`client credentials for ${client.id} -> ${grant.said}`)
  return {
    createTransaction: async () => {
      const reference = `preflight-${randomBytes(8).toString('hex')}`
      return reply(api.POST('/transactions', {
        headers: bearer(token),
        params: { header: { 'idempotency-key': reference } },
        body: { kind: 'deposit', userId, amount: 1, currency: 'USD', reference, description: 'preflight' }
      }))
    }
  }
}

/** Follow lists: each item is a user signed up for this run (public signup, rate limited per IP like any signup). */
function followCreators (api: Api, token: string, userId: string): Context['creators'] {
  const signUp = async () => {
    const credentials = newCredentials('preflight-follow')
    const signup = await reply(api.POST('/users', { body: { ...credentials, name: 'Preflight follow' } }))
    const id = signup.data?.id
    return signup.status === 201 && typeof id === 'string' ? { ok: true as const, id, credentials } : { ok: false as const, answer: signup }
  }
  return {
    listFollowing: async () => {
      const other = await signUp()
      if (!other.ok) return other.answer
      return reply(api.PUT('/users/me/following/{id}', { headers: bearer(token), params: { path: { id: other.id } } }))
    },
    listFollowers: async () => {
      const other = await signUp()
      if (!other.ok) return other.answer
      const login = await logIn(api, other.credentials)
      if (!login.ok) return login.login
      return reply(api.PUT('/users/me/following/{id}', { headers: bearer(login.token), params: { path: { id: userId } } }))
    }
  }
}

/** Reads the document, authenticates, and prepares the list fillers; the header line says who the run is. */
export async function setUp (options: PreflightOptions): Promise<{ ctx: Context, header: string }> {
  const base = options.url
  const openapi = await send(base, { method: 'GET', url: '/openapi.json' })
  if (openapi.status !== 200 || !isObject(openapi.body) || !isObject(openapi.body.paths)) {
    throw new SetupError(`GET /openapi.json -> ${said(openapi)} (expected the OpenAPI document)`)
  }
  const doc = openapi.body as OpenApiDocument
  const api = apiClient(base)
  const { token, who } = await authenticate(api, options)
  const me = await reply(api.GET('/users/me', { headers: bearer(token) }))
  const userId = me.data?.id
  if (me.status !== 200 || typeof userId !== 'string') throw new SetupError(`GET /users/me with the token -> ${me.said}`)
  const schemas = new Schemas(doc)
  const creators = {
    ...(options.readOnly ? {} : followCreators(api, token, userId)),
    ...(options.client === undefined
      ? { createTransaction: 'only a service client can create money (--client id:secret lets one fund the user)' }
      : options.readOnly ? {} : await fundingCreators(api, options.client, userId))
  }
  const ctx: Context = { doc, ops: operationsOf(doc), api, schemas, examples: new Examples(schemas), base, token, userId, readOnly: options.readOnly, options, creators }
  const header = `preflight ${base}: ${doc.info?.title ?? 'API'} ${doc.info?.version ?? ''}, ${ctx.ops.length} operations; user ${who}, id ${userId}` +
    `${options.readOnly ? '; read-only' : '; writes allowed (a few rows, counted below)'}`
  return { ctx, header }
}
