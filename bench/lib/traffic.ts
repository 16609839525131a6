// Who sends what: tokens signed exactly as the API signs them (its signing options and claims on a throwaway
// Fastify instance, same secret, issuer and audience), and the request factories autocannon calls before each request.
import { randomUUID } from 'node:crypto'
import fastifyJwt from '@fastify/jwt'
import type autocannon from 'autocannon'
import Fastify from 'fastify'
import { clientClaims, signOptions, userClaims, type AuthOptions, type Scope, type Tier } from '../../plugins/auth/index.ts'
import { tagRoute } from './load.ts'

export interface Caller { id: string, token: string }

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
/** A caller other than `caller`. */
const other = (callers: readonly Caller[], caller: Caller) => {
  let to = pick(callers)
  while (to.id === caller.id) to = pick(callers)
  return to
}
const get = (request: autocannon.Request, caller: Caller, path: string) =>
  ({ ...request, method: 'GET', path, headers: { authorization: `Bearer ${caller.token}` }, body: '' }) as autocannon.Request

export type MixedRoute = 'GET /users/:id' | 'GET /transactions' | 'GET /feed' | 'POST /transactions'
export type PostKind = 'deposit' | 'withdrawal' | 'transfer'

export interface TrafficWorld {
  callers: Caller[]
  /** The service client that posts deposits and withdrawals for the callers. */
  funder: Caller
  /** Prefix that makes every Idempotency-Key of this run unique, and the count of keys used so far. */
  keyPrefix: string
  keys: number
}

/** A transfer from `caller` to another caller, or a deposit or withdrawal for `caller` posted by the funder. */
function postTransaction (request: autocannon.Request, world: TrafficWorld, caller: Caller, kinds: readonly PostKind[]): autocannon.Request {
  const kind = pick(kinds)
  const key = `${world.keyPrefix}-${++world.keys}`
  const amount = 1 + Math.floor(Math.random() * 100)
  const body = kind === 'transfer'
    ? { kind, amount, currency: 'USD', toUserId: other(world.callers, caller).id }
    : { kind, amount, currency: 'USD', userId: caller.id, reference: key }
  const poster = kind === 'transfer' ? caller : world.funder
  const headers = { authorization: `Bearer ${poster.token}`, 'content-type': 'application/json', 'idempotency-key': key }
  return { ...request, method: 'POST', path: '/transactions', headers, body: JSON.stringify(body) } as autocannon.Request
}

export const MIXED_WEIGHTS: ReadonlyArray<[MixedRoute, number]> = [['GET /users/:id', 0.3], ['GET /transactions', 0.25], ['GET /feed', 0.25], ['POST /transactions', 0.2]]

/** One request entry whose setupRequest draws a route by weight and a random caller, for every request. */
export function mixedRequests (world: TrafficWorld, weights = MIXED_WEIGHTS, kinds: readonly PostKind[] = ['deposit', 'withdrawal', 'transfer', 'transfer']): autocannon.Request[] {
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
      if (route === 'POST /transactions') return postTransaction(request, world, caller, kinds)
      // Someone else's profile: the caller's own is read from the database (it includes the email) and never cached.
      return get(request, caller, route === 'GET /users/:id' ? `/users/${other(world.callers, caller).id}` : route === 'GET /feed' ? '/feed' : '/transactions')
    }
  }]
}

/** GET `path(caller)` with a random caller from `callers` on every request. */
export function getRequests (callers: Caller[], path: (caller: Caller) => string, route: string): autocannon.Request[] {
  return [{
    setupRequest: (request, context) => {
      tagRoute(context, route)
      const caller = pick(callers)
      return get(request, caller, path(caller))
    }
  }]
}

/** GET the given paths in order, each once, as `caller` (a miss-only run: every id is new to the cache). */
export function sequentialGets (caller: Caller, paths: string[], route: string): autocannon.Request[] {
  let next = 0
  return [{
    setupRequest: (request, context) => {
      tagRoute(context, route)
      return get(request, caller, paths[next++ % paths.length]!)
    }
  }]
}
