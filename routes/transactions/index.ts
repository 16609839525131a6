import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod'
import { badRequest, notFound, ProblemError, unauthorized, unprocessable } from '../../plugins/errors.ts'
import { commonErrors, ProblemSchema } from '../common/schemas.ts'
import { findTransaction, listTransactions, postTransaction } from './queries.ts'
import {
  CreateTransactionBodySchema, IdempotencyHeadersSchema, ListTransactionsQuerySchema, TransactionCursorSchema,
  TransactionIdParamsSchema, TransactionPageSchema, TransactionSchema
} from './schemas.ts'

const transferToSelf = () => badRequest('A transfer needs another user.', [{ path: 'toUserId', message: 'must not be your own id' }])

// SQLSTATEs raised by post_transaction() (sql/006_post_transaction_refusals.sql) for refusals that are the client's to fix.
const ledgerRefusals: Record<string, () => ProblemError> = {
  LDG01: () => unprocessable('insufficient_funds', 'The balance is too low for this amount; nothing was written.'),
  LDG02: () => notFound('The recipient does not exist.'),
  LDG03: () => unprocessable('balance_limit_exceeded', 'The recipient balance would pass the largest amount the ledger holds.'),
  LDG04: () => unauthorized('The account this token was issued for no longer exists.'),
  LDG05: transferToSelf
}

export const transactionsRoutes: FastifyPluginAsyncZod = async (app) => {
  const { db, cursors, reads } = app

  app.post('/transactions', {
    schema: {
      operationId: 'createTransaction',
      tags: ['money'],
      summary: 'Move money: deposit, withdrawal or transfer, exactly once per Idempotency-Key',
      headers: IdempotencyHeadersSchema,
      body: CreateTransactionBodySchema,
      response: { 201: TransactionSchema, 404: ProblemSchema, 409: ProblemSchema, 422: ProblemSchema, ...commonErrors }
    }
  }, async (request, reply) => {
    const { body, user } = request
    // Checked here to skip a round trip; post_transaction() refuses it too (LDG05), whatever the caller sends.
    if (body.toUserId === user.id) throw transferToSelf()
    let result
    try {
      result = await postTransaction(db, user.id, request.headers['idempotency-key'], body)
    } catch (error) {
      const refusal = ledgerRefusals[(error as { code?: string }).code ?? '']
      throw refusal !== undefined ? refusal() : error
    }
    if (result.outcome === 'mismatch') {
      throw unprocessable('idempotency_key_reused', 'This Idempotency-Key was already used with a different request.')
    }
    if (result.outcome === 'replayed') reply.header('idempotent-replayed', 'true')
    // Before answering, so the caller's next list read (on any API process) goes to the primary, not a replica.
    else await reads.wrote(user.id)
    return reply.code(201).header('location', `/transactions/${result.transaction.id}`).send(result.transaction)
  })

  app.get('/transactions', {
    schema: {
      operationId: 'listTransactions',
      tags: ['money'],
      summary: 'Transactions that touch the caller, newest first (cursor pagination)',
      querystring: ListTransactionsQuerySchema,
      response: { 200: TransactionPageSchema, ...commonErrors }
    }
  }, async (request) => {
    const { limit, cursor } = request.query
    const scope = `transactions:${request.user.id}`
    const before = cursor === undefined ? undefined : cursors.decode(scope, cursor, TransactionCursorSchema).before
    const { page, hasMore } = await reads.read(request.user.id, (sql) => listTransactions(sql, request.user.id, limit, before))
    const last = page.at(-1)
    return { data: page, nextCursor: hasMore && last !== undefined ? cursors.encode(scope, { before: last.id }) : null }
  })

  app.get('/transactions/:id', {
    schema: {
      operationId: 'getTransaction',
      tags: ['money'],
      summary: 'One transaction that touches the caller',
      params: TransactionIdParamsSchema,
      response: { 200: TransactionSchema, 404: ProblemSchema, ...commonErrors }
    }
  }, async (request) => {
    // Someone else's transaction is "not found", never "forbidden": its existence is not revealed.
    const transaction = await findTransaction(db, request.user.id, request.params.id)
    if (transaction === null) throw notFound('Transaction not found.')
    return transaction
  })
}
