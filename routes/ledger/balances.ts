import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod'
import { z } from 'zod'
import { responses } from '../../plugins/openapi/index.ts'
import { listBalances } from './repository.ts'

const BalancesSchema = z.object({
  data: z.array(z.object({ currency: z.string(), balance: z.number().int() }))
}).meta({ id: 'Balances' })

export const balancesRoutes: FastifyPluginAsyncZod = async (app) => {
  app.get('/balances', {
    schema: { operationId: 'listBalances', tags: ['money'], summary: "The caller's balance in each currency", ...responses({ 200: { schema: BalancesSchema, description: 'One entry per currency the caller has held.' } }) }
  }, async (request) => ({ data: await listBalances(app.db, request.user.id) }))
}
