// What plugins/openapi/index.ts puts in the document beyond the route schemas, and the rules every operation follows.
// test/scripts/openapi.test.ts compares the whole document with the committed openapi.json and lints it.
import t from 'tap'
import packageJson from '../../package.json' with { type: 'json' }
import { withoutUnusedSchemas } from '../../plugins/openapi/index.ts'
import { buildTestApp } from '../helper.ts'

interface Document {
  info: { version: string, license?: { name: string } }
  servers?: Array<{ url: string }>
  paths: Record<string, Record<string, { operationId?: string }>>
  components: { schemas: Record<string, unknown> }
}

const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace']

t.test('every operation has a unique camelCase operationId', async (t) => {
  const app = await buildTestApp(t)
  const document = (await app.inject({ method: 'GET', url: '/openapi.json' })).json() as Document
  const ids = new Map<string, string>()
  let operations = 0
  for (const [path, item] of Object.entries(document.paths)) {
    for (const method of METHODS.filter((m) => item[m] !== undefined)) {
      const operation = `${method.toUpperCase()} ${path}`
      operations++
      const id = item[method]?.operationId
      if (id === undefined) { t.fail(`${operation} has no operationId: add one to its route schema`); continue }
      t.match(id, /^[a-z]+[A-Z][A-Za-z]*$/, `${operation}: operationId ${id} is a camelCase verb and noun`)
      t.notOk(ids.has(id), `${operation}: operationId ${id} is not also ${ids.get(id) ?? 'used elsewhere'}`)
      ids.set(id, operation)
    }
  }
  t.ok(operations >= 13, `all ${operations} operations checked`)
})

t.test('the document names its version, license and server, and has no unused component', async (t) => {
  const app = await buildTestApp(t)
  const document = (await app.inject({ method: 'GET', url: '/openapi.json' })).json() as Document
  t.equal(document.info.version, packageJson.version, 'info.version is package.json\'s')
  t.same(document.info.license, { name: 'UNLICENSED' })
  t.same(document.servers?.map((server) => server.url), ['/'], 'served at the root of the host that serves the document')
  const text = JSON.stringify({ ...document, components: { ...document.components, schemas: {} } }) +
    JSON.stringify(document.components.schemas)
  for (const name of Object.keys(document.components.schemas)) {
    t.ok(text.includes(`"#/components/schemas/${name}"`), `${name} is referenced`)
    t.notMatch(name, /Input$/, `${name} is not an unused request-side copy`)
  }
})

t.test('withoutUnusedSchemas keeps what an operation reaches, directly or through another schema', async (t) => {
  const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` })
  const document = {
    openapi: '3.1.0',
    paths: { '/a': { get: { responses: { 200: { content: { 'application/json': { schema: ref('Page') } } } } } } },
    components: {
      securitySchemes: { bearerAuth: { type: 'http', scheme: 'bearer' } },
      schemas: {
        Page: { type: 'object', properties: { data: { type: 'array', items: ref('Item') } } },
        Item: { type: 'object', properties: { author: ref('Author') } },
        Author: { type: 'object' },
        PageInput: { type: 'object', properties: { data: { type: 'array', items: ref('ItemInput') } } },
        ItemInput: { type: 'object' },
        // Refers to itself: must not keep itself alive, nor loop.
        Tree: { type: 'object', properties: { child: ref('Tree') } }
      }
    }
  }
  const pruned = withoutUnusedSchemas(document)
  t.same(Object.keys(pruned.components.schemas), ['Page', 'Item', 'Author'])
  t.same(pruned.components.securitySchemes, document.components.securitySchemes, 'other components are left alone')
  t.same(pruned.paths, document.paths)
  t.same(withoutUnusedSchemas({ openapi: '3.1.0', paths: {} }), { openapi: '3.1.0', paths: {} }, 'a document without components is unchanged')
})

interface Responses { [status: string]: { description: string, headers?: Record<string, { $ref?: string }>, content?: Record<string, unknown> } }
interface FullOperation { security?: Array<Record<string, unknown>>, responses: Responses, requestBody?: { content: Record<string, unknown> } }

t.test('the document tells the truth the route config knows: statuses, media types, headers, descriptions', async (t) => {
  const app = await buildTestApp(t)
  const document = (await app.inject({ method: 'GET', url: '/openapi.json' })).json() as { paths: Record<string, Record<string, FullOperation>> }
  const operation = (method: string, path: string) => document.paths[path]![method]!
  for (const [path, item] of Object.entries(document.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const key = `${method.toUpperCase()} ${path}`
      for (const [status, response] of Object.entries(op.responses)) {
        t.notOk(/^Default Response$/.test(response.description) || response.description.length < 8, `${key} ${status} has a real description`)
        t.ok(response.headers?.['X-Request-Id'] !== undefined, `${key} ${status} documents X-Request-Id`)
        const types = Object.keys(response.content ?? {})
        if (Number(status) >= 400 && path !== '/auth/token' && path !== '/auth/revoke' && !(path === '/health/ready' && status === '503')) {
          t.same(types, ['application/problem+json'], `${key} ${status} is problem+json`)
        }
      }
      const secured = (op.security ?? [{}]).some((requirement) => Object.keys(requirement).length > 0)
      if (secured) t.ok(op.responses['401'] !== undefined, `${key} documents 401`)
      if (['post', 'put', 'patch', 'delete'].includes(method)) {
        t.ok(op.responses['413'] !== undefined && op.responses['415'] !== undefined, `${key} documents 413 and 415`)
      }
    }
  }
  const users = ['GET /users/me', 'GET /users/{id}', 'PATCH /users/{id}', 'POST /posts', 'GET /feed', 'GET /balances', 'PUT /users/me/password']
  for (const key of users) {
    const [method, path] = key.split(' ') as [string, string]
    t.ok(operation(method.toLowerCase(), path).responses['403'] !== undefined, `${key}: 403 insufficient_scope for a client token`)
  }
  t.notOk(operation('get', '/transactions').responses['403'], 'GET /transactions takes users and clients alike: no 403')
  const balances = operation('get', '/balances').responses
  t.ok(balances['429']?.headers?.['Retry-After'] && balances['200']?.headers?.['RateLimit-Remaining'], 'a limited route: Retry-After on 429, RateLimit-* on its answers')
  const created = operation('post', '/transactions').responses['201']!
  t.ok(created.headers?.Location && created.headers['Idempotent-Replayed'], 'POST /transactions 201: Location and Idempotent-Replayed')
  const token = operation('post', '/auth/token')
  t.same(Object.keys(token.requestBody?.content ?? {}).sort(), ['application/json', 'application/x-www-form-urlencoded'], 'the token endpoint takes a form or JSON')
  t.same(Object.keys(token.responses['400']?.content ?? {}), ['application/json'], 'its errors are RFC 6749 JSON')
  t.ok(token.responses['200']?.headers?.['Cache-Control'] && token.responses['401']?.headers?.['Cache-Control'], 'with Cache-Control on every answer')
  t.notOk(operation('get', '/health/live').responses['429'], 'an unlimited route documents no 429')
})
