// Property-based fuzzing: for every operation in GET /openapi.json (generated from the same Zod schemas
// that validate requests), fast-check builds requests from the operation's own parameter and body schemas, mixes
// valid values, boundary values, attack payloads and wrong types, and checks on every response that there is no
// 5xx, no leaked hash or foreign email, and no effect on a victim user whose data is snapshotted around each route.
// Bodies that are a oneOf (POST /transactions: transfer, deposit or withdrawal; POST /auth/token: the two grants)
// are built from each of their variants. Each request goes out under a user's token or a service client's: money
// bodies mostly under the principal that may post them (transfers from the attacker, deposits and withdrawals from
// the attacker's settlement client), sometimes under the other one (always a 403), and user-only routes now and
// then under the client's token (always a 403).
//
// Runs per route: LEDGER_FUZZ_RUNS (default 150). Seed: LEDGER_FUZZ_SEED (default fixed, so the suite is
// repeatable; set another number to explore, and rerun a failure with the seed fast-check prints).
import { randomUUID } from 'node:crypto'
import fc from 'fast-check'
import t from 'tap'
import type { InjectOptions, LightMyRequestResponse } from 'fastify'
import type { App } from '../../app.ts'
import { MULTI_LINE, SINGLE_LINE } from '../../routes/common/text.ts'
import { PostBodyTextSchema } from '../../routes/social/schemas.ts'
import { hashPassword } from '../../plugins/passwords/scrypt.ts'
import { buildTestApp, createClient, createUser, ownerSql, testSql, type TestClient, type TestUser } from '../helper.ts'
import { fundingBody, INJECTION_STRINGS, PRIVATE_ROUTES, snapshotUser, TEST_CURRENCY, WRONG_TYPES } from './support.ts'

const RUNS = Number(process.env.LEDGER_FUZZ_RUNS ?? 150)
const SEED = Number(process.env.LEDGER_FUZZ_SEED ?? 20_251_125)
const MAX_SAFE = Number.MAX_SAFE_INTEGER

interface JsonSchema {
  $ref?: string
  type?: string
  properties?: Record<string, JsonSchema>
  required?: string[]
  const?: unknown
  enum?: unknown[]
  pattern?: string
  format?: string
  minLength?: number
  maxLength?: number
  minimum?: number
  maximum?: number
  exclusiveMinimum?: number
  anyOf?: JsonSchema[]
  oneOf?: JsonSchema[]
  items?: JsonSchema
}
interface Parameter { in: 'path' | 'query' | 'header', name: string, required?: boolean, schema: JsonSchema }
interface Operation {
  parameters?: Parameter[]
  requestBody?: { content: Record<string, { schema: JsonSchema }> }
  security?: unknown[]
}
type OpenApi = { paths: Record<string, Record<string, Operation>>, components?: { schemas?: Record<string, JsonSchema> } }

/** The document with every `$ref` to #/components/schemas replaced by the schema it names (these have no cycles). */
function inlineRefs<T> (value: T, schemas: Record<string, JsonSchema>, seen: string[] = []): T {
  if (Array.isArray(value)) return value.map((item) => inlineRefs(item, schemas, seen)) as T
  if (typeof value !== 'object' || value === null) return value
  const ref = (value as JsonSchema).$ref
  // Only schemas are inlined; a response's header references stay as they are.
  if (typeof ref === 'string' && ref.startsWith('#/components/schemas/')) {
    const name = ref.replace('#/components/schemas/', '')
    const target = schemas[name]
    if (target === undefined || seen.includes(name)) throw new Error(`cannot inline ${ref}`)
    return inlineRefs(target, schemas, [...seen, name]) as T
  }
  return Object.fromEntries(Object.entries(value).map(([key, item]) => [key, inlineRefs(item, schemas, seen)])) as T
}

// ---------------------------------------------------------------------------------------------------------------
// Arbitraries from JSON Schema (the subset z.toJSONSchema emits for these routes)

const MASS_ASSIGNMENT_KEYS = [
  'tier', 'role', 'balance', 'id', 'createdAt', 'fromUserId', 'authorId', 'passwordHash', 'email', 'userId', 'isAdmin',
  'toUserId', 'reference', 'clientId', 'client_id', 'principalId', 'scope'
]

/** Values of the wrong kind for any field: attack strings, wrong JSON types, random JSON. */
const junk: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(...Object.values(INJECTION_STRINGS)) },
  { weight: 2, arbitrary: fc.constantFrom(...Object.values(WRONG_TYPES)) },
  { weight: 2, arbitrary: fc.jsonValue({ maxDepth: 2 }) },
  { weight: 2, arbitrary: fc.string({ unit: 'binary', maxLength: 40 }) },
  { weight: 1, arbitrary: fc.oneof(fc.integer(), fc.double(), fc.constantFrom(-1, 0, 2 ** 53, 1e308, -0)) }
)

/** Characters that storage layers and validators get wrong: NUL, lone surrogates, BOM, NEL, bidi controls. */
const trickyText = (minLength: number, maxLength: number) => fc.string({
  minLength,
  maxLength,
  unit: fc.constantFrom('a', 'Z', ' ', '\u0000', '\ud800', '\udfff', '\ufeff', '\u0085', '\u202e', '\u200b', '\t', '\n', '😀', 'é', "'", '"', '\\', '$',
    '\u{1F3F4}', '\u{E0067}', '\u{E007F}', '\u0301', '\u0489')
})

function textArb (schema: JsonSchema): fc.Arbitrary<string> {
  const min = schema.minLength ?? 0
  const max = schema.maxLength ?? 64
  const short = Math.min(max, Math.max(min, 80))
  const bounded = (arb: fc.Arbitrary<string>) => arb.filter((s) => s.length >= min && s.length <= max)
  if (schema.format === 'uuid') return fc.uuid()
  if (schema.format === 'uri') return fc.webUrl({ validSchemes: ['https', 'http'], withQueryParameters: true, withFragments: true })
  if (schema.pattern !== undefined) return bounded(fc.stringMatching(new RegExp(schema.pattern), { size: 'small' }))
  return fc.oneof(
    { weight: 4, arbitrary: fc.string({ minLength: min, maxLength: short, unit: 'grapheme' }) },
    { weight: 2, arbitrary: fc.string({ minLength: min, maxLength: short }) },
    { weight: 1, arbitrary: fc.string({ minLength: min, maxLength: short, unit: 'binary' }) },
    { weight: 2, arbitrary: trickyText(min, Math.min(short, 24)) },
    // The boundaries themselves, and one past them.
    { weight: 1, arbitrary: fc.constantFrom('x'.repeat(Math.max(min, 1)), 'x'.repeat(max), 'é'.repeat(max), 'x'.repeat(max + 1), ...(min > 0 ? ['x'.repeat(min - 1)] : [])) }
  )
}

function validArb (schema: JsonSchema): fc.Arbitrary<unknown> {
  const variants = schema.oneOf ?? schema.anyOf
  if (variants !== undefined) return fc.oneof(...variants.map(validArb))
  if (schema.const !== undefined) return fc.constant(schema.const)
  if (schema.enum !== undefined) return fc.constantFrom(...schema.enum)
  switch (schema.type) {
    case 'string': return textArb(schema)
    case 'integer':
    case 'number': {
      const low = schema.minimum ?? (schema.exclusiveMinimum !== undefined ? schema.exclusiveMinimum + 1 : -1000)
      const high = schema.maximum ?? MAX_SAFE
      return fc.oneof(
        { weight: 6, arbitrary: fc.integer({ min: Math.max(low, -(2 ** 31)), max: Math.min(high, 1_000_000) }) },
        { weight: 1, arbitrary: fc.constantFrom(low, high, low - 1, high + 1, low + 0.5) }
      )
    }
    case 'boolean': return fc.boolean()
    case 'null': return fc.constant(null)
    case 'array': return fc.array(validArb(schema.items ?? {}), { maxLength: 4 })
    case 'object': return objectArb(schema, {})
    default: return fc.jsonValue({ maxDepth: 1 })
  }
}

/** Mostly the hint (values that reach the handler: real ids, real currencies), sometimes the schema's own values. */
function fieldArb (schema: JsonSchema, hint: fc.Arbitrary<unknown> | undefined): fc.Arbitrary<unknown> {
  return hint === undefined ? validArb(schema) : fc.oneof({ weight: 3, arbitrary: hint }, { weight: 1, arbitrary: validArb(schema) })
}

type Slot = { present: false } | { present: true, value: unknown }

/** A field's value, or its absence. `clean` slots never hold junk: they make the requests that reach the handler. */
function slotArb (schema: JsonSchema, required: boolean, hint: fc.Arbitrary<unknown> | undefined, clean = false): fc.Arbitrary<Slot> {
  if (clean) {
    const present = (hint ?? validArb(schema)).map((value): Slot => ({ present: true, value }))
    return required ? present : fc.oneof(present, fc.constant<Slot>({ present: false }))
  }
  return fc.oneof(
    { weight: required ? 14 : 6, arbitrary: fieldArb(schema, hint).map((value): Slot => ({ present: true, value })) },
    { weight: 2, arbitrary: junk.map((value): Slot => ({ present: true, value })) },
    { weight: required ? 1 : 6, arbitrary: fc.constant<Slot>({ present: false }) }
  )
}

/**
 * Half the objects are "clean" (hinted values, no junk, no extra keys), half mix in junk, gaps and extra keys. A
 * oneOf body (a discriminated union) is each of its variants equally often, each built the same way.
 */
function objectArb (schema: JsonSchema, hints: Record<string, fc.Arbitrary<unknown>>): fc.Arbitrary<Record<string, unknown>> {
  const variants = schema.oneOf ?? schema.anyOf
  if (variants !== undefined) return fc.oneof(...variants.map((variant) => objectArb(variant, hints)))
  return fc.oneof(objectVariantArb(schema, hints, true), objectVariantArb(schema, hints, false))
}

function objectVariantArb (schema: JsonSchema, hints: Record<string, fc.Arbitrary<unknown>>, clean: boolean): fc.Arbitrary<Record<string, unknown>> {
  const names = Object.keys(schema.properties ?? {})
  const slots = names.map((name) => slotArb(schema.properties?.[name] ?? {}, schema.required?.includes(name) ?? false, hints[name], clean))
  const extras = clean
    ? fc.constant<[string, unknown][]>([])
    : fc.oneof(
      { weight: 4, arbitrary: fc.constant<[string, unknown][]>([]) },
      { weight: 1, arbitrary: fc.array(fc.tuple(fc.oneof(fc.constantFrom(...MASS_ASSIGNMENT_KEYS), fc.string({ maxLength: 12 })), junk), { minLength: 1, maxLength: 2 }) }
    )
  return fc.tuple(fc.tuple(...slots), extras).map(([values, extra]) => {
    const object: Record<string, unknown> = {}
    // defineProperty, so a generated "__proto__" key is sent as a key and not swallowed as a prototype.
    const put = (key: string, value: unknown) => Object.defineProperty(object, key, { value, enumerable: true, writable: true, configurable: true })
    for (const [key, value] of extra) put(key, value)
    values.forEach((slot, i) => { if (slot.present) put(names[i] ?? '', slot.value) })
    return object
  })
}

const asText = (value: unknown) => (typeof value === 'string' ? value : JSON.stringify(value) ?? '')

/** Who sends a request: nobody (public routes), the attacker's user token, or the attacker's settlement client. */
type CallerKind = 'anonymous' | 'user' | 'client'

interface FuzzRequest { method: string, url: string, headers: Record<string, string>, body: unknown, hasBody: boolean, caller: CallerKind }

/**
 * One operation's requests: path, query, header parameters and body, each from its schema plus hints, and the
 * caller, chosen from the body and a roll of 0 to 9 (so fast-check replays and shrinks it like everything else).
 */
function requestArb (
  method: string, path: string, operation: Operation, hints: Record<string, fc.Arbitrary<unknown>>, chooseCaller: (body: unknown, roll: number) => CallerKind
): fc.Arbitrary<FuzzRequest> {
  const parameters = operation.parameters ?? []
  const pathParameters = parameters.filter((p) => p.in === 'path')
  const queryParameters = parameters.filter((p) => p.in === 'query')
  const headerParameters = parameters.filter((p) => p.in === 'header')
  const pathArb = fc.tuple(...pathParameters.map((p) => fc.oneof(
    { weight: 8, arbitrary: fieldArb(p.schema, hints[`path:${p.name}`]) },
    { weight: 2, arbitrary: junk }
  ).map(asText)))
  const queryArb = fc.tuple(
    fc.tuple(...queryParameters.map((p) => slotArb(p.schema, p.required ?? false, hints[`query:${p.name}`]))),
    fc.oneof({ weight: 8, arbitrary: fc.constant<[string, unknown][]>([]) }, { weight: 1, arbitrary: fc.array(fc.tuple(fc.oneof(fc.constantFrom('userId', 'user_id', 'limit', 'cursor'), fc.string({ maxLength: 8 })), junk), { minLength: 1, maxLength: 2 }) })
  )
  const headerArb = fc.tuple(...headerParameters.map((p) => slotArb(p.schema, p.required ?? false, hints[`header:${p.name}`])))
  const bodySchema = operation.requestBody?.content['application/json']?.schema
  const bodyArb: fc.Arbitrary<unknown> = bodySchema === undefined
    ? fc.constant(undefined)
    : fc.oneof({ weight: 14, arbitrary: objectArb(bodySchema, hints) }, { weight: 1, arbitrary: junk })

  return fc.tuple(pathArb, queryArb, headerArb, bodyArb, fc.integer({ min: 0, max: 9 })).map(([pathValues, [querySlots, extraQuery], headerSlots, body, roll]) => {
    let url = path
    pathParameters.forEach((p, i) => { url = url.replace(`{${p.name}}`, encodeURIComponent(pathValues[i] ?? '')) })
    const search = new URLSearchParams()
    querySlots.forEach((slot, i) => { if (slot.present) search.append(queryParameters[i]?.name ?? '', asText(slot.value)) })
    for (const [key, value] of extraQuery) search.append(key, asText(value))
    const query = search.toString()
    const headers: Record<string, string> = {}
    headerSlots.forEach((slot, i) => { if (slot.present) headers[headerParameters[i]?.name ?? ''] = asText(slot.value) })
    return { method: method.toUpperCase(), url: query === '' ? url : `${url}?${query}`, headers, body, hasBody: bodySchema !== undefined, caller: chooseCaller(body, roll) }
  })
}

// ---------------------------------------------------------------------------------------------------------------
// The world: an attacker who sends everything, with a settlement client of their own (funds:write); a recipient
// they may pay, fund or post to; a victim never targeted by a write they may make (only read attempts, and
// deposits under the user token, which are refused), whose data must not change; and the bank, another client,
// that funded the victim and the attacker.

interface World {
  app: App
  attacker: TestUser
  client: TestClient
  bank: TestClient
  recipient: TestUser
  victim: TestUser
  victimTransactionIds: string[]
  victimCursors: string[]
  attackerTransactionIds: string[]
  attackerCursors: string[]
  /** A refresh token of a session the attacker opened for the fuzzer. */
  attackerRefreshToken: string
  /** Every transaction the attacker's client posted: set up here, and each one it creates while fuzzed. */
  clientTransactionIds: Set<string>
  clientCursors: string[]
  /** Posts of each (DELETE /posts/{id}: the attacker's may go, the victim's must stay); the attacker's grow while fuzzed. */
  victimPostIds: string[]
  attackerPostIds: string[]
  /** The attacker's webhook endpoints DELETE may remove, the one whose deliveries are listed, and the victim's. */
  attackerEndpointIds: string[]
  attackerListedEndpointId: string
  victimEndpointId: string
}

/** createUser gives every user the same password; the victim and recipient get their own, so the attacker's is no key to them. */
async function withOwnPassword (app: App, user: TestUser, password: string): Promise<TestUser> {
  await app.db`update users set password_hash = ${await hashPassword(password, app.config.PASSWORD_HASH_COST)} where id = ${user.id}`
  return { ...user, password }
}

async function setUpWorld (app: App): Promise<World> {
  const attacker = await createUser(app, { name: 'Fuzz Attacker' })
  const recipient = await withOwnPassword(app, await createUser(app, { name: 'Fuzz Recipient' }), `recipient-${randomUUID()}`)
  const victim = await withOwnPassword(app, await createUser(app, { name: 'Fuzz Victim' }), `victim-${randomUUID()}`)
  const bank = await createClient(app, ['funds:write'], 'fuzz bank')
  const client = await createClient(app, ['funds:write'], 'fuzz attacker settlement')
  const post = async (caller: TestUser | TestClient, url: string, payload: Record<string, unknown>, headers: Record<string, string> = {}) => {
    const response = await app.inject({ method: 'POST', url, headers: { authorization: caller.authorization, ...headers }, payload })
    if (response.statusCode !== 201) throw new Error(`setup ${url}: ${response.statusCode} ${response.body}`)
    return response.json() as { id: string }
  }
  const get = async (caller: TestUser | TestClient, url: string) => (await app.inject({ method: 'GET', url, headers: { authorization: caller.authorization } })).json()
  const victimTransactionIds: string[] = []
  const attackerTransactionIds: string[] = []
  for (const [index, [sender, body]] of ([
    [bank, fundingBody('deposit', victim.id, 50_000)],
    [bank, fundingBody('withdrawal', victim.id, 10)],
    [victim, { kind: 'transfer', amount: 100, currency: TEST_CURRENCY, toUserId: recipient.id }]
  ] as const).entries()) {
    victimTransactionIds.push((await post(sender, '/transactions', body, { 'idempotency-key': `victim-${index}` })).id)
  }
  for (const [index, currency] of ['USD', 'EUR', TEST_CURRENCY].entries()) {
    attackerTransactionIds.push((await post(bank, '/transactions', fundingBody('deposit', attacker.id, 1_000_000, { currency }), { 'idempotency-key': `attacker-${index}` })).id)
  }
  // The attacker's own client has posted before, so its list has a second page (and a cursor) too.
  const clientTransactionIds = new Set<string>()
  for (const [index, user] of [attacker, recipient].entries()) {
    clientTransactionIds.add((await post(client, '/transactions', fundingBody('deposit', user.id, 1, { currency: 'USD' }), { 'idempotency-key': `client-${index}` })).id)
  }
  const victimPostIds: string[] = []
  const attackerPostIds: string[] = []
  for (let i = 0; i < 3; i++) {
    victimPostIds.push((await post(victim, '/posts', { body: `victim post ${i}` })).id)
    attackerPostIds.push((await post(attacker, '/posts', { body: `attacker post ${i}` })).id)
  }
  await app.inject({ method: 'PATCH', url: `/users/${victim.id}`, headers: { authorization: victim.authorization }, payload: { avatarUrl: 'https://cdn.example.test/victim.png' } })
  const cursors = async (user: TestUser) => [(await get(user, '/transactions?limit=1')).nextCursor, (await get(user, '/feed?limit=1')).nextCursor] as string[]
  // Webhook endpoints on a closed loopback port (tests allow private targets); removed again when the test ends.
  const endpoint = async (user: TestUser, name: string) => (await post(user, '/webhook-endpoints', { url: `http://127.0.0.1:9/${name}` })).id
  const attackerEndpointIds = [await endpoint(attacker, 'a1'), await endpoint(attacker, 'a2'), await endpoint(attacker, 'a3')]
  const attackerListedEndpointId = await endpoint(attacker, 'listed')
  const victimEndpointId = await endpoint(victim, 'victim')
  return {
    attackerEndpointIds,
    attackerListedEndpointId,
    victimEndpointId,
    app,
    attacker,
    client,
    bank,
    recipient,
    victim,
    victimTransactionIds,
    victimCursors: await cursors(victim),
    attackerTransactionIds,
    attackerCursors: await cursors(attacker),
    attackerRefreshToken: (await app.inject({ method: 'POST', url: '/auth/token', payload: { email: attacker.email, password: attacker.password } })).json().refresh_token as string,
    clientTransactionIds,
    clientCursors: [(await get(client, '/transactions?limit=1')).nextCursor as string],
    victimPostIds,
    attackerPostIds
  }
}

/** The routes a service client's token may call (the rest refuse it with 403). */
const SESSION_ENDING = new Set(['POST /auth/revoke', 'PUT /users/me/password'])
const CLIENT_ROUTES = new Set(PRIVATE_ROUTES.filter((route) => route.clients === true).map((route) => `${route.method} ${route.path}`))

const asObject = (body: unknown) => (typeof body === 'object' && body !== null && !Array.isArray(body) ? body as Record<string, unknown> : {})

/** The principal that may post a money body of this kind, or undefined when the kind is not one. */
function posterOf (body: unknown): 'user' | 'client' | undefined {
  const kind = asObject(body).kind
  if (kind === 'transfer') return 'user'
  if (kind === 'deposit' || kind === 'withdrawal') return 'client'
  return undefined
}

/**
 * Who sends a request. Public routes: nobody. User-only routes: the attacker, and one time in ten the client
 * (a 403). GET /transactions and /transactions/{id}: the attacker or the client. POST /transactions: mostly the
 * principal that may post the body's kind, one time in five the other (a 403); a funding body naming the victim
 * always goes out under the user token, so the victim is never the target of a write the caller may make.
 */
function callerChooser (world: World, route: string, isPublic: boolean) {
  return (body: unknown, roll: number): CallerKind => {
    if (isPublic) return 'anonymous'
    if (!CLIENT_ROUTES.has(route)) return roll === 0 ? 'client' : 'user'
    if (route !== 'POST /transactions') return roll < 6 ? 'user' : 'client'
    if (typeof asObject(body).userId === 'string' && String(asObject(body).userId).toLowerCase() === world.victim.id) return 'user'
    const poster = posterOf(body) ?? (roll % 2 === 0 ? 'user' : 'client')
    return roll < 8 ? poster : (poster === 'user' ? 'client' : 'user')
  }
}

function hintsFor (world: World, route: string): Record<string, fc.Arbitrary<unknown>> {
  const { attacker, client, bank, recipient, victim } = world
  const currency = fc.constantFrom('USD', 'EUR', 'JPY', TEST_CURRENCY)
  const common = {
    'query:limit': fc.integer({ min: 1, max: 60 }),
    'query:cursor': fc.constantFrom(...world.victimCursors, ...world.attackerCursors, ...world.clientCursors),
    // Mostly fresh keys (so bodies reach the ledger), sometimes a reused one (replay or mismatch).
    'header:idempotency-key': fc.oneof({ weight: 4, arbitrary: fc.uuid() }, { weight: 1, arbitrary: fc.constantFrom('fuzz-1', 'fuzz-2', 'fuzz-3') })
  }
  switch (route) {
    case 'POST /users': return {
      email: fc.oneof(
        { weight: 4, arbitrary: fc.uuid().map((id) => `fuzz-${id}@example.test`) },
        { weight: 1, arbitrary: fc.emailAddress() },
        { weight: 1, arbitrary: fc.constantFrom(victim.email, victim.email.toUpperCase(), ` ${victim.email} `) }
      ),
      name: fc.constantFrom('Fuzz Signup', 'Ünïcödé Nâme', '名前'),
      password: fc.constantFrom('a long enough password', '            ')
    }
    case 'POST /auth/token': return {
      email: fc.constantFrom(victim.email, attacker.email, recipient.email, attacker.email.toUpperCase()),
      password: fc.oneof({ weight: 2, arbitrary: fc.constant(attacker.password) }, { weight: 3, arbitrary: fc.constantFrom(`${victim.password}!`, victim.password.slice(0, -1), '') }),
      // The attacker holds their client's secret, not the bank's.
      client_id: fc.constantFrom(client.id, client.id.toUpperCase(), bank.id),
      client_secret: fc.oneof({ weight: 3, arbitrary: fc.constant(client.secret) }, { weight: 1, arbitrary: fc.constantFrom(`${client.secret}x`, client.secret.slice(0, -1), client.secret.toUpperCase()) }),
      scope: fc.constantFrom('funds:write', 'events:read', 'funds:write events:read', 'admin', ' funds:write'),
      // A session of the attacker's own (its first use rotates, every later one is a replay that ends it), an access
      // token in the wrong place, and look-alikes.
      refresh_token: fc.constantFrom(world.attackerRefreshToken, attacker.token, `${world.attackerRefreshToken}x`, world.attackerRefreshToken.toUpperCase())
    }
    case 'PUT /users/me/password': return {
      // The right one, sometimes: "changing" it to itself ends the attacker's sessions, and keeps the world's password.
      currentPassword: fc.constantFrom(attacker.password, `${attacker.password}!`, victim.password),
      newPassword: fc.constantFrom(attacker.password)
    }
    case 'GET /users/{id}': return { 'path:id': fc.constantFrom(attacker.id, victim.id, recipient.id, victim.id.toUpperCase(), attacker.id.toUpperCase()) }
    case 'PATCH /users/{id}': return {
      'path:id': fc.oneof({ weight: 3, arbitrary: fc.constant(attacker.id) }, { weight: 2, arbitrary: fc.constantFrom(victim.id, recipient.id, victim.id.toUpperCase(), attacker.id.toUpperCase()) }),
      name: fc.oneof(fc.constantFrom('Fuzz Renamed', ' padded name ', 'Ünïcödé'), fc.string({ minLength: 1, maxLength: 20, unit: 'grapheme' }), trickyText(1, 12)),
      avatarUrl: fc.oneof(
        fc.webUrl({ validSchemes: ['https'] }),
        fc.tuple(fc.webUrl({ validSchemes: ['https'] }), trickyText(1, 6)).map(([url, tail]) => `${url}/${tail}`),
        fc.constant(null)
      )
    }
    case 'DELETE /posts/{id}': return { 'path:id': fc.constantFrom(...world.victimPostIds, ...world.attackerPostIds) }
    case 'PUT /users/me/following/{id}':
    case 'DELETE /users/me/following/{id}': return { 'path:id': fc.constantFrom(victim.id, recipient.id, attacker.id, victim.id.toUpperCase()) }
    case 'POST /transactions': return {
      ...common,
      amount: fc.integer({ min: 1, max: 100_000 }),
      currency,
      toUserId: fc.constantFrom(recipient.id, attacker.id, recipient.id.toUpperCase(), attacker.id.toUpperCase()),
      // Who a deposit or withdrawal names: the attacker or the recipient, and sometimes the victim (see callerChooser).
      userId: fc.oneof(
        { weight: 6, arbitrary: fc.constantFrom(attacker.id, recipient.id, attacker.id.toUpperCase(), recipient.id.toUpperCase()) },
        { weight: 1, arbitrary: fc.constantFrom(victim.id, victim.id.toUpperCase()) }
      ),
      // Mostly fresh references (so bodies reach the ledger), sometimes a reused one (409 reference_used).
      reference: fc.oneof({ weight: 4, arbitrary: fc.uuid().map((id) => `fuzz-${id}`) }, { weight: 1, arbitrary: fc.constantFrom('fuzz-ref-1', 'fuzz-ref-2') })
    }
    case 'GET /transactions/{id}': return { 'path:id': fc.constantFrom(...world.victimTransactionIds, ...world.attackerTransactionIds, ...world.clientTransactionIds) }
    case 'POST /webhook-endpoints': return {
      url: fc.oneof({ weight: 3, arbitrary: fc.constantFrom('http://127.0.0.1:9/fuzz', 'http://localhost:9/fuzz') }, { weight: 1, arbitrary: fc.webUrl() }),
      events: fc.constant(['transaction.created'])
    }
    case 'DELETE /webhook-endpoints/{id}': return { 'path:id': fc.constantFrom(...world.attackerEndpointIds, world.victimEndpointId, world.victimEndpointId.toUpperCase()) }
    case 'PATCH /webhook-endpoints/{id}': return { 'path:id': fc.constantFrom(...world.attackerEndpointIds, world.victimEndpointId, world.victimEndpointId.toUpperCase()), enabled: fc.boolean() }
    case 'GET /webhook-endpoints/{id}/deliveries': return { ...common, 'query:cursor': fc.constantFrom(...world.victimCursors, ...world.attackerCursors), 'path:id': fc.constantFrom(world.attackerListedEndpointId, world.victimEndpointId) }
    default: return common
  }
}

// ---------------------------------------------------------------------------------------------------------------
// What must hold for each response

/** What Zod's z.url() keeps of an avatar URL: trimmed, without tab, CR and LF (the WHATWG URL rules). */
const normalizedUrl = (value: unknown) => (typeof value === 'string' ? value.trim().replace(/[\t\n\r]/g, '') : value)

const INSUFFICIENT_SCOPE = 'https://ledger-api.dev/problems/insufficient_scope'

/** The discriminator values of the oneOf bodies (POST /transactions' kind, POST /auth/token's grant_type). */
const VARIANTS = ['transfer', 'deposit', 'withdrawal', 'password', 'client_credentials', 'refresh_token']

function problemType (response: LightMyRequestResponse): unknown {
  try {
    return (response.json() as { type?: unknown }).type
  } catch {
    return undefined
  }
}

function checkResponse (world: World, route: string, request: FuzzRequest, response: LightMyRequestResponse): string | undefined {
  const { attacker, client, victim, recipient } = world
  const status = response.statusCode
  // The token endpoint answers RFC 6749 section 5.2's JSON; every other error is problem+json.
  if (route === 'POST /auth/token' && status >= 400) {
    if (!/^application\/json/.test(String(response.headers['content-type'])) || typeof (response.json() as { error?: unknown }).error !== 'string') return `a ${status} that is not an RFC 6749 error`
  } else if (status >= 400 && status !== 414 && !/^application\/problem\+json/.test(String(response.headers['content-type']))) return `a ${status} that is not problem+json`
  if (response.body.includes('scrypt$')) return 'a password hash in the response'
  for (const other of [victim, recipient]) {
    if (response.body.toLowerCase().includes(other.email)) return `${other === victim ? 'the victim' : 'the recipient'}'s email in the response`
  }
  // Principals: a client token on a user-only route is a 403, whatever else the request holds; so is a money body
  // from the principal that may not post its kind (checked before the body is validated); and only those are.
  const refusedForScope = status === 403 && problemType(response) === INSUFFICIENT_SCOPE
  if (request.caller === 'client' && !CLIENT_ROUTES.has(route) && !refusedForScope && status !== 414) return `a client token on a user-only route gave ${status}`
  if (route === 'POST /transactions') {
    const poster = posterOf(request.body)
    const kind = asText(asObject(request.body).kind)
    if (poster !== undefined && poster !== request.caller && !refusedForScope) return `a ${kind} from the ${request.caller} gave ${status}, not a 403`
    if ((poster === undefined || poster === request.caller) && status === 403) return `a ${kind} from the ${request.caller} was refused with 403`
  }
  if (status >= 300) {
    // Reads and writes aimed at the victim must fail closed.
    if (route === 'PATCH /users/{id}' && request.url.toLowerCase().includes(victim.id) && ![400, 403].includes(status)) return `PATCH of the victim gave ${status}`
    return undefined
  }
  // 204: nothing to read (a logout, a password change, a follow, a deletion).
  if (status === 204) {
    if (response.body !== '') return 'a 204 with a body'
    if (route === 'DELETE /posts/{id}' && !world.attackerPostIds.some((id) => new URL(request.url, 'http://fuzz.test').pathname === `/posts/${id}`)) return 'deleted a post that is not the attacker\'s'
    if (request.url.toLowerCase().includes(world.victimEndpointId)) return 'the victim\'s webhook endpoint was deleted'
    return undefined
  }
  const json = response.json() as Record<string, unknown>
  const body = request.body as Record<string, unknown>
  switch (route) {
    case 'GET /users/me': return json.id === attacker.id ? undefined : 'GET /users/me returned someone else'
    case 'GET /users/{id}': return 'email' in json && json.id !== attacker.id ? 'an email on someone else\'s profile' : undefined
    case 'PATCH /users/{id}': {
      if (json.id !== attacker.id) return `PATCH changed ${String(json.id)}`
      if (typeof body.name === 'string' && json.name !== body.name.trim()) return 'the name did not round-trip'
      if ('avatarUrl' in body && json.avatarUrl !== normalizedUrl(body.avatarUrl)) return 'the avatarUrl did not round-trip'
      return undefined
    }
    case 'POST /users': {
      if (json.name !== String(body.name).trim()) return 'the signup name did not round-trip'
      return json.email === String(body.email).trim().toLowerCase() ? undefined : 'the email did not round-trip'
    }
    case 'POST /posts': {
      const author = json.author as { id: string }
      if (author.id !== attacker.id) return 'a post authored by someone else'
      return json.body === body.body ? undefined : 'the post body did not round-trip'
    }
    case 'DELETE /webhook-endpoints/{id}':
    case 'GET /webhook-endpoints/{id}/deliveries':
      return status < 300 && request.url.toLowerCase().includes(world.victimEndpointId) ? 'the victim\'s webhook endpoint was reached' : undefined
    case 'PATCH /webhook-endpoints/{id}':
      if (request.url.toLowerCase().includes(world.victimEndpointId)) return 'the victim\'s webhook endpoint was changed'
      return 'secret' in json || json.status !== (body.enabled === true ? 'enabled' : 'disabled') ? 'the endpoint did not round-trip, or showed its secret' : undefined
    case 'GET /webhook-endpoints': return response.body.includes(world.victimEndpointId) || response.body.includes('whsec_') ? 'the victim\'s endpoint or a secret in the list' : undefined
    // The attacker's own posts, and those of users they may have followed while fuzzed (the victim, the recipient).
    case 'GET /feed': return (json.data as { author: { id: string } }[]).every((p) => [attacker.id, victim.id, recipient.id].includes(p.author.id)) ? undefined : 'a stranger\'s post in the feed'
    case 'POST /transactions': {
      if (json.toUserId === victim.id || json.fromUserId === victim.id) return 'a transaction touching the victim'
      const replayed = response.headers['idempotent-replayed'] !== undefined
      if (request.caller === 'client') {
        if (json.kind !== 'deposit' && json.kind !== 'withdrawal') return `the client posted a ${String(json.kind)}`
        // A replay is one of the client's own transactions (keys are per principal), whatever the body now says.
        if (replayed) return world.clientTransactionIds.has(String(json.id)) ? undefined : 'a replay of a transaction the client did not post'
        const account = json.kind === 'deposit' ? json.toUserId : json.fromUserId
        if (account !== String(body.userId).toLowerCase()) return 'the userId did not round-trip'
        if (json.reference !== body.reference) return 'the reference did not round-trip'
      } else {
        if (json.kind !== 'transfer') return `the user posted a ${String(json.kind)}`
        if (json.fromUserId !== attacker.id) return 'a transfer the caller did not pay'
        if (json.reference !== null) return 'a transfer with a reference'
        if (replayed) return undefined
        if (json.toUserId !== String(body.toUserId).toLowerCase()) return 'the toUserId did not round-trip'
      }
      for (const field of ['kind', 'amount', 'currency'] as const) if (json[field] !== body[field]) return `${field} did not round-trip`
      if (json.description !== (body.description ?? null)) return 'the description did not round-trip'
      return undefined
    }
    case 'GET /transactions/{id}': {
      if (json.toUserId === victim.id || json.fromUserId === victim.id) return 'a transaction touching the victim'
      if (request.caller === 'client') return world.clientTransactionIds.has(String(json.id)) ? undefined : 'a transaction the client did not post'
      return json.fromUserId === attacker.id || json.toUserId === attacker.id ? undefined : 'a transaction that does not touch the caller'
    }
    case 'GET /transactions': {
      const page = json.data as { id: string, fromUserId: string | null, toUserId: string | null }[]
      const sent = (cursors: string[]) => cursors.some((c) => request.url.includes(encodeURIComponent(c)))
      if (request.caller === 'client') {
        if (sent(world.victimCursors) || sent(world.attackerCursors)) return 'a user\'s cursor was accepted from the client'
        return page.every((tx) => world.clientTransactionIds.has(tx.id)) ? undefined : 'a transaction the client did not post in its list'
      }
      if (sent(world.victimCursors)) return 'the victim\'s cursor was accepted'
      if (sent(world.clientCursors)) return 'the client\'s cursor was accepted from a user'
      return page.every((tx) => tx.fromUserId === attacker.id || tx.toUserId === attacker.id) ? undefined : 'someone else\'s transaction in the list'
    }
    case 'POST /auth/token': {
      if (body.grant_type === 'client_credentials') {
        const claims = JSON.parse(Buffer.from(String(json.access_token).split('.')[1] ?? '', 'base64url').toString()) as { sub?: unknown, client_id?: unknown }
        if (claims.sub !== client.id || claims.client_id !== client.id) return 'a token for a client other than the attacker\'s'
        return String(json.scope).split(' ').every((scope) => (client.scopes as string[]).includes(scope)) ? undefined : `a scope the client does not hold: ${String(json.scope)}`
      }
      if (body.grant_type === 'refresh_token') {
        const claims = JSON.parse(Buffer.from(String(json.access_token).split('.')[1] ?? '', 'base64url').toString()) as { sub?: unknown }
        return claims.sub === attacker.id ? undefined : 'a refreshed token for someone other than the attacker'
      }
      return String(body.email ?? body.username).trim().toLowerCase() === attacker.email ? undefined : 'a token for someone other than the attacker'
    }
    default: return undefined
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The text rules themselves (routes/common/text.ts), property by property: no database, many more runs

const TEXT_RUNS = RUNS * 10
const tag = (ascii: string) => [...ascii].map((c) => String.fromCodePoint(0xE0000 + (c.codePointAt(0) ?? 0))).join('')
const BLACK_FLAG = '\u{1F3F4}'
const CANCEL_TAG = '\u{E007F}'
/** The subdivision flags Unicode recommends for general interchange (RGI): England, Scotland, Wales. */
const RGI_FLAGS = ['gbeng', 'gbsct', 'gbwls'].map((code) => BLACK_FLAG + tag(code) + CANCEL_TAG)
const textAccepted = (value: string) => SINGLE_LINE.check(value) && MULTI_LINE.check(value) && PostBodyTextSchema.safeParse(value).success
/** Text that every rule accepts, with an RGI flag or a plain black flag now and then. */
const plainText = fc.array(fc.constantFrom('a', 'Z', ' ', 'é', '😀', 'ب', 'क', 'ཀ', BLACK_FLAG, ...RGI_FLAGS), { minLength: 0, maxLength: 8 }).map((parts) => parts.join(''))

t.test('tag characters are accepted only as the three RGI subdivision flags, exactly', async (t) => {
  for (const flag of RGI_FLAGS) t.ok(textAccepted(`Cymru ${flag}!`), `allowed: ${JSON.stringify(flag)}`)
  // Runs of tag characters after the black flag: letters mostly, the cancel tag and other tags sometimes, and
  // near misses of the RGI codes (valid-looking subdivisions such as usca, a missing or doubled cancel tag).
  const tagRun = fc.oneof(
    { weight: 3, arbitrary: fc.array(fc.integer({ min: 0xE0000, max: 0xE007F }), { maxLength: 40, size: 'max' }).map((codes) => String.fromCodePoint(...codes)) },
    { weight: 3, arbitrary: fc.array(fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz0123456789 '), { maxLength: 32, size: 'max' }).map((letters) => tag(letters.join(''))).chain((run) => fc.constantFrom(run, run + CANCEL_TAG)) },
    { weight: 2, arbitrary: fc.constantFrom(...['gbeng', 'gbsct', 'gbwls', 'usca', 'gbeng1', 'gben', 'GBENG', 'gbengg', 'hidden text', 'x'].map(tag)).chain((run) => fc.constantFrom(run, run + CANCEL_TAG, run + CANCEL_TAG + CANCEL_TAG, run + CANCEL_TAG + tag('a'))) }
  )
  fc.assert(fc.property(plainText, tagRun, plainText, (before, run, after) => {
    const text = `${before}${BLACK_FLAG}${run}${after}`
    // No tag at all is a plain black flag.
    const expected = run === '' || RGI_FLAGS.includes(BLACK_FLAG + run)
    if (textAccepted(text) !== expected) throw new Error(`${JSON.stringify(text)}: ${expected ? 'refused' : 'accepted tag characters'}`)
  }), { numRuns: TEXT_RUNS, seed: SEED })
  // One tag character anywhere in acceptable text, inside a flag or not, makes it unacceptable.
  fc.assert(fc.property(plainText, fc.integer({ min: 0xE0000, max: 0xE007F }), fc.nat(), (text, code, at) => {
    const units = [...text]
    const position = at % (units.length + 1)
    units.splice(position, 0, String.fromCodePoint(code))
    const spliced = units.join('')
    if (textAccepted(spliced)) throw new Error(`accepted ${JSON.stringify(spliced)}`)
  }), { numRuns: TEXT_RUNS, seed: SEED })
  // The RGI sequences themselves, but not after the black flag.
  for (const lead of ['', 'a', '\u{1F3F3}', '😀']) t.notOk(textAccepted(lead + tag('gbeng') + CANCEL_TAG), `refused after ${JSON.stringify(lead)}`)
})

/** Combining marks of several kinds: above, below, overlay, enclosing, and spacing vowel signs. */
const MARKS = ['\u0301', '\u0316', '\u0334', '\u0489', '\u20DD', '\u0903', '\u093F', '\u05B4', '\u0F71', '\u0E49']
const MAX_MARKS = 30

t.test(`combining marks: at most ${MAX_MARKS} on one base character, however they are mixed`, async (t) => {
  fc.assert(fc.property(fc.constantFrom('a', 'Z', 'ب', 'क', 'ཀ', '😀'), fc.array(fc.constantFrom(...MARKS), { maxLength: 80, size: 'max' }), plainText, (base, marks, rest) => {
    const text = `${rest}${base}${marks.join('')}${rest.length > 0 ? ' ' : ''}${rest}`
    const expected = marks.length <= MAX_MARKS
    if (textAccepted(text) !== expected) throw new Error(`${marks.length} marks on ${JSON.stringify(base)}: ${expected ? 'refused' : 'accepted'}`)
  }), { numRuns: TEXT_RUNS, seed: SEED })
  // An allowed zero-width non-joiner does not start a new count: the marks on either side share one base.
  t.ok(textAccepted(`ب${'\u064E'.repeat(14)}\u200C${'\u064E'.repeat(15)}ت`), '14 + joiner + 15')
  t.notOk(textAccepted(`ب${'\u064E'.repeat(20)}\u200C${'\u064E'.repeat(20)}ت`), '20 + joiner + 20')
  // Counted as Unicode decomposes the text (NFKD, as the Stream-Safe Text Format counts): a precomposed é is e + a mark.
  t.ok(textAccepted('e' + '\u0301'.repeat(MAX_MARKS)))
  t.notOk(textAccepted('é' + '\u0301'.repeat(MAX_MARKS)))
  // Real text from scripts that stack marks.
  for (const text of [
    'Tiếng Việt'.normalize('NFD'), // Vietnamese, decomposed: two marks on one vowel
    'בְּרֵאשִׁ֖ית בָּרָ֣א', // Biblical Hebrew with points and cantillation
    'བསྒྲུབས ཧཱུྃ', // Tibetan stacks
    'क्षत्रिय श्रीमान्', // Devanagari conjuncts
    'น้ำ ကျွန်ုပ်', // Thai tone marks, Burmese medials
    'Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇' // mild "Zalgo": a few marks per letter is text too
  ]) t.ok(textAccepted(text), text)
})

const describe = (request: FuzzRequest) =>
  `${request.caller} ${request.method} ${request.url.slice(0, 300)} headers=${JSON.stringify(request.headers).slice(0, 200)} body=${String(JSON.stringify(request.body)).slice(0, 400)}`

t.test('every operation of the OpenAPI document, fuzzed from its own schemas', async (t) => {
  // Wrong passwords are most of what the login grant gets: the per-account throttle is tested in sessions.test.ts.
  const app = await buildTestApp(t, { PASSWORD_HASH_COST: '1024', LOGIN_MAX_FAILURES: '1000' })
  const sql = testSql(t)
  const world = await setUpWorld(app)
  // Routes that end the caller's session (or all of them) get a session of their own for each request; after a
  // password change the world's token is replaced, since the change ended it.
  const freshSession = async () => {
    const login = await app.inject({ method: 'POST', url: '/auth/token', payload: { email: world.attacker.email, password: world.attacker.password } })
    if (login.statusCode !== 200) throw new Error(`attacker login failed: ${login.statusCode} ${login.body}`)
    return `Bearer ${login.json().access_token as string}`
  }
  // Nothing of the fuzzed endpoints is left for a worker to retry against the closed port.
  t.teardown(async () => { await ownerSql()`delete from webhook_endpoints where principal_id in ${ownerSql()([world.attacker.id, world.victim.id])}` })
  const raw = (await app.inject({ method: 'GET', url: '/openapi.json' })).json() as OpenApi
  const doc = inlineRefs(raw, raw.components?.schemas ?? {})
  const operations = Object.entries(doc.paths)
    .filter(([path]) => !path.startsWith('/health'))
    .flatMap(([path, methods]) => Object.entries(methods).map(([method, operation]) => ({ route: `${method.toUpperCase()} ${path}`, method, path, operation })))
  t.ok(operations.length >= 11, `${operations.length} operations to fuzz`)
  t.comment(`fast-check seed ${SEED}, ${RUNS} runs per operation`)

  const victimBefore = await snapshotUser(sql, world.victim.id)
  for (const { route, method, path, operation } of operations) {
    await t.test(route, async (t) => {
      const statuses: Record<string, number> = {}
      /** The same counts per caller ("user 2xx", "client 4xx", ...) and per variant of a oneOf body ("deposit 2xx", ...). */
      const byCaller: Record<string, number> = {}
      const byVariant: Record<string, number> = {}
      const isPublic = Array.isArray(operation.security) && operation.security.length === 0
      const arbitrary = requestArb(method, path, operation, hintsFor(world, route), callerChooser(world, route, isPublic))
      const tokens: Record<CallerKind, Record<string, string>> = {
        anonymous: {},
        user: { authorization: world.attacker.authorization },
        client: { authorization: world.client.authorization }
      }
      await fc.assert(fc.asyncProperty(arbitrary, async (request) => {
        const options: InjectOptions = {
          method: request.method as InjectOptions['method'],
          url: request.url,
          headers: { ...request.headers, ...tokens[request.caller], ...(request.hasBody ? { 'content-type': 'application/json' } : {}) },
          ...(request.hasBody && request.body !== undefined ? { payload: JSON.stringify(request.body) } : {})
        }
        if (SESSION_ENDING.has(route) && request.caller === 'user') options.headers = { ...options.headers, authorization: await freshSession() }
        let response: LightMyRequestResponse
        try {
          response = await app.inject(options)
        } catch {
          return true // refused by the HTTP layer before reaching the app (invalid header bytes)
        }
        if (route === 'PUT /users/me/password' && response.statusCode === 204) {
          // The fuzzer may have sent another (valid) new password than the hint's.
          world.attacker = { ...world.attacker, password: String(asObject(request.body).newPassword) }
          world.attacker = { ...world.attacker, authorization: await freshSession() }
          tokens.user = { authorization: world.attacker.authorization }
        }
        const group = `${Math.floor(response.statusCode / 100)}xx`
        statuses[group] = (statuses[group] ?? 0) + 1
        byCaller[`${request.caller} ${group}`] = (byCaller[`${request.caller} ${group}`] ?? 0) + 1
        if (response.statusCode === 403) byCaller[`${request.caller} 403`] = (byCaller[`${request.caller} 403`] ?? 0) + 1
        const discriminator = asObject(request.body).kind ?? asObject(request.body).grant_type
        if (discriminator !== undefined) {
          const variant = typeof discriminator === 'string' && VARIANTS.includes(discriminator) ? discriminator : 'other'
          byVariant[`${variant} ${group}`] = (byVariant[`${variant} ${group}`] ?? 0) + 1
        }
        if (response.statusCode >= 500) throw new Error(`${response.statusCode} ${response.body} for ${describe(request)}`)
        const problem = checkResponse(world, route, request, response)
        if (problem !== undefined) throw new Error(`${problem}: ${response.statusCode} ${response.body.slice(0, 300)} for ${describe(request)}`)
        // What the client posts is its own from now on: its list and GET /transactions/{id} may show it.
        if (route === 'POST /transactions' && request.caller === 'client' && response.statusCode === 201) world.clientTransactionIds.add(String(response.json().id))
        // And so are the attacker's posts: DELETE /posts/{id} may remove them.
        if (route === 'POST /posts' && response.statusCode === 201) world.attackerPostIds.push(String(response.json().id))
        return true
      }), { numRuns: RUNS, seed: SEED })
      t.comment(`${route}: ${JSON.stringify(statuses)} ${JSON.stringify(byCaller)} ${JSON.stringify(byVariant)}`)
      t.equal(statuses['5xx'] ?? 0, 0, `${route}: no 5xx in ${RUNS} runs`)
      t.ok((statuses['2xx'] ?? 0) > 0, `${route}: some generated requests were valid and reached the handler`)
      if ((operation.parameters ?? []).length > 0 || operation.requestBody !== undefined) {
        t.ok((statuses['4xx'] ?? 0) > 0, `${route}: some generated requests were invalid`)
      }
      if (!isPublic && !CLIENT_ROUTES.has(route)) {
        t.ok((byCaller['client 403'] ?? 0) > 0, `${route}: the client's token was tried, and refused`)
      }
      if (CLIENT_ROUTES.has(route)) {
        t.ok((byCaller['user 2xx'] ?? 0) > 0, `${route}: some of the user's requests reached the handler`)
        t.ok((byCaller['client 2xx'] ?? 0) > 0, `${route}: some of the client's requests reached the handler`)
      }
      if (route === 'POST /transactions') {
        t.ok((byCaller['user 403'] ?? 0) > 0 && (byCaller['client 403'] ?? 0) > 0, `${route}: a kind from the wrong principal was tried by both, and refused`)
        for (const kind of ['transfer', 'deposit', 'withdrawal']) t.ok((byVariant[`${kind} 2xx`] ?? 0) > 0, `${route}: some ${kind} bodies reached the ledger`)
      }
      if (route === 'POST /auth/token') {
        for (const grant of ['password', 'client_credentials']) t.ok((byVariant[`${grant} 2xx`] ?? 0) > 0, `${route}: some ${grant} grants got a token`)
      }
      t.same(await snapshotUser(sql, world.victim.id), victimBefore, `${route}: the victim's profile, money, posts and keys are unchanged`)
    })
  }
})
