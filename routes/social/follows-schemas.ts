import { z } from 'zod'
import { CursorParamSchema } from '../../plugins/auth/cursors.ts'

export const FOLLOWS_DEFAULT_LIMIT = 50
export const FOLLOWS_MAX_LIMIT = 100

export const FollowsQuerySchema = z.object({
  limit: z.coerce.number().int().min(1).max(FOLLOWS_MAX_LIMIT).default(FOLLOWS_DEFAULT_LIMIT),
  cursor: CursorParamSchema.optional()
}).strict()

export const FollowedUserSchema = z.object({
  id: z.uuid(),
  name: z.string(),
  avatarUrl: z.string().nullable()
}).meta({ id: 'FollowedUser' })

export const FollowsPageSchema = z.object({
  data: z.array(FollowedUserSchema),
  nextCursor: z.string().nullable()
}).meta({ id: 'FollowsPage' })

/**
 * What a following/followers cursor holds: the last row's sort key, the follow's created_at with all six
 * fractional digits (as in the feed's cursor) and the other user's id to break ties.
 */
export const FollowsPositionSchema = z.object({
  t: z.iso.datetime({ precision: 6 }),
  i: z.uuid()
}).strict()

export type FollowedUser = z.infer<typeof FollowedUserSchema>
export type FollowsPosition = z.infer<typeof FollowsPositionSchema>
