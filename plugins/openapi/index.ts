import fastifySwagger from '@fastify/swagger'
import fastifySwaggerUi from '@fastify/swagger-ui'
import type { FastifyContextConfig, FastifyInstance, RouteOptions } from 'fastify'
import fp from 'fastify-plugin'
import { jsonSchemaTransform, jsonSchemaTransformObject } from 'fastify-type-provider-zod'
import { z } from 'zod'
import packageJson from '../../package.json' with { type: 'json' }
import { scopes, type PrincipalKind } from '../auth/index.ts'
import { credentialResponseHeaders } from '../auth/credential-responses.ts'

declare module 'fastify' {
  interface FastifySchema {
    /** What each status the handler itself answers means, and the headers it sets: see `responses()`. */
    responseDocs?: Record<string, ResponseDoc>
  }
}

/**
 * A private operation's security comes from the route config that enforces it (plugins/auth/index.ts), so the document
 * cannot promise what the hook does not check: users hold a bearer token from the password grant, service clients
 * one from the client-credentials grant with the scopes listed. Public routes say `security: []` in their schema
 * as well; one that forgets is documented with the default (a user token), which preflight's auth check catches.
 */
export function operationSecurity (config: { public?: boolean, principals?: readonly PrincipalKind[], scope?: string } | undefined) {
  if (config?.public === true) return undefined
  const principals = config?.principals ?? ['user']
  return principals.map((kind): Record<string, string[]> => kind === 'user'
    ? { userBearer: [] }
    : { clientCredentials: config?.scope === undefined ? [] : [config.scope] })
}

/** Every `#/components/schemas/<name>` that `value` refers to, at any depth. */
function schemaRefs (value: unknown, found: Set<string>): Set<string> {
  if (Array.isArray(value)) {
    for (const item of value) schemaRefs(item, found)
  } else if (typeof value === 'object' && value !== null) {
    for (const [key, child] of Object.entries(value)) {
      if (key === '$ref' && typeof child === 'string' && child.startsWith('#/components/schemas/')) found.add(child.slice('#/components/schemas/'.length))
      else schemaRefs(child, found)
    }
  }
  return found
}

/**
 * fastify-type-provider-zod turns every Zod schema that has an `id` into two components: `<id>` for responses and
 * `<id>Input` for requests, whether or not any route uses them. This API's named schemas are all responses, so
 * every `*Input` is unused, as is a named schema that is only ever extended (`PublicUser`). Only what an
 * operation reaches, directly or through another component, is kept.
 */
export function withoutUnusedSchemas<D extends object> (document: D): D {
  const { components } = document as { components?: { schemas?: Record<string, unknown> } }
  const schemas = components?.schemas
  if (schemas === undefined) return document
  const used = schemaRefs({ ...document, components: { ...components, schemas: {} } }, new Set())
  for (const pending = [...used]; pending.length > 0;) {
    for (const name of schemaRefs(schemas[pending.pop()!], new Set())) {
      if (!used.has(name)) { used.add(name); pending.push(name) }
    }
  }
  return { ...document, components: { ...components, schemas: Object.fromEntries(Object.entries(schemas).filter(([name]) => used.has(name))) } }
}

/**
 * Response headers clients act on, documented once (components.headers) and referred to by every response that is
 * sure to carry them. Only headers a response always carries are listed for it, except Idempotent-Replayed, which
 * says whether the answer is a replay.
 */
export const documentedHeaders = {
  'X-Request-Id': { description: 'The request id: the caller\'s X-Request-Id when it sent a safe one (up to 128 characters), else a generated one; the same id is in the request\'s log lines.', required: true, schema: { type: 'string', maxLength: 128 } },
  Location: { description: 'The URL of the resource just created.', required: true, schema: { type: 'string' } },
  'Idempotent-Replayed': { description: '`true` when this is the stored answer to an earlier request with the same Idempotency-Key and body; absent otherwise.', required: false, schema: { type: 'string', enum: ['true'] } },
  'RateLimit-Limit': { description: 'The size of the caller\'s token bucket (requests).', required: true, schema: { type: 'string', pattern: '^[0-9]+$' } },
  'RateLimit-Remaining': { description: 'Requests left in the bucket now.', required: true, schema: { type: 'string', pattern: '^[0-9]+$' } },
  'RateLimit-Reset': { description: 'Seconds until the bucket is full again (after a 429: until the next request can pass).', required: true, schema: { type: 'string', pattern: '^[0-9]+$' } },
  'Retry-After': { description: 'Whole seconds to wait before retrying.', required: true, schema: { type: 'string', pattern: '^[0-9]+$' } },
  'WWW-Authenticate': { description: 'The authentication scheme to use (RFC 9110 section 11.6.1): `Bearer` for the API\'s access tokens, `Basic` for a client at the token endpoint.', required: true, schema: { type: 'string' } },
  'Cache-Control': { description: 'Always `no-store`: the answer can hold a credential, and no cache may keep it.', required: true, schema: { type: 'string', const: credentialResponseHeaders['cache-control'] } },
  Pragma: { description: 'Always `no-cache` (`Cache-Control: no-store` for HTTP/1.0 caches).', required: true, schema: { type: 'string', const: credentialResponseHeaders.pragma } }
} as const
export type DocumentedHeader = keyof typeof documentedHeaders

export interface ResponseDoc {
  description: string
  headers?: readonly DocumentedHeader[]
}

/**
 * A status the handler answers. With a `schema` it is the body's (validated as it is serialized). Without one (a
 * string is the description alone) it is an answer with no body below 400, and above it an error, whose body
 * (problem+json, or RFC 6749 section 5.2's JSON on OAuth endpoints) the errors plugin writes.
 */
export type ResponseEntry = string | { schema?: z.ZodType, description: string, headers?: readonly DocumentedHeader[] }

type ResponseSchemas<E> = { [K in keyof E as E[K] extends { schema: z.ZodType } ? K : never]: E[K] extends { schema: infer S } ? S : never }

/**
 * The route schema's `response` (the bodies Fastify serializes) and `responseDocs` (what each status means) from
 * one table. Statuses that come from the route's config rather than its handler (401, 403 insufficient_scope, 413,
 * 415, 429, 500, 503, and 400 for validation) are added to the document by the transform below; a status listed
 * here as well gets both descriptions.
 */
export function responses<const E extends Record<number, ResponseEntry>> (entries: E): { response: ResponseSchemas<E>, responseDocs: Record<string, ResponseDoc> } {
  const response: Record<string, z.ZodType> = {}
  const responseDocs: Record<string, ResponseDoc> = {}
  for (const [status, entry] of Object.entries(entries) as Array<[string, ResponseEntry]>) {
    if (typeof entry === 'string') {
      responseDocs[status] = { description: entry }
      continue
    }
    if (entry.schema !== undefined) response[status] = entry.schema
    responseDocs[status] = { description: entry.description, ...(entry.headers === undefined ? {} : { headers: entry.headers }) }
  }
  return { response: response as ResponseSchemas<E>, responseDocs }
}

interface Media { schema: unknown }
interface ResponseObject { description: string, headers?: Record<string, { $ref: string }>, content?: Record<string, Media> }
interface OperationPatch { responses: Record<string, ResponseObject>, requestBodyRequired: boolean }

/** The document's security where an operation states none: a user's bearer token. */
const DEFAULT_SECURITY = [{ userBearer: [] }]

const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` })
const PROBLEM = 'application/problem+json'
const BODY_METHODS = new Set(['POST', 'PUT', 'PATCH', 'DELETE'])

/** The error bodies a route answers: problem+json, or RFC 6749 section 5.2's JSON (always, or for form requests). */
function errorContent (config: FastifyContextConfig): Record<string, Media> {
  if (config.oauthErrors === 'always') return { 'application/json': { schema: ref('OAuthError') } }
  if (config.oauthErrors === 'form') return { [PROBLEM]: { schema: ref('Problem') }, 'application/json': { schema: ref('OAuthError') } }
  return { [PROBLEM]: { schema: ref('Problem') } }
}

function forbiddenDescription (principals: readonly PrincipalKind[], scope: string | undefined): string | undefined {
  const reasons: string[] = []
  if (!principals.includes('client')) reasons.push('a service client\'s token (this operation is for users)')
  if (!principals.includes('user')) reasons.push('a user\'s token (this operation is for service clients)')
  if (scope !== undefined && principals.includes('client')) reasons.push(`a service client's token without the ${scope} scope`)
  return reasons.length === 0 ? undefined : `insufficient_scope (with WWW-Authenticate): ${reasons.join('; ')}.`
}

interface RouteFacts {
  /** `POST /users`, for messages. */
  operation: string
  method: string
  config: FastifyContextConfig
  security: ReadonlyArray<Record<string, readonly string[]>> | undefined
  hasInput: boolean
  consumes: readonly string[]
  bodyLimit: number
  declared: Record<string, unknown>
  docs: Record<string, ResponseDoc>
}

/**
 * Every status an operation can answer, from the same route config that makes it answer them: the auth hook
 * (`public`, `principals`, `scope`), the rate limiter (`rateLimited`), the body parser (method, accepted media types,
 * body limit), the credential headers (`carriesCredentials`), the error format (`oauthErrors`), and what the
 * handler declares.
 */
export function operationResponses (route: RouteFacts): Record<string, ResponseObject> {
  const { config } = route
  const built = new Map<number, { descriptions: string[], headers: Set<DocumentedHeader>, content: Record<string, Media> }>()
  const add = (status: number, description: string, content: Record<string, Media>, headers: readonly DocumentedHeader[] = []) => {
    const entry = built.get(status) ?? { descriptions: [], headers: new Set(), content: {} }
    entry.descriptions.push(description)
    for (const header of headers) entry.headers.add(header)
    Object.assign(entry.content, content)
    built.set(status, entry)
  }
  const errors = errorContent(config)

  for (const [status, doc] of Object.entries(route.docs)) {
    const schema = route.declared[status] as { type?: unknown } | undefined
    const code = Number(status)
    const content = schema !== undefined && schema.type !== 'null'
      ? { 'application/json': { schema } }
      : code >= 400 ? errors : {}
    add(code, doc.description, content, doc.headers)
  }
  for (const status of Object.keys(route.declared)) {
    if (route.docs[status] === undefined) throw new Error(`${route.operation} responds ${status} without a description: declare it with responses()`)
  }

  // No security of its own means the document's default (a user's bearer token), as clients will read it.
  const authenticated = (route.security ?? DEFAULT_SECURITY).some((requirement) => Object.keys(requirement).length > 0)
  const bodyMethod = BODY_METHODS.has(route.method)
  if (route.hasInput || bodyMethod) add(400, 'The request fails validation (`errors` names each field), or its body is not well-formed.', errors)
  if (authenticated) {
    add(401, 'No valid bearer token: missing, malformed, expired, revoked, or signed for another issuer or audience.', errors, ['WWW-Authenticate'])
    const forbidden = forbiddenDescription(config.principals ?? ['user'], config.scope)
    if (forbidden !== undefined) add(403, forbidden, errors)
  }
  if (bodyMethod) {
    add(413, `The body is larger than ${route.bodyLimit} bytes.`, errors)
    add(415, `The body's Content-Type is not one this operation accepts (${route.consumes.join(', ')}).`, errors)
  }
  if (config.rateLimited === true) {
    add(429, config.public === true
      ? 'Rate limited per client address (IPv6 per /64): retry after Retry-After seconds.'
      : 'Rate limited per caller (the token\'s tier): retry after Retry-After seconds.', errors, ['Retry-After', 'RateLimit-Limit', 'RateLimit-Remaining', 'RateLimit-Reset'])
  }
  add(500, 'An unexpected error; nothing about it is revealed.', errors)
  const ownUnavailable = route.docs['503'] !== undefined
  add(503, 'The service cannot answer now (overloaded, shutting down, or a dependency it needs is down): retry after Retry-After seconds.', errors, ownUnavailable ? [] : ['Retry-After'])

  const result: Record<string, ResponseObject> = {}
  for (const status of [...built.keys()].sort((a, b) => a - b)) {
    const entry = built.get(status)!
    const headers = new Set<DocumentedHeader>(['X-Request-Id', ...entry.headers])
    // The limiter runs after authentication and before everything else the request meets.
    if (config.rateLimited === true && status !== 401 && status !== 403 && status < 500) {
      for (const header of ['RateLimit-Limit', 'RateLimit-Remaining', 'RateLimit-Reset'] as const) headers.add(header)
    }
    if (config.carriesCredentials === true) { headers.add('Cache-Control'); headers.add('Pragma') }
    result[String(status)] = {
      description: entry.descriptions.join(' '),
      headers: Object.fromEntries([...headers].map((name) => [name, { $ref: `#/components/headers/${name}` }])),
      ...(Object.keys(entry.content).length === 0 ? {} : { content: entry.content })
    }
  }
  return result
}

interface TransformInput {
  schema: Record<string, unknown> & { body?: unknown, consumes?: readonly string[], responseDocs?: Record<string, ResponseDoc>, hide?: boolean }
  url: string
  route: RouteOptions
  openapiObject: Partial<{ openapi: string }>
}

const openapiPath = (url: string) => url.replace(/:([A-Za-z0-9_]+)/g, '{$1}')

const isZod = (value: unknown): value is z.ZodType => value instanceof z.ZodType

const scopeDescriptions: Record<typeof scopes[number], string> = {
  'funds:write': 'Post deposits and withdrawals for any user',
  'events:read': 'Receive webhooks for the transactions the client posted'
}

/**
 * The OpenAPI document is generated from the same Zod schemas that validate requests, so it cannot drift. A copy is
 * committed as openapi.json (`npm run openapi`), with the types scripts/ops uses; test/scripts/openapi.test.ts
 * fails when they fall behind, and lints the document with Redocly (redocly.yaml).
 */
async function openapiPlugin (app: FastifyInstance) {
  // What the transform learns per operation and the finished document needs (transformObject runs after all paths).
  const patches = new Map<string, OperationPatch>()
  await app.register(fastifySwagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'ledger-api',
        version: packageJson.version,
        description: 'Users, tokens, an idempotent ledger and a cached feed.',
        // The package is private and grants no licence; UNLICENSED is npm's word for that.
        license: { name: 'UNLICENSED' }
      },
      // Relative: the API is served at the root of whichever host serves this document.
      servers: [{ url: '/', description: 'The host that serves this document' }],
      components: {
        securitySchemes: {
          userBearer: {
            type: 'http',
            scheme: 'bearer',
            bearerFormat: 'JWT',
            description: 'A user: POST /auth/token with email and password.'
          },
          clientCredentials: {
            type: 'oauth2',
            description: 'A service client (a back-office system): POST /auth/token with grant_type=client_credentials.',
            flows: {
              clientCredentials: {
                tokenUrl: '/auth/token',
                scopes: Object.fromEntries(scopes.map((scope) => [scope, scopeDescriptions[scope]]))
              }
            }
          }
        }
      },
      security: DEFAULT_SECURITY
    },
    transform: (input) => {
      const { schema: routeSchema, route, url } = input as unknown as TransformInput
      if (routeSchema === undefined || routeSchema.hide === true) return jsonSchemaTransform(input)
      // A body with one schema per media type (`body: { content: { type: { schema } } }`) is converted one by one.
      const bodyContent = !isZod(routeSchema.body) && typeof routeSchema.body === 'object' && routeSchema.body !== null
        ? (routeSchema.body as { content: Record<string, { schema: z.ZodType }> }).content
        : undefined
      const { responseDocs, ...schemaForSwagger } = routeSchema
      const result = jsonSchemaTransform({ ...input, schema: bodyContent === undefined ? schemaForSwagger : { ...schemaForSwagger, body: undefined } } as typeof input)
      const schema = result.schema as Record<string, unknown> & { security?: RouteFacts['security'], response?: Record<string, unknown> }
      if (bodyContent !== undefined) {
        schema.body = {
          content: Object.fromEntries(Object.entries(bodyContent).map(([type, media]) => {
            const converted = jsonSchemaTransform({ ...input, schema: { body: media.schema } } as typeof input).schema as { body: unknown }
            return [type, { schema: converted.body }]
          }))
        }
      }
      const config = (route.config ?? {}) as FastifyContextConfig
      schema.security ??= operationSecurity(config)
      const methods = Array.isArray(route.method) ? route.method : [route.method]
      for (const method of methods) {
        const facts: RouteFacts = {
          operation: `${method} ${url}`,
          method,
          config,
          security: schema.security,
          hasInput: ['body', 'querystring', 'params', 'headers'].some((part) => routeSchema[part] !== undefined),
          consumes: routeSchema.consumes ?? (bodyContent !== undefined ? Object.keys(bodyContent) : ['application/json']),
          bodyLimit: route.bodyLimit ?? app.initialConfig.bodyLimit ?? 1024 * 1024,
          declared: schema.response ?? {},
          docs: responseDocs ?? {}
        }
        // A body that differs by media type is one alternative among others (POST /auth/revoke: a form, or none).
        patches.set(`${method.toLowerCase()} ${openapiPath(url)}`, { responses: operationResponses(facts), requestBodyRequired: bodyContent === undefined })
      }
      return result
    },
    transformObject: (input) => {
      const document = jsonSchemaTransformObject(input) as ReturnType<typeof jsonSchemaTransformObject> & {
        paths?: Record<string, Record<string, { responses?: unknown, requestBody?: { required?: boolean } }>>
        components?: Record<string, unknown>
      }
      for (const [key, patch] of patches) {
        const [method, path] = key.split(' ') as [string, string]
        const operation = document.paths?.[path]?.[method]
        if (operation === undefined) continue
        operation.responses = patch.responses
        if (operation.requestBody !== undefined) operation.requestBody.required = patch.requestBodyRequired
      }
      document.components = { ...document.components, headers: documentedHeaders }
      return withoutUnusedSchemas(document)
    }
  })
  await app.register(async (docs) => {
    // The documentation is public; its routes are declared by the UI plugin, so mark them as they are added.
    docs.addHook('onRoute', (route) => { route.config = { ...route.config, public: true } })
    await docs.register(fastifySwaggerUi, { routePrefix: '/docs', uiConfig: { deepLinking: false } })
  })

  app.get('/openapi.json', { config: { public: true }, schema: { hide: true } }, async () => app.swagger())
}

export default fp(openapiPlugin, { name: 'openapi' })
