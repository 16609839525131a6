import { z } from 'zod'
import { ProblemSchema } from '../../plugins/errors/index.ts'

export { ProblemSchema }

// PostgreSQL compares UUIDs case-insensitively; normalising here makes every comparison, cache key and
// invalidation in the app agree with the database on which user an id names.
export const UserIdSchema = z.uuid().toLowerCase()

export const IdParamsSchema = z.object({ id: UserIdSchema }).strict()
