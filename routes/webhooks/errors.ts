import type { ProblemError } from '../../plugins/errors/index.ts'
import { DomainError, problemFrom, type ProblemTable } from '../common/domain-errors.ts'
import { MAX_ENDPOINTS_PER_PRINCIPAL } from './schemas.ts'

/** Every refusal the webhook endpoints' operations can answer, and what each carries. */
interface WebhookErrorContexts {
  /** Someone else's endpoint is "not found", never "forbidden": its existence is not revealed. */
  endpoint_not_found: undefined
  /** Why the outbound policy refuses the URL (not https, a private address...). */
  url_not_allowed: { reason: string }
  endpoint_limit: undefined
}
export type WebhookErrorCode = keyof WebhookErrorContexts

export class WebhookError<Code extends WebhookErrorCode = WebhookErrorCode> extends DomainError<WebhookErrorContexts, Code> {}

const problems: ProblemTable<WebhookErrorContexts> = {
  endpoint_not_found: { status: 404, type: 'not_found', detail: 'Webhook endpoint not found.' },
  url_not_allowed: { status: 400, type: 'validation_error', detail: 'The webhook URL is not allowed.', errors: ({ reason }) => [{ path: 'url', message: reason }] },
  endpoint_limit: { status: 409, type: 'webhook_endpoint_limit', detail: `At most ${MAX_ENDPOINTS_PER_PRINCIPAL} webhook endpoints per account; delete one first.` }
}

export const toProblem = (error: WebhookError): ProblemError => problemFrom(problems, error)
