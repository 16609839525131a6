import type { ProblemError } from '../../plugins/errors/index.ts'
import { DomainError, problemFrom, type ProblemTable } from '../common/domain-errors.ts'

/** Every refusal the social operations (follows, posts) can answer, and what each carries (nothing: their answers are fixed). */
interface SocialErrorContexts {
  follow_self: undefined
  /** The followee, or the posting caller's own account, does not exist. */
  user_not_found: undefined
  /** Someone else's post and no post at all are the same answer. */
  post_not_found: undefined
}
export type SocialErrorCode = keyof SocialErrorContexts

export class SocialError<Code extends SocialErrorCode = SocialErrorCode> extends DomainError<SocialErrorContexts, Code> {}

const problems: ProblemTable<SocialErrorContexts> = {
  follow_self: { status: 400, type: 'validation_error', detail: 'You cannot follow yourself.', errors: () => [{ path: 'id', message: 'must not be your own id' }] },
  user_not_found: { status: 404, type: 'not_found', detail: 'User not found.' },
  post_not_found: { status: 404, type: 'not_found', detail: 'Post not found.' }
}

export const toProblem = (error: SocialError): ProblemError => problemFrom(problems, error)
