import { z } from 'zod'
import { CursorParamSchema } from '../../plugins/auth/cursors.ts'
import { formattingProblem } from '../common/text.ts'

export const POST_BODY_MAX_CHARS = 5000
export const FEED_DEFAULT_LIMIT = 20
export const FEED_MAX_LIMIT = 50

/**
 * Why a post body is refused, or undefined when it is fine. The body is stored exactly as sent (no trimming, no
 * normalization), so the only refusals are what PostgreSQL `text` cannot hold byte for byte:
 * - the length limit counts characters (code points) like the table's `length(body)` CHECK, not UTF-16 units,
 *   so 5000 emoji are accepted and the API and the database agree on every body;
 * - U+0000: PostgreSQL text cannot store NUL, so it is a 400 here instead of a 500 from the driver;
 * - unpaired surrogates: they cannot be encoded as UTF-8 and would silently come back as U+FFFD;
 * - invisible formatting characters (bidi overrides, zero-width characters: routes/common/text.ts says exactly
 *   which), the tricks that make a post look like something it is not, and more combining marks on one character
 *   than any script needs. Other control characters stay allowed in a body (they are stored and returned as JSON
 *   escapes).
 */
function postBodyProblem (body: string): string | undefined {
  if (body.length === 0) return 'must not be empty'
  // The UTF-16 length bounds the work before counting code points (a code point is at most two units).
  if (body.length > POST_BODY_MAX_CHARS * 2 || [...body].length > POST_BODY_MAX_CHARS) {
    return `must be at most ${POST_BODY_MAX_CHARS} characters`
  }
  if (body.includes('\u0000')) return 'must not contain NUL characters (U+0000)'
  if (!body.isWellFormed()) return 'must be well-formed Unicode (no unpaired surrogates)'
  return formattingProblem(body)
}

// One check producing at most one message, so a bad body is one entry in the problem's `errors`.
export const PostBodyTextSchema = z.string().superRefine((body, ctx) => {
  const problem = postBodyProblem(body)
  if (problem !== undefined) ctx.addIssue({ code: 'custom', message: problem })
}).meta({ minLength: 1, maxLength: POST_BODY_MAX_CHARS, description: 'Stored and returned exactly as sent.' })

/** The author is always the caller and the post goes on the author's feed and their followers': any other field
 * (`userId`, `authorId` ...) is a 400, never silently ignored. */
export const CreatePostBodySchema = z.object({
  body: PostBodyTextSchema
}).strict()

/**
 * Post ids are decimal bigints (identity): anything else, or above int8's range, is a 400 before the database. (Zod
 * runs the refinement even after the regex failed, hence its own guard before BigInt.)
 */
export const PostIdParamsSchema = z.object({
  id: z.string().regex(/^[1-9][0-9]{0,18}$/, 'is not a post id').refine((id) => !/^[0-9]{1,19}$/.test(id) || BigInt(id) <= 9223372036854775807n, { message: 'is not a post id' })
}).strict()

export const FeedQuerySchema = z.object({
  limit: z.coerce.number().int().min(1).max(FEED_MAX_LIMIT).default(FEED_DEFAULT_LIMIT),
  cursor: CursorParamSchema.optional()
}).strict()

export const PostAuthorSchema = z.object({
  id: z.uuid(),
  name: z.string(),
  avatarUrl: z.string().nullable()
}).meta({ id: 'PostAuthor' })

export const PostSchema = z.object({
  id: z.string(),
  body: z.string(),
  createdAt: z.iso.datetime(),
  author: PostAuthorSchema
}).meta({ id: 'Post' })

export const FeedPageSchema = z.object({
  data: z.array(PostSchema),
  nextCursor: z.string().nullable()
}).meta({ id: 'FeedPage' })

/**
 * What a feed cursor holds: the last row's sort key. `t` is created_at as PostgreSQL prints it, with all six
 * fractional digits, because a JS Date keeps only milliseconds and posts made within one millisecond would
 * then be skipped or repeated across pages. `i` (the id, a decimal bigint) breaks ties between equal `t`.
 */
export const FeedPositionSchema = z.object({
  t: z.iso.datetime({ precision: 6 }),
  i: z.string().regex(/^[1-9][0-9]{0,18}$/)
}).strict()

export type Post = z.infer<typeof PostSchema>
export type FeedPage = z.infer<typeof FeedPageSchema>
export type FeedPosition = z.infer<typeof FeedPositionSchema>

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
