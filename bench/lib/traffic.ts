// Who sends what: tokens signed exactly as the API signs them (its signing options and claims on a throwaway
// Fastify instance, same secret, issuer and audience), and the request factories autocannon calls before each request.
import { randomUUID } from 'node:crypto'
import fastifyJwt from '@fastify/jwt'
import type autocannon from 'autocannon'
import Fastify from 'fastify'
import { clientClaims, signOptions, userClaims, type AuthOptions, type Scope, type Tier } from '../../plugins/auth/index.ts'
import { tagRoute } from './load.ts'

export interface Caller {
  id: string
  token: string
}

async function sign<T> (options: AuthOptions, subjects: T[], claims: (subject: T) => { sub: string, scope: string }): Promise<string[]> {
  const app = Fastify({ logger: false })
  await app.register(fastifyJwt, { secret: options.secret, sign: signOptions(options) })
  await app.ready()
  try {
    return subjects.map((subject) => app.jwt.sign(claims(subject)))
  } finally {
    await app.close()
  }
}

// Each caller gets a session id of its own: an access token's session is checked only against the revocation list
// each process holds in memory, so the bench's tokens exercise the same check without sessions in the database.
// A caller may name its session (to end it, as `session-check` does).
export const signTokens = (options: AuthOptions, users: Array<{ id: string, tier: Tier, sessionId?: string }>) =>
  sign(options, users, (user) => userClaims({ id: user.id, tier: user.tier, sessionId: user.sessionId ?? randomUUID() }))
export const signClientTokens = (options: AuthOptions, clients: Array<{ id: string, scopes: Scope[] }>) => sign(options, clients, clientClaims)

const pick = <T>(list: readonly T[]): T => list[Math.floor(Math.random() * list.length)]!

export type MixedRoute = 'GET /users/:id' | 'GET /transactions' | 'GET /feed' | 'POST /transactions'
export type PostKind = 'deposit' | 'withdrawal' | 'transfer'

export interface TrafficWorld {
  callers: Caller[]
  /** The service client that posts deposits and withdrawals for the callers. */
  funder: Caller
  /** Prefix that makes every Idempotency-Key of this run unique. */
  keyPrefix: string
}

let keyCounter = 0

/** A transfer from `caller` to another caller, or a deposit or withdrawal for `caller` posted by the funder. */
function postTransaction (world: TrafficWorld, caller: Caller, kinds: readonly PostKind[]): Partial<autocannon.Request> {
  const kind = pick(kinds)
  const key = `${world.keyPrefix}-${++keyCounter}`
  const body: Record<string, unknown> = { kind, amount: 1 + Math.floor(Math.random() * 100), currency: 'USD' }
  let poster = caller
  if (kind === 'transfer') {
    let to = pick(world.callers)
    while (to.id === caller.id) to = pick(world.callers)
    body.toUserId = to.id
  } else {
    poster = world.funder
    body.userId = caller.id
    body.reference = key
  }
  return {
    method: 'POST',
    path: '/transactions',
    headers: {
      authorization: `Bearer ${poster.token}`,
      'content-type': 'application/json',
      'idempotency-key': key
    },
    body: JSON.stringify(body)
  }
}

function getRoute (route: Exclude<MixedRoute, 'POST /transactions'>, world: TrafficWorld, caller: Caller, query = ''): Partial<autocannon.Request> {
  let path: string
  if (route === 'GET /users/:id') {
    // Someone else's profile: the caller's own is read from the database (it includes the email) and never cached.
    let other = pick(world.callers)
    while (other.id === caller.id) other = pick(world.callers)
    path = `/users/${other.id}`
  } else {
    path = route === 'GET /feed' ? '/feed' : '/transactions'
  }
  return { method: 'GET', path: `${path}${query}`, headers: { authorization: `Bearer ${caller.token}` }, body: '' }
}

export const MIXED_WEIGHTS: ReadonlyArray<[MixedRoute, number]> = [
  ['GET /users/:id', 0.3],
  ['GET /transactions', 0.25],
  ['GET /feed', 0.25],
  ['POST /transactions', 0.2]
]

/** One request entry whose setupRequest draws a route by weight and a random caller, for every request. */
export function mixedRequests (world: TrafficWorld, weights: ReadonlyArray<[MixedRoute, number]> = MIXED_WEIGHTS, kinds: readonly PostKind[] = ['deposit', 'withdrawal', 'transfer', 'transfer']): autocannon.Request[] {
  const total = weights.reduce((sum, [, w]) => sum + w, 0)
  return [{
    setupRequest: (request, context) => {
      let r = Math.random() * total
      let route: MixedRoute = weights[0]![0]
      for (const [name, weight] of weights) {
        route = name
        if ((r -= weight) < 0) break
      }
      tagRoute(context, route)
      const caller = pick(world.callers)
      const spec = route === 'POST /transactions' ? postTransaction(world, caller, kinds) : getRoute(route, world, caller)
      return { ...request, ...spec } as autocannon.Request
    }
  }]
}

/** GET `path(caller)` with a random caller from `callers` on every request. */
export function getRequests (callers: Caller[], path: (caller: Caller) => string, route: string): autocannon.Request[] {
  return [{
    setupRequest: (request, context) => {
      tagRoute(context, route)
      const caller = pick(callers)
      return { ...request, method: 'GET', path: path(caller), headers: { authorization: `Bearer ${caller.token}` }, body: '' } as autocannon.Request
    }
  }]
}

/** GET the given paths in order, each once, as `caller` (a miss-only run: every id is new to the cache). */
export function sequentialGets (caller: Caller, paths: string[], route: string): autocannon.Request[] {
  let next = 0
  return [{
    setupRequest: (request, context) => {
      tagRoute(context, route)
      const path = paths[next++ % paths.length]!
      return { ...request, method: 'GET', path, headers: { authorization: `Bearer ${caller.token}` }, body: '' } as autocannon.Request
    }
  }]
}
