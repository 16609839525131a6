import type { Sql, TransactionSql } from '../../plugins/database/index.ts'
import type { FollowedUser, FollowsPosition } from './follows-schemas.ts'

export interface FollowsRow {
  id: string
  name: string
  avatar_url: string | null
  position_ts: string
}

export const toFollowedUser = (row: FollowsRow): FollowedUser => ({ id: row.id, name: row.name, avatarUrl: row.avatar_url })
export const followsPositionOf = (row: FollowsRow): FollowsPosition => ({ t: row.position_ts, i: row.id })

/**
 * Follows `followeeId` (one statement): `exists` is false for an unknown user (404; also when the caller's own
 * row is gone, a deleted account with a live token, instead of a foreign-key error), `created` false when the
 * follow was already there (the PUT is idempotent and queues nothing the second time).
 */
export async function insertFollow (tx: TransactionSql, followerId: string, followeeId: string): Promise<{ exists: boolean, created: boolean }> {
  const [row] = await tx<{ exists: boolean, created: boolean }[]>`
    with target as (
      select t.id from users t join users f on f.id = ${followerId} where t.id = ${followeeId}
    ), created as (
      insert into follows (follower_id, followee_id)
      select ${followerId}, id from target
      on conflict do nothing
      returning 1
    )
    select exists (select 1 from target) as exists, exists (select 1 from created) as created`
  return row ?? { exists: false, created: false }
}

/** Unfollows; true when there was a follow to remove. */
export async function deleteFollow (tx: TransactionSql, followerId: string, followeeId: string): Promise<boolean> {
  const rows = await tx`delete from follows where follower_id = ${followerId} and followee_id = ${followeeId} returning 1`
  return rows.length > 0
}

const position = (sql: Sql, column: string, after: FollowsPosition | undefined) => after === undefined
  ? sql``
  : sql`and (f.created_at, ${sql(column)}) < (${after.t}::text::timestamptz, ${after.i}::uuid)`

/**
 * Whom `userId` follows, newest follow first, with the look-ahead row: one range scan of follows_following_idx
 * (follower_id, created_at desc, followee_id desc) joined to users by primary key.
 */
export function followingPageQuery (sql: Sql, userId: string, limit: number, after?: FollowsPosition) {
  return sql<FollowsRow[]>`
    select u.id, u.name, u.avatar_url,
           to_char(f.created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as position_ts
      from follows f
      join users u on u.id = f.followee_id
     where f.follower_id = ${userId}
       ${position(sql, 'f.followee_id', after)}
     order by f.created_at desc, f.followee_id desc
     limit ${limit + 1}`
}

/** Who follows `userId`, newest first: the same shape over follows_followers_idx. */
export function followersPageQuery (sql: Sql, userId: string, limit: number, after?: FollowsPosition) {
  return sql<FollowsRow[]>`
    select u.id, u.name, u.avatar_url,
           to_char(f.created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as position_ts
      from follows f
      join users u on u.id = f.follower_id
     where f.followee_id = ${userId}
       ${position(sql, 'f.follower_id', after)}
     order by f.created_at desc, f.follower_id desc
     limit ${limit + 1}`
}
