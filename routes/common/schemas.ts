import { z } from 'zod'

/** RFC 9457 problem details, as every error response is shaped. */
export const ProblemSchema = z.object({
  type: z.string(),
  title: z.string(),
  status: z.number().int(),
  detail: z.string(),
  instance: z.string().optional(),
  errors: z.array(z.object({ path: z.string(), message: z.string() })).optional()
}).meta({ id: 'Problem' })

/** The error responses most authenticated routes can produce, for the OpenAPI document. */
export const commonErrors = {
  400: ProblemSchema,
  401: ProblemSchema,
  429: ProblemSchema,
  503: ProblemSchema
}

// PostgreSQL compares UUIDs case-insensitively; normalising here makes every comparison, cache key and
// invalidation in the app agree with the database on which user an id names.
export const UserIdSchema = z.uuid().toLowerCase()

export const IdParamsSchema = z.object({ id: UserIdSchema }).strict()
