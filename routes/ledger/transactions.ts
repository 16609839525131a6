import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod'
import { authorize, type PrincipalKind } from '../../plugins/auth/index.ts'
import { serviceUnavailable } from '../../plugins/errors/index.ts'
import { wakeWorkers } from '../../plugins/jobs/queue.ts'
import { MONEY_REFUSALS, type MoneyKind, type MoneyRefusal } from '../../plugins/metrics/index.ts'
import { responses } from '../../plugins/openapi/index.ts'
import { GroupCommit } from './group-commit.ts'
import { clientTransactionsPageQuery, findTransaction, toTransaction, transactionsPageQuery } from './repository.ts'
import {
  CreateTransactionBodySchema, IdempotencyHeadersSchema, ListTransactionsQuerySchema, TransactionCursorSchema,
  TransactionIdParamsSchema, TransactionPageSchema, TransactionSchema
} from './schemas.ts'
import { LedgerError, toProblem, type LedgerErrorCode } from './errors.ts'

/** A refusal of a money write, counted under its code (ledger_money_refusals_total). */
const isMoneyRefusal = (code: LedgerErrorCode): code is MoneyRefusal => (MONEY_REFUSALS as readonly string[]).includes(code)

// Who may post which kind: users move their own money; money enters and leaves only through service clients (whose
// funds:write scope the route config already requires).
const posters: Record<string, readonly PrincipalKind[]> = {
  transfer: ['user'],
  deposit: ['client'],
  withdrawal: ['client']
}

export const transactionsRoutes: FastifyPluginAsyncZod = async (app) => {
  const { db, cursors, reads, currencies, config, metrics } = app
  /** Counts a refusal (nothing written) and returns its problem to throw. */
  const refused = (kind: MoneyKind, reason: MoneyRefusal) => {
    metrics.moneyWrites.inc({ kind, outcome: 'refused' })
    metrics.moneyRefusals.inc({ kind, reason })
    return toProblem(new LedgerError(reason))
  }
  // Concurrent money writes share database calls and commits (group commit): each still gets its own answer.
  const writes = new GroupCommit({
    sql: db,
    keyTtlS: config.IDEMPOTENCY_KEY_TTL_H * 3600,
    maxBatch: config.LEDGER_BATCH_MAX,
    maxInFlight: config.LEDGER_BATCHES_IN_FLIGHT,
    observeBatch: (size) => metrics.ledgerWriteBatchSize.observe(size),
    observeQueue: (length) => metrics.ledgerWriteQueue.set(length)
  })

  app.post('/transactions', {
    config: { principals: ['user', 'client'], scope: 'funds:write' },
    // Before validation, so a user's deposit is a 403 whatever else its body holds, and nothing is written.
    preValidation: async (request) => {
      const kind = (request.body as { kind?: unknown } | null)?.kind
      const allowed = typeof kind === 'string' && Object.hasOwn(posters, kind) ? posters[kind] : undefined
      if (allowed !== undefined) authorize(request.user, allowed)
      // The currency check needs the active currencies; a process that has not read them yet cannot tell.
      if (!currencies.isLoaded()) throw serviceUnavailable('database')
    },
    schema: {
      operationId: 'createTransaction',
      tags: ['money'],
      summary: 'Move money exactly once per Idempotency-Key: a user transfers; a service client (funds:write) deposits or withdraws',
      headers: IdempotencyHeadersSchema,
      body: CreateTransactionBodySchema,
      ...responses({
        201: { schema: TransactionSchema, description: 'Posted; or, for a retry with the same key and body, the original answer (Idempotent-Replayed: true).', headers: ['Location', 'Idempotent-Replayed'] },
        400: 'A transfer to yourself, or Idempotency-Key missing or not 1 to 255 visible ASCII characters.',
        401: 'The account or client the token names no longer exists, or was revoked.',
        403: 'The kind is not the caller\'s: a user posts transfers only, a service client deposits and withdrawals only.',
        404: 'The user to fund does not exist.',
        409: 'The reference was already used by another transaction of this client; nothing was written.',
        422: 'insufficient_funds or balance_limit_exceeded (nothing was written), or the Idempotency-Key was used before with a different body.'
      })
    }
  }, async (request, reply) => {
    const { body, user } = request
    const { kind } = body
    // Checked here to skip a round trip; post_transaction() refuses it too (LDG05), whatever the caller sends.
    if (kind === 'transfer' && body.toUserId === user.id) throw refused(kind, 'transfer_to_self')
    let result
    try {
      result = await writes.post({ poster: user, key: request.headers['idempotency-key'], body })
    } catch (error) {
      if (error instanceof LedgerError && isMoneyRefusal(error.code)) throw refused(kind, error.code)
      metrics.moneyWrites.inc({ kind, outcome: 'error' })
      throw error
    }
    if (result.outcome === 'mismatch') {
      throw refused(kind, 'idempotency_key_reused')
    }
    metrics.moneyWrites.inc({ kind, outcome: result.outcome })
    if (result.outcome === 'replayed') reply.header('idempotent-replayed', 'true')
    else {
      // Before answering, so the next list read (on any API process) of the poster and of every user the money
      // moved for goes to the primary, not a replica that may not have it yet.
      const { fromUserId, toUserId } = result.transaction
      await Promise.all([...new Set([user.id, fromUserId, toUserId])].flatMap((id) => id === null ? [] : [reads.wrote(id)]))
      // Committed: the webhook deliveries it queued may be claimed now.
      if (result.queued > 0) wakeWorkers(app.redis, request.log)
    }
    return reply.code(201).header('location', `/transactions/${result.transaction.id}`).send(result.transaction)
  })

  app.get('/transactions', {
    config: { principals: ['user', 'client'] },
    schema: {
      operationId: 'listTransactions',
      tags: ['money'],
      summary: 'Newest first (cursor pagination): for a user the transactions that touch them, for a client the ones it posted',
      querystring: ListTransactionsQuerySchema,
      ...responses({ 200: { schema: TransactionPageSchema, description: 'One page, newest first; nextCursor is null on the last.' }, 400: 'The cursor is not one this list gave you.' })
    }
  }, async (request) => {
    const { limit, cursor } = request.query
    const { kind, id } = request.user
    const scope = kind === 'client' ? `transactions:client:${id}` : `transactions:${id}`
    const before = cursors.position(scope, cursor, TransactionCursorSchema)?.before
    const rows = await reads.read(id, (sql) => kind === 'client' ? clientTransactionsPageQuery(sql, id, limit, before) : transactionsPageQuery(sql, id, limit, before))
    return cursors.page(scope, rows, limit, toTransaction, (row) => ({ before: row.id }))
  })

  app.get('/transactions/:id', {
    config: { principals: ['user', 'client'] },
    schema: {
      operationId: 'getTransaction',
      tags: ['money'],
      summary: 'One transaction the caller could list',
      params: TransactionIdParamsSchema,
      ...responses({ 200: { schema: TransactionSchema, description: 'The transaction.' }, 404: 'No such transaction the caller could list.' })
    }
  }, async (request) => {
    // Someone else's transaction is "not found", never "forbidden": its existence is not revealed.
    const transaction = await findTransaction(db, request.user, request.params.id)
    if (transaction === null) throw toProblem(new LedgerError('transaction_not_found'))
    return transaction
  })
}
