import { z } from 'zod'
import { SINGLE_LINE } from '../common/text.ts'

export const EmailSchema = z.string().trim().max(254).pipe(z.email()).transform((email) => email.toLowerCase())

export const NameSchema = z.string().trim().min(1).max(100).superRefine(SINGLE_LINE.refine)

export const AvatarUrlSchema = z.url({ protocol: /^https?$/, hostname: z.regexes.domain }).max(2048)
  .superRefine(SINGLE_LINE.refine).nullable()

// The upper bound keeps a huge password from turning the KDF into a denial of service.
// Well-formed only: two different ill-formed passwords would otherwise hash the same.
export const PasswordSchema = z.string().min(12, 'must be at least 12 characters').max(256)
  .refine((value) => value.isWellFormed(), { message: 'must be well-formed Unicode' })

export const SignupBodySchema = z.object({
  email: EmailSchema,
  name: NameSchema,
  password: PasswordSchema
}).strict()

export const ChangePasswordBodySchema = z.object({
  currentPassword: z.string().min(1).max(256),
  newPassword: PasswordSchema
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
