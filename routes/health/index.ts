import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod'
import { z } from 'zod'
import { responses } from '../../plugins/openapi/index.ts'

const ReadySchema = z.object({
  status: z.enum(['ok', 'unavailable']),
  checks: z.object({ postgres: z.enum(['ok', 'down']), redis: z.enum(['ok', 'down']) })
})

/** The readiness body, shared with the operations listener (ops-server.ts) so both ports answer alike. */
export const readyBody = (result: { ok: boolean, checks: { postgres: 'ok' | 'down', redis: 'ok' | 'down' } }) =>
  ({ status: result.ok ? 'ok' as const : 'unavailable' as const, checks: result.checks })

export const healthRoutes: FastifyPluginAsyncZod = async (app) => {
  app.get('/health/live', {
    config: { public: true, rateLimit: false, pressureExempt: true },
    schema: { operationId: 'getLiveness', tags: ['operations'], summary: 'Liveness: the process is running', security: [], ...responses({ 200: { schema: z.object({ status: z.literal('ok') }), description: 'The process runs.' } }) }
  }, async () => ({ status: 'ok' as const }))

  // From the result plugins/http/readiness.ts refreshes in the background: no database or Redis call per request.
  app.get('/health/ready', {
    config: { public: true, rateLimit: false },
    schema: {
      operationId: 'getReadiness',
      tags: ['operations'],
      summary: 'Readiness: PostgreSQL (through PgBouncer) and Redis answered the last background probe (at most a second old)',
      security: [],
      ...responses({
        200: { schema: ReadySchema, description: 'PostgreSQL and Redis both answered.' },
        503: { schema: ReadySchema, description: 'PostgreSQL or Redis did not answer: checks says which.' }
      })
    }
  }, async (request, reply) => {
    const result = app.readiness.current()
    return reply.code(result.ok ? 200 : 503).send(readyBody(result))
  })
}
