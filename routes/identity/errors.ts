import type { ProblemError } from '../../plugins/errors/index.ts'
import { DomainError, problemFrom, type ProblemTable } from '../common/domain-errors.ts'

/** Every refusal the identity operations (users, sessions, the token and revocation endpoints) can answer, and what each carries. */
interface IdentityErrorContexts {
  email_taken: undefined
  user_not_found: undefined
  /** The caller's token is valid but its account was deleted. */
  user_gone: undefined
  wrong_current_password: undefined
  password_changed_concurrently: undefined
  not_own_profile: undefined
  /** The login throttle holds the account: failed password checks in the window reached the limit. */
  account_locked: { retryAfterS: number, maxFailures: number }
  /** A bearer logout by a token that is not a user's session. */
  not_a_user_session: undefined
  // The OAuth 2.0 endpoints' refusals (RFC 6749 section 5.2, RFC 7009): the type is the OAuth error code.
  token_request_not_an_object: undefined
  grant_type_missing: undefined
  /** A grant_type string this server does not support. */
  grant_type_unsupported: { supported: readonly string[] }
  /** A grant_type that is not even a string. */
  grant_type_malformed: { supported: readonly string[] }
  scope_not_granted: { granted: readonly string[] }
  refresh_token_refused: undefined
  /** Wrong email or password: one answer for both. */
  wrong_credentials: undefined
  /** Unknown client, malformed client id, wrong secret or revoked client: one answer for all four. */
  invalid_client: undefined
  client_authenticated_twice: undefined
  client_id_mismatch: undefined
  client_token_not_revocable: undefined
}
export type IdentityErrorCode = keyof IdentityErrorContexts

export class IdentityError<Code extends IdentityErrorCode = IdentityErrorCode> extends DomainError<IdentityErrorContexts, Code> {}

// RFC 9110 asks every 401 for a challenge: at the token endpoint a client authenticates with HTTP Basic, elsewhere a bearer token.
const basicChallenge = () => ({ 'www-authenticate': 'Basic realm="ledger-api"' })
const bearerChallenge = () => ({ 'www-authenticate': 'Bearer' })
const grantTypeDetail = ({ supported }: { supported: readonly string[] }) => `grant_type must be one of: ${supported.join(', ')}.`

const problems: ProblemTable<IdentityErrorContexts> = {
  email_taken: { status: 409, type: 'email_taken', detail: 'An account with this email already exists.' },
  user_not_found: { status: 404, type: 'not_found', detail: 'User not found.' },
  user_gone: { status: 401, type: 'unauthorized', detail: 'The user no longer exists.', headers: bearerChallenge },
  wrong_current_password: { status: 403, type: 'forbidden', detail: 'The current password is wrong.' },
  password_changed_concurrently: { status: 409, type: 'password_changed_concurrently', detail: 'The password changed while this request ran; try again.' },
  not_own_profile: { status: 403, type: 'forbidden', detail: 'You can only change your own profile.' },
  account_locked: {
    status: 429,
    type: 'rate_limited',
    detail: ({ retryAfterS }) => `Too many failed password checks for this account; retry in ${retryAfterS} s.`,
    headers: ({ retryAfterS, maxFailures }) => ({
      'retry-after': String(retryAfterS),
      'ratelimit-limit': String(maxFailures),
      'ratelimit-remaining': '0',
      'ratelimit-reset': String(retryAfterS)
    })
  },
  not_a_user_session: { status: 401, type: 'unauthorized', detail: 'Missing or invalid credentials.', headers: bearerChallenge },
  token_request_not_an_object: { status: 400, type: 'invalid_request', oauthError: 'invalid_request', detail: 'Send the parameters as a form or a JSON object.' },
  grant_type_missing: { status: 400, type: 'invalid_request', oauthError: 'invalid_request', detail: 'grant_type is required.' },
  grant_type_unsupported: { status: 400, type: 'unsupported_grant_type', oauthError: 'unsupported_grant_type', detail: grantTypeDetail },
  grant_type_malformed: { status: 400, type: 'invalid_request', oauthError: 'invalid_request', detail: grantTypeDetail },
  scope_not_granted: { status: 400, type: 'invalid_scope', oauthError: 'invalid_scope', detail: ({ granted }) => `The client may have only: ${granted.join(' ')}.` },
  refresh_token_refused: { status: 400, type: 'invalid_grant', oauthError: 'invalid_grant', detail: 'The refresh token is invalid, expired, revoked or already used.' },
  wrong_credentials: { status: 401, type: 'invalid_grant', oauthError: 'invalid_grant', detail: 'Wrong email or password.', headers: basicChallenge },
  invalid_client: {
    status: 401,
    type: 'invalid_client',
    oauthError: 'invalid_client',
    detail: 'Client authentication failed: unknown client, malformed client id, wrong secret or revoked client.',
    headers: basicChallenge
  },
  client_authenticated_twice: { status: 400, type: 'invalid_request', oauthError: 'invalid_request', detail: 'Authenticate the client one way: HTTP Basic or client_secret in the body, not both.' },
  client_id_mismatch: { status: 400, type: 'invalid_request', oauthError: 'invalid_request', detail: 'The client_id in the body is not the one HTTP Basic authenticates.' },
  client_token_not_revocable: {
    status: 400,
    type: 'unsupported_token_type',
    oauthError: 'unsupported_token_type',
    detail: 'A service client\'s access token cannot be revoked on its own; revoke the client.'
  }
}

export const toProblem = (error: IdentityError): ProblemError => problemFrom(problems, error)
