import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod'
import { z } from 'zod'

const ReadySchema = z.object({
  status: z.enum(['ok', 'unavailable']),
  checks: z.object({ postgres: z.enum(['ok', 'down']), redis: z.enum(['ok', 'down']) })
})

// A readiness probe must answer quickly even when a dependency hangs instead of refusing.
const CHECK_TIMEOUT_MS = 2000

async function check (probe: () => Promise<unknown>): Promise<'ok' | 'down'> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((resolve, reject) => { timer = setTimeout(() => reject(new Error('timeout')), CHECK_TIMEOUT_MS) })
  try {
    await Promise.race([probe(), timeout])
    return 'ok'
  } catch {
    return 'down'
  } finally {
    clearTimeout(timer)
  }
}

export const healthRoutes: FastifyPluginAsyncZod = async (app) => {
  app.get('/health/live', {
    config: { public: true, rateLimit: false, pressureExempt: true },
    schema: { operationId: 'getLiveness', tags: ['operations'], summary: 'Liveness: the process is running', security: [], response: { 200: z.object({ status: z.literal('ok') }) } }
  }, async () => ({ status: 'ok' as const }))

  app.get('/health/ready', {
    config: { public: true, rateLimit: false },
    schema: {
      operationId: 'getReadiness',
      tags: ['operations'],
      summary: 'Readiness: PostgreSQL (through PgBouncer) and Redis answer',
      security: [],
      response: { 200: ReadySchema, 503: ReadySchema }
    }
  }, async (request, reply) => {
    const [postgres, redis] = await Promise.all([
      check(() => app.db`select 1`),
      check(() => app.redis.ping())
    ])
    const ok = postgres === 'ok' && redis === 'ok'
    return reply.code(ok ? 200 : 503).send({ status: ok ? 'ok' : 'unavailable', checks: { postgres, redis } })
  })
}
