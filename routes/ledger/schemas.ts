import { z } from 'zod'
import { CursorParamSchema } from '../../plugins/auth/cursors.ts'
import { AmountSchema, CurrencySchema } from './money.ts'
import { UserIdSchema } from '../common/schemas.ts'
import { MULTI_LINE } from '../common/text.ts'

export const TransactionKindSchema = z.enum(['deposit', 'withdrawal', 'transfer'])

const DescriptionSchema = z.string().max(500).superRefine(MULTI_LINE.refine)

// Idempotency keys and settlement references: echoed in logs and compared byte for byte, so visible ASCII only.
const VisibleAsciiSchema = z.string().min(1).max(255).regex(/^[\x21-\x7e]+$/, 'must be 1 to 255 visible ASCII characters')

/** A user moves their own money to another user. */
export const TransferBodySchema = z.object({
  kind: z.literal('transfer'),
  amount: AmountSchema,
  currency: CurrencySchema,
  toUserId: UserIdSchema,
  description: DescriptionSchema.optional()
}).strict().meta({ title: 'TransferRequest' })

/** A service client with funds:write moves money into (deposit) or out of (withdrawal) a user's balance. */
const fundingBody = <K extends 'deposit' | 'withdrawal'>(kind: K) => z.object({
  kind: z.literal(kind),
  userId: UserIdSchema,
  amount: AmountSchema,
  currency: CurrencySchema,
  /** The external settlement id: unique per client across all its deposits and withdrawals. */
  reference: VisibleAsciiSchema,
  description: DescriptionSchema.optional()
}).strict()

export const CreateTransactionBodySchema = z.discriminatedUnion('kind', [
  TransferBodySchema,
  fundingBody('deposit').meta({ title: 'DepositRequest' }),
  fundingBody('withdrawal').meta({ title: 'WithdrawalRequest' })
])

export const IdempotencyHeadersSchema = z.object({
  'idempotency-key': z.string({ error: (issue) => issue.input === undefined ? 'is required: 1 to 255 visible ASCII characters, the same on every retry of this request' : undefined })
    .min(1).max(255).regex(/^[\x21-\x7e]+$/, 'must be 1 to 255 visible ASCII characters')
})

export const TransactionSchema = z.object({
  id: z.string(),
  kind: TransactionKindSchema,
  amount: z.number().int(),
  currency: z.string(),
  fromUserId: z.uuid().nullable(),
  toUserId: z.uuid().nullable(),
  description: z.string().nullable(),
  /** The posting client's settlement reference (deposits and withdrawals); null for transfers. */
  reference: z.string().nullable(),
  createdAt: z.iso.datetime()
}).meta({ id: 'Transaction' })

export const TransactionPageSchema = z.object({
  data: z.array(TransactionSchema),
  nextCursor: z.string().nullable()
}).meta({ id: 'TransactionPage' })

export const ListTransactionsQuerySchema = z.object({
  limit: z.coerce.number().int().min(1).max(100).default(50),
  cursor: CursorParamSchema.optional()
}).strict()

// Transaction ids are positive int8 values sent as decimal strings. The range check compares strings (equal
// lengths compare like numbers) because Zod runs refinements even after a failed regex, and must not throw.
const INT8_MAX = '9223372036854775807'
const TransactionIdSchema = z.string().regex(/^[1-9][0-9]{0,18}$/, 'must be a transaction id')
  .refine((id) => id.length < INT8_MAX.length || (id.length === INT8_MAX.length && id <= INT8_MAX), { message: 'must be a transaction id' })

export const TransactionIdParamsSchema = z.object({ id: TransactionIdSchema }).strict()

/** Where a page ends: the id of its last (oldest) transaction. */
export const TransactionCursorSchema = z.object({ before: TransactionIdSchema }).strict()

export type CreateTransactionBody = z.infer<typeof CreateTransactionBodySchema>
export type Transaction = z.infer<typeof TransactionSchema>
