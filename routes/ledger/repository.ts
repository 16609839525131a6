import { createHash } from 'node:crypto'
import type { Sql } from '../../plugins/database/index.ts'
import { LedgerError, type LedgerErrorCode } from './errors.ts'
import { toMinorUnits } from './money.ts'
import type { CreateTransactionBody, Transaction } from './schemas.ts'

export interface TransactionRow {
  id: string
  kind: Transaction['kind']
  amount: string
  currency: string
  from_user_id: string | null
  to_user_id: string | null
  description: string | null
  reference: string | null
  created_at: Date
}

/** What every statement that reads transactions selects: the columns of a TransactionRow, written once. */
const TRANSACTION_COLUMNS = ['id', 'kind', 'amount', 'currency', 'from_user_id', 'to_user_id', 'description', 'reference', 'created_at'] as const satisfies ReadonlyArray<keyof TransactionRow>

/**
 * The select list of a TransactionRow, qualified by a table alias when given. A fragment of constant text (no
 * input reaches it), so the statement reads exactly as if the list were written inline.
 */
export const transactionColumns = (sql: Sql, alias?: 't') =>
  sql.unsafe(TRANSACTION_COLUMNS.map((column) => alias === undefined ? column : `${alias}.${column}`).join(', '))

export const toTransaction = (row: TransactionRow): Transaction => ({
  id: row.id,
  kind: row.kind,
  amount: toMinorUnits(row.amount),
  currency: row.currency,
  fromUserId: row.from_user_id,
  toUserId: row.to_user_id,
  description: row.description,
  reference: row.reference,
  createdAt: row.created_at.toISOString()
})

/**
 * What makes two requests "the same" for an idempotency key: every field of the body, in a fixed order. A
 * transfer's fingerprint keeps the form of the keys already stored (without the client fields), so they still
 * replay.
 */
export function requestFingerprint (body: CreateTransactionBody): string {
  const common = [body.kind, body.amount, body.currency]
  const canonical = JSON.stringify(body.kind === 'transfer'
    ? [...common, body.toUserId, body.description ?? null]
    : [...common, null, body.description ?? null, body.userId, body.reference])
  return createHash('sha256').update(canonical).digest('base64url')
}

export type PostOutcome =
  | { outcome: 'created' | 'replayed', transaction: Transaction, queued: number }
  | { outcome: 'mismatch' }

// SQLSTATEs raised by post_transaction() (sql/functions/post_transaction.sql) for refusals that are the caller's to fix.
const refusalsBySqlState: Record<string, LedgerErrorCode> = {
  LDG01: 'insufficient_funds',
  LDG02: 'user_not_found',
  LDG03: 'balance_limit_exceeded',
  LDG04: 'caller_not_found',
  LDG05: 'transfer_to_self',
  LDG06: 'client_revoked'
}

/** The refusal a failed post_transaction() call means, or undefined for a failure that is not the caller's to fix. */
function postRefusal (error: unknown): LedgerErrorCode | undefined {
  const { code, constraint_name: constraint } = error as { code?: string, constraint_name?: string }
  // A reference another transaction of this client already holds: the database's unique index says so.
  if (code === '23505' && constraint === 'transactions_client_reference_key') return 'reference_used'
  return code !== undefined && Object.hasOwn(refusalsBySqlState, code) ? refusalsBySqlState[code] : undefined
}

/** Who posts: a user (transfers from their own balance) or a service client (deposits and withdrawals). */
export interface Poster {
  kind: 'user' | 'client'
  id: string
}

/**
 * post_transaction()'s arguments for one request, by name: who pays or is paid follows from the kind (a user
 * transfers from their own balance; a client names the user it deposits to or withdraws from). The single call
 * passes them in order, post_transactions() reads them from one json object per request.
 */
function postArguments ({ poster, key, body }: PostRequest) {
  return {
    client_id: poster.kind === 'client' ? poster.id : null,
    user_id: body.kind === 'transfer' ? poster.id : body.userId,
    key,
    fingerprint: requestFingerprint(body),
    kind: body.kind,
    amount: body.amount,
    currency: body.currency,
    to_user_id: body.kind === 'transfer' ? body.toUserId : null,
    description: body.description ?? null,
    reference: body.kind === 'transfer' ? null : body.reference
  }
}

/**
 * One statement, one round trip: post_transaction() (sql/functions/post_transaction.sql) claims the key, checks
 * the reference, locks balances in user id order, checks funds, writes the transaction, its entries and the
 * balances, atomically.
 */
export async function postTransaction (sql: Sql, poster: Poster, key: string, body: CreateTransactionBody, keyTtlS: number): Promise<PostOutcome> {
  const a = postArguments({ poster, key, body })
  let row
  try {
    [row] = await sql<(TransactionRow & { outcome: 'created' | 'replayed' | 'mismatch', queued: number | null })[]>`
      select * from post_transaction(
        ${a.client_id}, ${a.user_id}, ${a.key}, ${a.fingerprint}, ${a.kind}, ${a.amount}, ${a.currency},
        ${a.to_user_id}, ${a.description}, ${a.reference}, ${keyTtlS}
      )`
  } catch (error) {
    const refusal = postRefusal(error)
    throw refusal === undefined ? error : new LedgerError(refusal)
  }
  if (row === undefined) throw new Error('post_transaction returned no row')
  if (row.outcome === 'mismatch') return { outcome: 'mismatch' }
  return { outcome: row.outcome, transaction: toTransaction(row), queued: row.queued ?? 0 }
}

/** One POST /transactions as post_transaction() takes it: who posts, the Idempotency-Key and the body. */
export interface PostRequest {
  poster: Poster
  key: string
  body: CreateTransactionBody
}

/** What one request of a batch came to: its outcome, or exactly the error a single post_transaction() call would throw. */
export type PostResult = { ok: true, outcome: PostOutcome } | { ok: false, error: unknown }

/** The most requests post_transactions() takes in one call (its own cap, sql/functions/post_transactions.sql). */
export const MAX_BATCH = 32

/** An error shaped like the driver's, so a request refused inside a batch maps to what its single call would throw. */
export class BatchedPostError extends Error {
  readonly code: string
  // The driver's field name, which postRefusal() reads.
  readonly constraint_name: string | undefined
  constructor (code: string, constraint: string | null) {
    super(`post_transaction failed in a batch with SQLSTATE ${code}`)
    this.name = 'BatchedPostError'
    this.code = code
    this.constraint_name = constraint ?? undefined
  }
}

type BatchRow = { [K in keyof TransactionRow]: TransactionRow[K] | null } & {
  ordinal: number
  outcome: 'created' | 'replayed' | 'mismatch' | 'refused'
  queued: number | null
  error_sqlstate: string | null
  error_constraint: string | null
}

/**
 * Several requests in one statement and one commit: post_transactions() (sql/functions/post_transactions.sql)
 * locks every balance they touch in one order, then applies each through post_transaction() in its own
 * subtransaction, so each request's result is its own. A throw means the statement failed as a whole.
 */
export async function postTransactions (sql: Sql, requests: readonly PostRequest[], keyTtlS: number): Promise<PostResult[]> {
  const rows = await sql<BatchRow[]>`
    select * from post_transactions(${sql.json(requests.map(postArguments))}, ${keyTtlS})`
  if (rows.length !== requests.length) throw new Error(`post_transactions returned ${rows.length} rows for ${requests.length} requests`)
  return rows.toSorted((a, b) => a.ordinal - b.ordinal).map((row): PostResult => {
    if (row.outcome === 'refused') {
      const error = new BatchedPostError(row.error_sqlstate ?? 'XX000', row.error_constraint)
      const refusal = postRefusal(error)
      return { ok: false, error: refusal === undefined ? error : new LedgerError(refusal) }
    }
    if (row.outcome === 'mismatch') return { ok: true, outcome: { outcome: 'mismatch' } }
    return { ok: true, outcome: { outcome: row.outcome, transaction: toTransaction(row as TransactionRow), queued: row.queued ?? 0 } }
  })
}

/**
 * A page of the transactions that touch `userId`, newest first, plus one look-ahead row (see cursors.page): a
 * backward range scan of entries' primary key (user_id, transaction_id) that stops after `limit + 1` rows, then
 * one primary-key lookup per row in transactions, so its cost does not depend on table size. The limit sits
 * inside the subquery on purpose: with it outside, the planner may pick a merge join that walks
 * transactions_pkey down from the newest row of the whole table (the cursor bounds entries, not transactions),
 * reading millions of rows for a deep page. Not executed until awaited, so scripts can EXPLAIN the same text.
 */
export function transactionsPageQuery (sql: Sql, userId: string, limit: number, before?: string) {
  return sql<TransactionRow[]>`
    select ${transactionColumns(sql, 't')}
      from (
        select e.transaction_id
          from entries e
         where e.user_id = ${userId}
           ${before === undefined ? sql`` : sql`and e.transaction_id < ${before}`}
         order by e.transaction_id desc
         limit ${limit + 1}
      ) page
      join transactions t on t.id = page.transaction_id
     order by page.transaction_id desc`
}

/** A page of the transactions a service client posted, newest first, plus one look-ahead row. */
export function clientTransactionsPageQuery (sql: Sql, clientId: string, limit: number, before?: string) {
  return sql<TransactionRow[]>`
    select ${transactionColumns(sql)}
      from transactions
     where client_id = ${clientId}
       ${before === undefined ? sql`` : sql`and id < ${before}`}
     order by id desc
     limit ${limit + 1}`
}

/** One transaction the caller could list: one that touches the user, or one the client posted. */
export async function findTransaction (sql: Sql, caller: Poster, id: string): Promise<Transaction | null> {
  const [row] = await sql<TransactionRow[]>`
    select ${transactionColumns(sql)}
      from transactions
     where id = ${id}
       and ${caller.kind === 'client' ? sql`client_id = ${caller.id}` : sql`(from_user_id = ${caller.id} or to_user_id = ${caller.id})`}`
  return row === undefined ? null : toTransaction(row)
}

/** Removes at most `batch` idempotency keys older than `ttlS` (housekeeping); returns how many went. */
export function purgeIdempotencyKeys (sql: Sql, ttlS: number, batch: number): Promise<number> {
  return sql<{ purged: number }[]>`select purge_idempotency_keys(${ttlS}, ${batch}) as purged`.then(([row]) => row?.purged ?? 0)
}

export async function listBalances (sql: Sql, userId: string) {
  const rows = await sql<{ currency: string, balance: string }[]>`
    select currency, balance from balances where user_id = ${userId} order by currency`
  return rows.map((row) => ({ currency: row.currency, balance: toMinorUnits(row.balance) }))
}
