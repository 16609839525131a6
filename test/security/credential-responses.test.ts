// Responses that carry a credential (access and refresh tokens, a webhook signing secret) must never be stored by a
// cache between the service and the client: `Cache-Control: no-store` (RFC 9111; RFC 6749 sections 5.1 and 5.2 ask
// it of every token response) and `Pragma: no-cache` for HTTP/1.0 caches. One route config (`carriesCredentials`)
// drives both the header and the OpenAPI document, so this file lists the routes by hand and checks both sides.
import t, { type Test } from 'tap'
import { buildTestApp, createClient, createUser, randomTestIp } from '../helper.ts'

/** Every operation whose answer can hold a secret. A new one belongs here and in its route's config. */
const CREDENTIAL_OPERATIONS = ['POST /auth/token', 'POST /webhook-endpoints']

// Property names that hold a secret in any response body of this API.
const CREDENTIAL_FIELD = /^(access_token|refresh_token|secret|client_secret|accessToken|refreshToken|clientSecret)$/

interface Response { headers?: Record<string, unknown>, content?: Record<string, { schema?: unknown }> }
interface Document { paths: Record<string, Record<string, { responses: Record<string, Response> }>>, components: { schemas: Record<string, unknown>, headers?: Record<string, unknown> } }

/** Property names anywhere in a schema, following $refs into components. */
function propertyNames (schema: unknown, document: Document, seen = new Set<string>()): Set<string> {
  const names = new Set<string>()
  const walk = (value: unknown) => {
    if (Array.isArray(value)) { value.forEach(walk); return }
    if (typeof value !== 'object' || value === null) return
    for (const [key, child] of Object.entries(value)) {
      if (key === '$ref' && typeof child === 'string' && child.startsWith('#/components/schemas/') && !seen.has(child)) {
        seen.add(child)
        walk(document.components.schemas[child.slice('#/components/schemas/'.length)])
      } else if (key === 'properties' && typeof child === 'object' && child !== null) {
        for (const name of Object.keys(child)) names.add(name)
        walk(child)
      } else {
        walk(child)
      }
    }
  }
  walk(schema)
  return names
}

const headerNames = (response: Response) => Object.keys(response.headers ?? {}).map((name) => name.toLowerCase())

t.test('the OpenAPI document says no-store for exactly the operations whose answers hold a credential', async (t) => {
  const app = await buildTestApp(t)
  const document = (await app.inject({ method: 'GET', url: '/openapi.json' })).json() as Document
  const documented: string[] = []
  const holdingSecrets: string[] = []
  for (const [path, item] of Object.entries(document.paths)) {
    for (const [method, operation] of Object.entries(item)) {
      const key = `${method.toUpperCase()} ${path}`
      const responses = Object.values(operation.responses)
      if (responses.every((response) => headerNames(response).includes('cache-control') && headerNames(response).includes('pragma'))) documented.push(key)
      const fields = responses.flatMap((response) => Object.values(response.content ?? {}).flatMap((media) => [...propertyNames(media.schema, document)]))
      if (fields.some((field) => CREDENTIAL_FIELD.test(field))) holdingSecrets.push(key)
    }
  }
  t.same(holdingSecrets.sort(), [...CREDENTIAL_OPERATIONS].sort(), 'the operations whose response schemas hold a credential field are the ones listed here')
  t.same(documented.sort(), [...CREDENTIAL_OPERATIONS].sort(), 'every response of each of them documents Cache-Control and Pragma, and no other operation does')
})

const noStore = (t: Test, response: { statusCode: number, headers: Record<string, unknown> }, what: string) => {
  t.equal(response.headers['cache-control'], 'no-store', `${what} (${response.statusCode}): Cache-Control: no-store`)
  t.equal(response.headers.pragma, 'no-cache', `${what} (${response.statusCode}): Pragma: no-cache`)
}

t.test('every answer of the token endpoint, success or failure, for every grant, says no-store', async (t) => {
  const app = await buildTestApp(t)
  const user = await createUser(app)
  const client = await createClient(app, ['funds:write'])
  const token = (payload: Record<string, string>, headers: Record<string, string> = {}) =>
    app.inject({ method: 'POST', url: '/auth/token', remoteAddress: randomTestIp(), headers, payload })
  const form = { 'content-type': 'application/x-www-form-urlencoded' }

  const login = await token({ email: user.email, password: user.password })
  t.equal(login.statusCode, 200)
  noStore(t, login, 'password login')
  noStore(t, await token({ email: user.email, password: 'not the password at all' }), 'failed login')
  const refresh = await token({ grant_type: 'refresh_token', refresh_token: user.refreshToken })
  t.equal(refresh.statusCode, 200)
  noStore(t, refresh, 'refresh')
  noStore(t, await token({ grant_type: 'refresh_token', refresh_token: user.refreshToken }), 'spent refresh token')
  const credentials = await token({ grant_type: 'client_credentials', client_id: client.id, client_secret: client.secret })
  t.equal(credentials.statusCode, 200)
  noStore(t, credentials, 'client credentials')
  noStore(t, await token({ grant_type: 'client_credentials', client_id: client.id, client_secret: 'wrong' }), 'wrong client secret')
  const asForm = await app.inject({
    method: 'POST', url: '/auth/token', remoteAddress: randomTestIp(), headers: form, payload: new URLSearchParams({ grant_type: 'client_credentials', client_id: client.id, client_secret: client.secret }).toString()
  })
  t.equal(asForm.statusCode, 200)
  noStore(t, asForm, 'client credentials as a form')
  noStore(t, await token({ grant_type: 'nonsense' }), 'unknown grant')
})

t.test('a new webhook endpoint\'s answer (which holds its signing secret) says no-store, and so do its refusals', async (t) => {
  const app = await buildTestApp(t)
  const user = await createUser(app)
  const created = await app.inject({ method: 'POST', url: '/webhook-endpoints', headers: { authorization: user.authorization }, payload: { url: 'http://127.0.0.1:9/hook' } })
  t.equal(created.statusCode, 201)
  t.match(created.json().secret, /^whsec_/)
  noStore(t, created, 'created endpoint')
  t.teardown(async () => { await app.inject({ method: 'DELETE', url: `/webhook-endpoints/${created.json().id as string}`, headers: { authorization: user.authorization } }) })
  noStore(t, await app.inject({ method: 'POST', url: '/webhook-endpoints', headers: { authorization: user.authorization }, payload: { url: 'ftp://example.test/' } }), 'refused endpoint')
  const listed = await app.inject({ method: 'GET', url: '/webhook-endpoints', headers: { authorization: user.authorization } })
  t.equal(listed.statusCode, 200)
  t.notOk('secret' in (listed.json().data[0] ?? {}), 'the list holds no secrets')
  t.notOk(listed.headers['cache-control'] === 'no-store', 'so it is not marked: no-store is kept for what needs it')
})
