import { createHash, randomBytes } from 'node:crypto'
import type { Scope } from '../../plugins/auth/index.ts'
import type { Sql } from '../../plugins/database/index.ts'
import { IdentityError } from './errors.ts'

/**
 * Client secrets are 256 random bits, stored as their SHA-256. A slow KDF protects secrets people choose, which
 * can be guessed; against 2^256 possibilities a fast hash is as strong, and it keeps the public token endpoint
 * cheap, so a flood of guesses costs the attacker as much as it costs us. The `lsk_` prefix makes a leaked secret
 * easy to find with secret scanners.
 */
const SECRET_PREFIX = 'lsk_'

export const newClientSecret = () => SECRET_PREFIX + randomBytes(32).toString('base64url')
export const hashClientSecret = (secret: string) => createHash('sha256').update(secret).digest()

export interface ServiceClient {
  id: string
  name: string
  scopes: Scope[]
  createdAt: string
  revokedAt: string | null
}

interface ClientRow {
  id: string
  name: string
  scopes: string
  created_at: Date
  revoked_at: Date | null
}

// postgres.js runs without fetch_types (plugins/database/index.ts), so text[] arrives as its text form; scopes never
// contain commas, quotes or braces, so `{a,b}` splits plainly.
const parseScopes = (text: string) => text.replace(/^\{|\}$/g, '').split(',').filter(Boolean) as Scope[]

const toClient = (row: ClientRow): ServiceClient => ({
  id: row.id,
  name: row.name,
  scopes: parseScopes(row.scopes),
  createdAt: row.created_at.toISOString(),
  revokedAt: row.revoked_at?.toISOString() ?? null
})

/** Creates a client and returns its secret, which exists nowhere else afterwards. */
export async function createServiceClient (sql: Sql, name: string, scopes: readonly Scope[]): Promise<{ client: ServiceClient, secret: string }> {
  const secret = newClientSecret()
  const [row] = await sql<ClientRow[]>`
    insert into service_clients (name, secret_hash, scopes)
    values (${name}, ${hashClientSecret(secret)}, ${`{${scopes.join(',')}}`}::text[])
    returning id, name, scopes::text as scopes, created_at, revoked_at`
  if (row === undefined) throw new Error('insert returned no row')
  return { client: toClient(row), secret }
}

export async function listServiceClients (sql: Sql): Promise<ServiceClient[]> {
  const rows = await sql<ClientRow[]>`
    select id, name, scopes::text as scopes, created_at, revoked_at from service_clients order by created_at, id`
  return rows.map(toClient)
}

/**
 * Revokes a client and records `client:<id>` in the revocation list in the same transaction, so every API process
 * refuses its live tokens within one poll. Returns false when there is no such client (or it was revoked before).
 */
export async function revokeServiceClient (sql: Sql, id: string): Promise<boolean> {
  return sql.begin(async (tx) => {
    const revoked = await tx`update service_clients set revoked_at = now() where id = ${id} and revoked_at is null returning id`
    await tx`
      insert into revocations (subject) values (${`client:${id}`})
      on conflict (subject) do update set revoked_at = now()`
    return revoked.length === 1
  })
}

/**
 * The active client with this id and secret, or null. The database compares (authenticate_client(), so the API's
 * role never reads a secret hash); unknown id, wrong secret and revoked client are one answer from one
 * primary-key lookup.
 */
export async function verifyClientCredentials (sql: Sql, id: string, secret: string): Promise<{ id: string, scopes: Scope[] } | null> {
  const [row] = await sql<{ id: string, scopes: string }[]>`
    select id, scopes from authenticate_client(${id}, ${hashClientSecret(secret)})`
  return row === undefined ? null : { id: row.id, scopes: parseScopes(row.scopes) }
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
