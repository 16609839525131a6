import { createHash, randomBytes } from 'node:crypto'
import type { Sql } from '../../plugins/database/index.ts'
import { endSessionOfRefreshToken, insertSession, rotateRefreshToken, type RefreshTokenRotation } from './repository.ts'

/**
 * Refresh tokens are 256 random bits, stored as their SHA-256 (like client secrets, routes/identity/clients.ts: a slow
 * KDF protects what people choose; against 2^256 possibilities a fast hash is as strong). The `lrt_` prefix makes
 * a leaked one easy to find with secret scanners, and it can never be mistaken for a JWT.
 */
const REFRESH_TOKEN_PREFIX = 'lrt_'
export const REFRESH_TOKEN_PATTERN = /^lrt_[A-Za-z0-9_-]{43}$/

export const newRefreshToken = () => REFRESH_TOKEN_PREFIX + randomBytes(32).toString('base64url')
export const hashRefreshToken = (token: string) => createHash('sha256').update(token).digest()

export interface OpenedSession {
  sessionId: string
  refreshToken: string
}

/**
 * Opens a session for a user whose password was just verified at `passwordVersion`, with a new refresh token; null
 * when the password changed meanwhile (insertSession).
 */
export async function openSession (sql: Sql, userId: string, passwordVersion: number, ttlS: number): Promise<OpenedSession | null> {
  const refreshToken = newRefreshToken()
  const sessionId = await insertSession(sql, { userId, passwordVersion, ttlS, refreshTokenHash: hashRefreshToken(refreshToken) })
  return sessionId === null ? null : { sessionId, refreshToken }
}

export type RefreshOutcome =
  | (Extract<RefreshTokenRotation, { status: 'rotated' }> & { refreshToken: string })
  | Exclude<RefreshTokenRotation, { status: 'rotated' }>

/**
 * Exchanges a refresh token for a new one in the same session (rotateRefreshToken: a token presented a second time
 * ends its session). The new token is drawn first and handed out only when the rotation stored it.
 */
export async function exchangeRefreshToken (sql: Sql, presented: string, ttlS: number): Promise<RefreshOutcome> {
  const refreshToken = newRefreshToken()
  const rotation = await rotateRefreshToken(sql, { tokenHash: hashRefreshToken(presented), nextTokenHash: hashRefreshToken(refreshToken), ttlS })
  return rotation.status === 'rotated' ? { ...rotation, refreshToken } : rotation
}

/**
 * Ends the session a refresh token belongs to, current or already used (RFC 7009 revocation: the token is the
 * authority, whoever presents it). Returns the session's id, or null for a token that is not ours.
 */
export async function revokeRefreshToken (sql: Sql, presented: string): Promise<string | null> {
  return endSessionOfRefreshToken(sql, hashRefreshToken(presented))
}
