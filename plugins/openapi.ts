import fastifySwagger from '@fastify/swagger'
import fastifySwaggerUi from '@fastify/swagger-ui'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { jsonSchemaTransform, jsonSchemaTransformObject } from 'fastify-type-provider-zod'

/** The OpenAPI document is generated from the same Zod schemas that validate requests, so it cannot drift. */
async function openapiPlugin (app: FastifyInstance) {
  await app.register(fastifySwagger, {
    openapi: {
      openapi: '3.1.0',
      info: { title: 'ledger-api', version: '0.1.0', description: 'Users, tokens, an idempotent ledger and a cached feed.' },
      components: {
        securitySchemes: { bearerAuth: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT' } }
      },
      security: [{ bearerAuth: [] }]
    },
    transform: jsonSchemaTransform,
    transformObject: jsonSchemaTransformObject
  })
  await app.register(async (docs) => {
    // The documentation is public; its routes are declared by the UI plugin, so mark them as they are added.
    docs.addHook('onRoute', (route) => { route.config = { ...route.config, public: true } })
    await docs.register(fastifySwaggerUi, { routePrefix: '/docs', uiConfig: { deepLinking: false } })
  })

  app.get('/openapi.json', { config: { public: true }, schema: { hide: true } }, async () => app.swagger())
}

export default fp(openapiPlugin, { name: 'openapi' })
