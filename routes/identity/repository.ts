import type { Scope, Tier } from '../../plugins/auth/index.ts'
import type { Sql, TransactionSql } from '../../plugins/database/index.ts'
import type { PublicUser, User } from './schemas.ts'

// Users

interface UserRow {
  id: string
  email: string
  name: string
  avatar_url: string | null
  created_at: Date
}

export const toPublicUser = (row: UserRow): PublicUser => ({
  id: row.id,
  name: row.name,
  avatarUrl: row.avatar_url,
  createdAt: row.created_at.toISOString()
})

export const toUser = (row: UserRow): User => ({ ...toPublicUser(row), email: row.email })

/** Inserts a user; returns null when the email is taken (unique violation), without raising. */
export async function insertUser (sql: Sql, user: { email: string, name: string, passwordHash: string }): Promise<User | null> {
  const [row] = await sql<UserRow[]>`
    insert into users (email, name, password_hash)
    values (${user.email}, ${user.name}, ${user.passwordHash})
    on conflict (email) do nothing
    returning id, email, name, avatar_url, created_at`
  return row === undefined ? null : toUser(row)
}

export async function findUser (sql: Sql, id: string): Promise<User | null> {
  const [row] = await sql<UserRow[]>`select id, email, name, avatar_url, created_at from users where id = ${id}`
  return row === undefined ? null : toUser(row)
}

export async function findPublicUser (sql: Sql, id: string): Promise<PublicUser | null> {
  const [row] = await sql<UserRow[]>`select id, name, avatar_url, created_at from users where id = ${id}`
  return row === undefined ? null : toPublicUser(row)
}

export async function findCredentials (sql: Sql, email: string) {
  const [row] = await sql<{ id: string, password_hash: string, password_version: number, tier: 'standard' | 'pro' }[]>`
    select id, password_hash, password_version, tier from users where email = ${email}`
  return row ?? null
}

export async function findOwnCredentials (sql: Sql, id: string): Promise<{ email: string, password_hash: string } | null> {
  const [row] = await sql<{ email: string, password_hash: string }[]>`select email, password_hash from users where id = ${id}`
  return row ?? null
}

export async function updateUser (sql: Sql, id: string, changes: { name?: string | undefined, avatarUrl?: string | null | undefined }): Promise<User | null> {
  const [row] = await sql<UserRow[]>`
    update users set
      name = coalesce(${changes.name ?? null}, name),
      avatar_url = case when ${changes.avatarUrl !== undefined} then ${changes.avatarUrl ?? null} else avatar_url end,
      updated_at = now()
    where id = ${id}
    returning id, email, name, avatar_url, created_at`
  return row === undefined ? null : toUser(row)
}

/** Re-hashes at the current parameters after a successful login, unless the password changed meanwhile. */
export async function upgradePasswordHash (sql: Sql, userId: string, oldHash: string, newHash: string): Promise<void> {
  await sql`update users set password_hash = ${newHash} where id = ${userId} and password_hash = ${oldHash}`
}

// Sessions and refresh tokens

type EndReason = 'logout' | 'password_changed' | 'refresh_token_reused'

/** The subject a session's access tokens are revoked under (the revocations table, polled by every API process). */
export const sessionSubject = (sessionId: string) => `session:${sessionId}`

// postgres.js runs without fetch_types (plugins/database/index.ts), so arrays go as their text form; session ids and
// subjects (uuids, `session:<uuid>`) hold no commas, quotes or braces.
const textArray = (values: readonly string[]) => `{${values.join(',')}}`

/**
 * Opens a session with its first refresh token (stored as its hash) for a user whose password was just verified at
 * `passwordVersion`; returns the session's id. The user row is read FOR KEY SHARE: a password change holds it FOR
 * UPDATE, so a login racing one waits, then sees the new version and opens nothing (null), rather than leaving a
 * session the change did not end.
 */
export async function insertSession (sql: Sql, session: { userId: string, passwordVersion: number, ttlS: number, refreshTokenHash: Buffer }): Promise<string | null> {
  const { userId, passwordVersion, ttlS, refreshTokenHash } = session
  const [row] = await sql<{ id: string }[]>`
    with verified as (
      select id from users where id = ${userId} and password_version = ${passwordVersion} for key share
    ), opened as (
      insert into sessions (user_id, expires_at)
      select id, now() + make_interval(secs => ${ttlS}) from verified
      returning id
    )
    insert into refresh_tokens (token_hash, session_id)
    select ${refreshTokenHash}, id from opened
    returning session_id as id`
  return row?.id ?? null
}

export type RefreshTokenRotation =
  | { status: 'rotated', sessionId: string, userId: string, tier: Tier }
  /** Unknown, expired, or its session ended or its user gone. */
  | { status: 'refused' }
  /** Presented a second time: its session was ended now, with every token it issued. */
  | { status: 'reused', sessionId: string }

/**
 * Marks the refresh token with hash `tokenHash` used and stores `nextTokenHash` in its place in the same session,
 * whose life is extended by `ttlS`. The token's row and its session's row are locked first, so two requests with the
 * same token are served one after the other: the first rotates, the second finds the token used, which is the OAuth
 * 2.0 Security BCP's sign of a stolen token, and ends the session. The session lock also orders a rotation against a
 * logout or password change ending it: whichever comes second sees the other's result (never a fresh token in a
 * session that has just ended).
 */
export async function rotateRefreshToken (sql: Sql, rotation: { tokenHash: Buffer, nextTokenHash: Buffer, ttlS: number }): Promise<RefreshTokenRotation> {
  const { tokenHash, nextTokenHash, ttlS } = rotation
  return sql.begin(async (tx) => {
    const [row] = await tx<{ session_id: string, used: boolean, ended: boolean, expired: boolean, user_id: string, tier: Tier }[]>`
      select r.session_id, r.used_at is not null as used, s.ended_at is not null as ended, s.expires_at <= now() as expired,
             s.user_id, u.tier
        from refresh_tokens r
        join sessions s on s.id = r.session_id
        join users u on u.id = s.user_id
       where r.token_hash = ${tokenHash}
         for update of r, s`
    if (row === undefined || row.ended) return { status: 'refused' } as const
    if (row.used) {
      await endSessions(tx, [row.session_id], 'refresh_token_reused')
      return { status: 'reused', sessionId: row.session_id } as const
    }
    if (row.expired) return { status: 'refused' } as const
    await tx`update refresh_tokens set used_at = now() where token_hash = ${tokenHash}`
    await tx`insert into refresh_tokens (token_hash, session_id) values (${nextTokenHash}, ${row.session_id})`
    await tx`update sessions set expires_at = now() + make_interval(secs => ${ttlS}) where id = ${row.session_id}`
    return { status: 'rotated', sessionId: row.session_id, userId: row.user_id, tier: row.tier } as const
  })
}

/**
 * Ends sessions and revokes their access tokens (`session:<id>` in the revocations table, which every API process
 * polls) in the caller's transaction. Returns the ids that were still live.
 */
async function endSessions (tx: Sql | TransactionSql, sessionIds: readonly string[], reason: EndReason): Promise<string[]> {
  if (sessionIds.length === 0) return []
  const ended = await tx<{ id: string }[]>`
    update sessions set ended_at = now(), end_reason = ${reason}
     where id = any(${textArray(sessionIds)}::uuid[]) and ended_at is null
    returning id`
  await revokeSubjects(tx, sessionIds.map(sessionSubject))
  return ended.map((row) => row.id)
}

async function revokeSubjects (tx: Sql | TransactionSql, subjects: readonly string[]) {
  await tx`
    insert into revocations (subject) select unnest(${textArray(subjects)}::text[])
    on conflict (subject) do update set revoked_at = now()`
}

/** Ends the caller's own session (logout). */
export async function endSession (sql: Sql, userId: string, sessionId: string): Promise<void> {
  await sql.begin(async (tx) => {
    const [own] = await tx`select 1 from sessions where id = ${sessionId} and user_id = ${userId}`
    // A token's sid is signed by us, so it is the caller's; the check keeps a bug elsewhere from ending another's.
    if (own !== undefined) await endSessions(tx, [sessionId], 'logout')
    else await revokeSubjects(tx, [sessionSubject(sessionId)])
  })
}

/**
 * Ends the session the refresh token with hash `tokenHash` belongs to, current or already used. Returns the
 * session's id, or null for a token that is not ours.
 */
export async function endSessionOfRefreshToken (sql: Sql, tokenHash: Buffer): Promise<string | null> {
  return sql.begin(async (tx) => {
    const [row] = await tx<{ session_id: string }[]>`select session_id from refresh_tokens where token_hash = ${tokenHash}`
    if (row === undefined) return null
    await endSessions(tx, [row.session_id], 'logout')
    return row.session_id
  })
}

/**
 * Sets a new password and ends every session of the user, in one transaction. The user row is locked first
 * (FOR UPDATE), so a login that verified the old password cannot open a session after the sessions were read
 * (insertSession's FOR KEY SHARE waits for this lock, then finds the version moved on). Returns the ended session
 * ids, or null when the stored hash changed since it was verified (a concurrent change: the caller retries).
 */
export async function changePassword (sql: Sql, userId: string, verifiedHash: string, newHash: string): Promise<string[] | null> {
  return sql.begin(async (tx) => {
    const [user] = await tx<{ password_hash: string }[]>`select password_hash from users where id = ${userId} for update`
    if (user === undefined || user.password_hash !== verifiedHash) return null
    await tx`
      update users set password_hash = ${newHash}, password_version = password_version + 1, updated_at = now()
       where id = ${userId}`
    const live = await tx<{ id: string }[]>`select id from sessions where user_id = ${userId} and ended_at is null`
    await endSessions(tx, live.map((row) => row.id), 'password_changed')
    return live.map((row) => row.id)
  })
}

/**
 * Deletes, in batches, sessions that are over (ended longer ago than the longest access token lifetime, or their
 * refresh token expired; their refresh tokens go with them), used refresh tokens older than a refresh token's
 * lifetime (past it, a replay is refused as expired anyway), and revocations older than the longest access token
 * lifetime (they concern only expired tokens). An ended session stays as long as a token issued under it could
 * still be presented, so why it ended (a logout, a password change, a replayed refresh token) can be read while
 * that matters; its refresh tokens are refused meanwhile because it has ended.
 */
export async function purgeSessions (sql: Sql, options: { refreshTokenTtlS: number, maxTokenAgeS: number, batch: number }): Promise<number> {
  const [row] = await sql<{ purged: number }[]>`
    with sessions_over as (
      delete from sessions where id in (
        select id from sessions where ended_at < now() - make_interval(secs => ${options.maxTokenAgeS}) or expires_at < now() limit ${options.batch}
      ) returning 1
    ), tokens_over as (
      delete from refresh_tokens where token_hash in (
        select token_hash from refresh_tokens where used_at < now() - make_interval(secs => ${options.refreshTokenTtlS}) limit ${options.batch}
      ) returning 1
    ), revocations_over as (
      delete from revocations where subject in (
        select subject from revocations where revoked_at < now() - make_interval(secs => ${options.maxTokenAgeS}) limit ${options.batch}
      ) returning 1
    )
    select ((select count(*) from sessions_over) + (select count(*) from tokens_over) + (select count(*) from revocations_over))::int as purged`
  return row?.purged ?? 0
}

// Service clients

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

/** Inserts a client with the hash of its secret (the secret itself is never stored). */
export async function insertServiceClient (sql: Sql, client: { name: string, secretHash: Buffer, scopes: readonly Scope[] }): Promise<ServiceClient> {
  const { name, secretHash, scopes } = client
  const [row] = await sql<ClientRow[]>`
    insert into service_clients (name, secret_hash, scopes)
    values (${name}, ${secretHash}, ${`{${scopes.join(',')}}`}::text[])
    returning id, name, scopes::text as scopes, created_at, revoked_at`
  if (row === undefined) throw new Error('insert returned no row')
  return toClient(row)
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
 * The active client with this id and secret hash, or null. The database compares (authenticate_client(), so the
 * API's role never reads a secret hash); unknown id, wrong secret and revoked client are one answer from one
 * primary-key lookup.
 */
export async function authenticateClient (sql: Sql, id: string, secretHash: Buffer): Promise<{ id: string, scopes: Scope[] } | null> {
  const [row] = await sql<{ id: string, scopes: string }[]>`
    select id, scopes from authenticate_client(${id}, ${secretHash})`
  return row === undefined ? null : { id: row.id, scopes: parseScopes(row.scopes) }
}
