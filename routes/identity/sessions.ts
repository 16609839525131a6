import { createHash, randomBytes } from 'node:crypto'
import type { Tier } from '../../plugins/auth/index.ts'
import type { Sql, TransactionSql } from '../../plugins/database/index.ts'

/**
 * Refresh tokens are 256 random bits, stored as their SHA-256 (like client secrets, routes/identity/clients.ts: a slow
 * KDF protects what people choose; against 2^256 possibilities a fast hash is as strong). The `lrt_` prefix makes
 * a leaked one easy to find with secret scanners, and it can never be mistaken for a JWT.
 */
const REFRESH_TOKEN_PREFIX = 'lrt_'
export const REFRESH_TOKEN_PATTERN = /^lrt_[A-Za-z0-9_-]{43}$/

export const newRefreshToken = () => REFRESH_TOKEN_PREFIX + randomBytes(32).toString('base64url')
export const hashRefreshToken = (token: string) => createHash('sha256').update(token).digest()

export const sessionSubject = (sessionId: string) => `session:${sessionId}`

// postgres.js runs without fetch_types (plugins/database/index.ts), so arrays go as their text form; session ids and
// subjects (uuids, `session:<uuid>`) hold no commas, quotes or braces.
const textArray = (values: readonly string[]) => `{${values.join(',')}}`

export type EndReason = 'logout' | 'password_changed' | 'refresh_token_reused'

export interface OpenedSession {
  sessionId: string
  refreshToken: string
}

/**
 * Opens a session for a user whose password was just verified at `passwordVersion`. The user row is read
 * FOR KEY SHARE: a password change holds it FOR UPDATE, so a login racing one waits, then sees the new version and
 * opens nothing (null), rather than leaving a session the change did not end.
 */
export async function openSession (sql: Sql, userId: string, passwordVersion: number, ttlS: number): Promise<OpenedSession | null> {
  const refreshToken = newRefreshToken()
  const [row] = await sql<{ id: string }[]>`
    with verified as (
      select id from users where id = ${userId} and password_version = ${passwordVersion} for key share
    ), opened as (
      insert into sessions (user_id, expires_at)
      select id, now() + make_interval(secs => ${ttlS}) from verified
      returning id
    )
    insert into refresh_tokens (token_hash, session_id)
    select ${hashRefreshToken(refreshToken)}, id from opened
    returning session_id as id`
  return row === undefined ? null : { sessionId: row.id, refreshToken }
}

export type RefreshOutcome =
  | { status: 'rotated', sessionId: string, userId: string, tier: Tier, refreshToken: string }
  /** Unknown, expired, or its session ended or its user gone. */
  | { status: 'refused' }
  /** Presented a second time: its session was ended now, with every token it issued. */
  | { status: 'reused', sessionId: string }

/**
 * Exchanges a refresh token for a new one in the same session. The token's row and its session's row are locked
 * first, so two requests with the same token are served one after the other: the first rotates, the second finds
 * the token used, which is the OAuth 2.0 Security BCP's sign of a stolen token, and ends the session. The session
 * lock also orders a rotation against a logout or password change ending it: whichever comes second sees the
 * other's result (never a fresh token in a session that has just ended).
 */
export async function rotateRefreshToken (sql: Sql, presented: string, ttlS: number): Promise<RefreshOutcome> {
  const tokenHash = hashRefreshToken(presented)
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
    const refreshToken = newRefreshToken()
    await tx`update refresh_tokens set used_at = now() where token_hash = ${tokenHash}`
    await tx`insert into refresh_tokens (token_hash, session_id) values (${hashRefreshToken(refreshToken)}, ${row.session_id})`
    await tx`update sessions set expires_at = now() + make_interval(secs => ${ttlS}) where id = ${row.session_id}`
    return { status: 'rotated', sessionId: row.session_id, userId: row.user_id, tier: row.tier, refreshToken } as const
  })
}

/**
 * Ends sessions and revokes their access tokens (`session:<id>` in the revocations table, which every API process
 * polls) in the caller's transaction. Returns the ids that were still live.
 */
export async function endSessions (tx: Sql | TransactionSql, sessionIds: readonly string[], reason: EndReason): Promise<string[]> {
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
 * Ends the session a refresh token belongs to, current or already used (RFC 7009 revocation: the token is the
 * authority, whoever presents it). Returns the session's id, or null for a token that is not ours.
 */
export async function endSessionOfRefreshToken (sql: Sql, presented: string): Promise<string | null> {
  return sql.begin(async (tx) => {
    const [row] = await tx<{ session_id: string }[]>`select session_id from refresh_tokens where token_hash = ${hashRefreshToken(presented)}`
    if (row === undefined) return null
    await endSessions(tx, [row.session_id], 'logout')
    return row.session_id
  })
}

/**
 * Sets a new password and ends every session of the user, in one transaction. The user row is locked first
 * (FOR UPDATE), so a login that verified the old password cannot open a session after the sessions were read
 * (openSession's FOR KEY SHARE waits for this lock, then finds the version moved on). Returns the ended session
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

/** Re-hashes at the current parameters after a successful login, unless the password changed meanwhile. */
export async function upgradePasswordHash (sql: Sql, userId: string, oldHash: string, newHash: string): Promise<void> {
  await sql`update users set password_hash = ${newHash} where id = ${userId} and password_hash = ${oldHash}`
}

/**
 * Deletes, in batches, sessions that are over (ended, or their refresh token expired; their refresh tokens go with
 * them), used refresh tokens older than a refresh token's lifetime (past it, a replay is refused as expired anyway),
 * and revocations older than the longest access token lifetime (they concern only expired tokens).
 */
export async function purgeSessions (sql: Sql, options: { refreshTokenTtlS: number, maxTokenAgeS: number, batch: number }): Promise<number> {
  const [row] = await sql<{ purged: number }[]>`
    with sessions_over as (
      delete from sessions where id in (
        select id from sessions where ended_at is not null or expires_at < now() limit ${options.batch}
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
