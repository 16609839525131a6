import { createHash, randomBytes } from 'node:crypto'
import type { Scope } from '../../plugins/auth/index.ts'
import type { Sql } from '../../plugins/database/index.ts'
import { IdentityError } from './errors.ts'
import { authenticateClient, insertServiceClient, type ServiceClient } from './repository.ts'

/**
 * Client secrets are 256 random bits, stored as their SHA-256. A slow KDF protects secrets people choose, which
 * can be guessed; against 2^256 possibilities a fast hash is as strong, and it keeps the public token endpoint
 * cheap, so a flood of guesses costs the attacker as much as it costs us. The `lsk_` prefix makes a leaked secret
 * easy to find with secret scanners.
 */
const SECRET_PREFIX = 'lsk_'

export const newClientSecret = () => SECRET_PREFIX + randomBytes(32).toString('base64url')
export const hashClientSecret = (secret: string) => createHash('sha256').update(secret).digest()

/** Creates a client and returns its secret, which exists nowhere else afterwards. */
export async function createServiceClient (sql: Sql, name: string, scopes: readonly Scope[]): Promise<{ client: ServiceClient, secret: string }> {
  const secret = newClientSecret()
  const client = await insertServiceClient(sql, { name, secretHash: hashClientSecret(secret), scopes })
  return { client, secret }
}

/** The active client with this id and secret, or null (authenticateClient). */
export async function verifyClientCredentials (sql: Sql, id: string, secret: string): Promise<{ id: string, scopes: Scope[] } | null> {
  return authenticateClient(sql, id, hashClientSecret(secret))
}

/** How a request to the token or revocation endpoint authenticates its client (RFC 6749 section 2.3.1). */
export type PresentedClient =
  | { method: 'client_secret_basic' | 'client_secret_post', id: string, secret: string }
  /** No secret: a public client's bare client_id (ignored), or nothing. */
  | { method: 'none', id?: string, secret?: undefined }
  | { method: 'invalid', error: IdentityError }

// RFC 6749 section 2.3.1: the id and secret are form-encoded before they are joined and base64-encoded.
function formDecode (value: string): string | null {
  try {
    return decodeURIComponent(value.replaceAll('+', ' '))
  } catch {
    return null
  }
}

/**
 * The client credentials a request presents: HTTP Basic (client_secret_basic, which every client library sends by
 * default), or client_id and client_secret in the body (client_secret_post). Using both is an invalid_request
 * (RFC 6749 section 2.3: one method per request); an Authorization header that is not well-formed Basic is an
 * invalid_client.
 */
export function clientAuthenticationOf (authorization: string | undefined, body: { client_id?: string, client_secret?: string }): PresentedClient {
  if (authorization === undefined) {
    if (body.client_secret !== undefined) return { method: 'client_secret_post', id: body.client_id ?? '', secret: body.client_secret }
    return { method: 'none', id: body.client_id }
  }
  const encoded = /^basic +([A-Za-z0-9+/]{1,1400}={0,2}) *$/i.exec(authorization)?.[1]
  const decoded = encoded === undefined ? '' : Buffer.from(encoded, 'base64').toString('utf8')
  const colon = decoded.indexOf(':')
  const id = colon < 0 ? null : formDecode(decoded.slice(0, colon))
  const secret = colon < 0 ? null : formDecode(decoded.slice(colon + 1))
  if (id === null || secret === null) return { method: 'invalid', error: new IdentityError('invalid_client') }
  if (body.client_secret !== undefined) {
    return { method: 'invalid', error: new IdentityError('client_authenticated_twice') }
  }
  if (body.client_id !== undefined && body.client_id !== id) {
    return { method: 'invalid', error: new IdentityError('client_id_mismatch') }
  }
  return { method: 'client_secret_basic', id, secret }
}
