import fastifySwagger from '@fastify/swagger'
import fastifySwaggerUi from '@fastify/swagger-ui'
import type { FastifyInstance, RouteOptions } from 'fastify'
import fp from 'fastify-plugin'
import { jsonSchemaTransform, jsonSchemaTransformObject } from 'fastify-type-provider-zod'
import packageJson from '../package.json' with { type: 'json' }
import { scopes, type PrincipalKind } from './auth.ts'

/**
 * A private operation's security comes from the route config that enforces it (plugins/auth.ts), so the document
 * cannot promise what the hook does not check: users hold a bearer token from the password grant, service clients
 * one from the client-credentials grant with the scopes listed. Public routes say `security: []` in their schema
 * as well; one that forgets is documented with the default (a user token), which preflight's auth check catches.
 */
export function operationSecurity (config: { public?: boolean, principals?: readonly PrincipalKind[], scope?: string } | undefined) {
  if (config?.public === true) return undefined
  const principals = config?.principals ?? ['user']
  return principals.map((kind) => kind === 'user'
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
      security: [{ userBearer: [] }]
    },
    transform: (input) => {
      const result = jsonSchemaTransform(input)
      const route = input.route as RouteOptions | undefined
      const schema = result.schema as { security?: unknown }
      schema.security ??= operationSecurity(route?.config as Parameters<typeof operationSecurity>[0])
      return result
    },
    transformObject: (document) => withoutUnusedSchemas(jsonSchemaTransformObject(document))
  })
  await app.register(async (docs) => {
    // The documentation is public; its routes are declared by the UI plugin, so mark them as they are added.
    docs.addHook('onRoute', (route) => { route.config = { ...route.config, public: true } })
    await docs.register(fastifySwaggerUi, { routePrefix: '/docs', uiConfig: { deepLinking: false } })
  })

  app.get('/openapi.json', { config: { public: true }, schema: { hide: true } }, async () => app.swagger())
}

export default fp(openapiPlugin, { name: 'openapi' })
