import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod'
import { publicRouteRateLimit } from '../../plugins/rate-limit/index.ts'
import { responses } from '../../plugins/openapi/index.ts'
import { IdParamsSchema } from '../common/schemas.ts'
import { z } from 'zod'
import { IdentityError, toProblem } from './errors.ts'
import { accountGuard } from './login-throttle.ts'
import { changePassword, findOwnCredentials, findPublicUser, findUser, insertUser, sessionSubject, updateUser } from './repository.ts'
import { ChangePasswordBodySchema, PatchUserBodySchema, SignupBodySchema, UserSchema, UserViewSchema } from './schemas.ts'

export const USER_CACHE = 'user'

export const usersRoutes: FastifyPluginAsyncZod = async (app) => {
  const { db, cache, config } = app
  const guard = accountGuard(app)

  // Public fields only: the cached value never holds the email or the password hash.
  const cachedPublicUser = (id: string) => cache.get(USER_CACHE, id, config.CACHE_TTL_S, () => findPublicUser(db, id))

  app.post('/users', {
    config: { public: true, rateLimit: publicRouteRateLimit('signup') },
    schema: {
      operationId: 'createUser',
      tags: ['users'],
      summary: 'Sign up',
      security: [],
      body: SignupBodySchema,
      ...responses({
        201: { schema: UserSchema, description: 'Signed up: the new user.', headers: ['Location'] },
        409: 'An account with this email already exists (emails compare case-insensitively).'
      })
    }
  }, async (request, reply) => {
    const { email, name, password } = request.body
    const user = await insertUser(db, { email, name, passwordHash: await app.passwords.hash(password) })
    if (user === null) throw toProblem(new IdentityError('email_taken'))
    return reply.code(201).header('location', `/users/${user.id}`).send(user)
  })

  app.get('/users/me', {
    schema: {
      operationId: 'getMe',
      tags: ['users'],
      summary: 'The caller, with email',
      ...responses({ 200: { schema: UserSchema, description: 'The caller.' }, 404: 'The caller\'s account no longer exists.' })
    }
  }, async (request) => {
    const user = await findUser(db, request.user.id)
    if (user === null) throw toProblem(new IdentityError('user_not_found'))
    return user
  })

  app.put('/users/me/password', {
    schema: {
      operationId: 'changePassword',
      tags: ['users'],
      summary: 'Change your password: every session of yours ends',
      description: 'A wrong currentPassword is 403 and changes nothing; it counts as a failed login for the account (429 once it is locked). On success every access and refresh token of the user stops ' +
        'working on every API process within a second; log in again with the new password.',
      body: ChangePasswordBodySchema,
      ...responses({
        204: { schema: z.null(), description: 'Changed: every session of the user has ended.' },
        403: 'The current password is wrong; nothing changed.',
        409: 'The password changed while this request ran; try again.',
        429: 'Too many wrong current passwords (or failed logins) for this account: locked until Retry-After, the right password included.'
      })
    }
  }, async (request, reply) => {
    const { currentPassword, newPassword } = request.body
    const credentials = await findOwnCredentials(db, request.user.id)
    if (credentials === null) throw toProblem(new IdentityError('user_gone'))
    const stored = credentials.password_hash
    // A wrong current password counts against the account like a failed login: a stolen access token must not
    // buy unlimited guesses at the password it would need to take the account over.
    const counted = await guard.admit(credentials.email)
    let valid
    try {
      valid = await app.passwords.verify(currentPassword, stored)
    } catch (error) {
      if (counted) guard.refund(credentials.email)
      throw error
    }
    if (!valid) throw toProblem(new IdentityError('wrong_current_password'))
    if (counted) guard.refund(credentials.email)
    const ended = await changePassword(db, request.user.id, stored, await app.passwords.hash(newPassword))
    if (ended === null) throw toProblem(new IdentityError('password_changed_concurrently'))
    app.revocations.markRevoked(ended.map(sessionSubject))
    return reply.code(204).send(null)
  })

  app.get('/users/:id', {
    schema: {
      operationId: 'getUser',
      tags: ['users'],
      summary: 'A user profile (email only for the caller)',
      params: IdParamsSchema,
      ...responses({ 200: { schema: UserViewSchema, description: 'The profile; email only when it is the caller\'s.' }, 404: 'No such user.' })
    }
  }, async (request) => {
    const { id } = request.params
    // The caller's own profile includes the email, which is never cached, so it is read from the database.
    const user = id === request.user.id ? await findUser(db, id) : await cachedPublicUser(id)
    if (user === null) throw toProblem(new IdentityError('user_not_found'))
    return user
  })

  app.patch('/users/:id', {
    schema: {
      operationId: 'updateUser',
      tags: ['users'],
      summary: 'Update your own name or avatar',
      params: IdParamsSchema,
      body: PatchUserBodySchema,
      ...responses({
        200: { schema: UserSchema, description: 'The updated profile.' },
        403: 'Another user\'s profile: only your own can be changed.',
        404: 'The caller\'s account no longer exists.'
      })
    }
  }, async (request) => {
    if (request.params.id !== request.user.id) throw toProblem(new IdentityError('not_own_profile'))
    const user = await updateUser(db, request.user.id, request.body)
    if (user === null) throw toProblem(new IdentityError('user_not_found'))
    await cache.invalidate(USER_CACHE, user.id)
    return user
  })
}
