import fastifySwagger from '@fastify/swagger'
import fastifySwaggerUi from '@fastify/swagger-ui'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { jsonSchemaTransform, jsonSchemaTransformObject } from 'fastify-type-provider-zod'
import packageJson from '../package.json' with { type: 'json' }

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
        securitySchemes: { bearerAuth: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT' } }
      },
      security: [{ bearerAuth: [] }]
    },
    transform: jsonSchemaTransform,
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
