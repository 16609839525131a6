import type { Sql } from '../../plugins/database/index.ts'
import type { PublicUser, User } from './schemas.ts'

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
