import type { ProblemError } from '../../plugins/errors/index.ts'
import { DomainError, problemFrom, type ProblemTable } from '../common/domain-errors.ts'

/** Every refusal the ledger's operations can answer, and what each carries (nothing: their answers are fixed). */
interface LedgerErrorContexts {
  insufficient_funds: undefined
  user_not_found: undefined
  balance_limit_exceeded: undefined
  caller_not_found: undefined
  transfer_to_self: undefined
  client_revoked: undefined
  reference_used: undefined
  idempotency_key_reused: undefined
  transaction_not_found: undefined
}
export type LedgerErrorCode = keyof LedgerErrorContexts

export class LedgerError<Code extends LedgerErrorCode = LedgerErrorCode> extends DomainError<LedgerErrorContexts, Code> {}

const bearer = () => ({ 'www-authenticate': 'Bearer' })

const problems: ProblemTable<LedgerErrorContexts> = {
  insufficient_funds: { status: 422, type: 'insufficient_funds', detail: 'The balance is too low for this amount; nothing was written.' },
  user_not_found: { status: 404, type: 'not_found', detail: 'The user does not exist.' },
  balance_limit_exceeded: { status: 422, type: 'balance_limit_exceeded', detail: 'The recipient balance would pass the largest amount the ledger holds.' },
  caller_not_found: { status: 401, type: 'unauthorized', detail: 'The account this token was issued for no longer exists.', headers: bearer },
  transfer_to_self: { status: 400, type: 'validation_error', detail: 'A transfer needs another user.', errors: () => [{ path: 'toUserId', message: 'must not be your own id' }] },
  client_revoked: { status: 401, type: 'unauthorized', detail: 'The client was revoked.', headers: bearer },
  reference_used: { status: 409, type: 'reference_used', detail: 'This reference was already used by another transaction of this client; nothing was written.' },
  idempotency_key_reused: { status: 422, type: 'idempotency_key_reused', detail: 'This Idempotency-Key was already used with a different request.' },
  transaction_not_found: { status: 404, type: 'not_found', detail: 'Transaction not found.' }
}

export const toProblem = (error: LedgerError): ProblemError => problemFrom(problems, error)
