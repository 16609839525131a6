import { z } from 'zod'

// Control characters have no place in names or e-mail addresses; refusing them keeps logs and UIs sane.
// eslint-disable-next-line no-control-regex -- matching control characters is the point
const noControlChars = (value: string) => !/[\u0000-\u001f\u007f]/.test(value)

export const EmailSchema = z.string().trim().max(254).pipe(z.email()).transform((email) => email.toLowerCase())

export const NameSchema = z.string().trim().min(1).max(100).refine(noControlChars, { message: 'must not contain control characters' })

export const AvatarUrlSchema = z.url({ protocol: /^https?$/, hostname: z.regexes.domain }).max(2048).nullable()

// The upper bound keeps a huge password from turning the KDF into a denial of service.
export const PasswordSchema = z.string().min(12, 'must be at least 12 characters').max(256)

export const SignupBodySchema = z.object({
  email: EmailSchema,
  name: NameSchema,
  password: PasswordSchema
}).strict()

export const PatchUserBodySchema = z.object({
  name: NameSchema.optional(),
  avatarUrl: AvatarUrlSchema.optional()
}).strict().refine((body) => body.name !== undefined || body.avatarUrl !== undefined, { message: 'send at least one of name, avatarUrl' })

export const PublicUserSchema = z.object({
  id: z.uuid(),
  name: z.string(),
  avatarUrl: z.string().nullable(),
  createdAt: z.iso.datetime()
}).meta({ id: 'PublicUser' })

export const UserSchema = PublicUserSchema.extend({ email: z.string() }).meta({ id: 'User' })

/** GET /users/:id: the public shape, plus email when the caller asks about themselves. */
export const UserViewSchema = PublicUserSchema.extend({ email: z.string().optional() }).meta({ id: 'UserView' })

export type PublicUser = z.infer<typeof PublicUserSchema>
export type User = z.infer<typeof UserSchema>
