import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod'
import { conflict, forbidden, notFound } from '../../plugins/errors.ts'
import { publicRouteRateLimit } from '../../plugins/rate-limit.ts'
import { commonErrors, IdParamsSchema, ProblemSchema } from '../common/schemas.ts'
import { hashPassword } from './password.ts'
import { findPublicUser, findUser, insertUser, updateUser } from './queries.ts'
import { PatchUserBodySchema, SignupBodySchema, UserSchema, UserViewSchema } from './schemas.ts'

export const USER_CACHE = 'user'

export const usersRoutes: FastifyPluginAsyncZod = async (app) => {
  const { db, cache, config } = app

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
      response: { 201: UserSchema, 400: ProblemSchema, 409: ProblemSchema, 429: ProblemSchema }
    }
  }, async (request, reply) => {
    const { email, name, password } = request.body
    const user = await insertUser(db, { email, name, passwordHash: await hashPassword(password, config.PASSWORD_HASH_COST) })
    if (user === null) throw conflict('email_taken', 'An account with this email already exists.')
    return reply.code(201).header('location', `/users/${user.id}`).send(user)
  })

  app.get('/users/me', {
    schema: { operationId: 'getMe', tags: ['users'], summary: 'The caller, with email', response: { 200: UserSchema, 404: ProblemSchema, ...commonErrors } }
  }, async (request) => {
    const user = await findUser(db, request.user.id)
    if (user === null) throw notFound('User not found.')
    return user
  })

  app.get('/users/:id', {
    schema: {
      operationId: 'getUser',
      tags: ['users'],
      summary: 'A user profile (email only for the caller)',
      params: IdParamsSchema,
      response: { 200: UserViewSchema, 404: ProblemSchema, ...commonErrors }
    }
  }, async (request) => {
    const { id } = request.params
    // The caller's own profile includes the email, which is never cached, so it is read from the database.
    const user = id === request.user.id ? await findUser(db, id) : await cachedPublicUser(id)
    if (user === null) throw notFound('User not found.')
    return user
  })

  app.patch('/users/:id', {
    schema: {
      operationId: 'updateUser',
      tags: ['users'],
      summary: 'Update your own name or avatar',
      params: IdParamsSchema,
      body: PatchUserBodySchema,
      response: { 200: UserSchema, 403: ProblemSchema, 404: ProblemSchema, ...commonErrors }
    }
  }, async (request) => {
    if (request.params.id !== request.user.id) throw forbidden('You can only change your own profile.')
    const user = await updateUser(db, request.user.id, request.body)
    if (user === null) throw notFound('User not found.')
    await cache.invalidate(USER_CACHE, user.id)
    return user
  })
}
