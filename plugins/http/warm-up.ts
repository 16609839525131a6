import { randomUUID } from 'node:crypto'
import type { AddressInfo } from 'node:net'
import { Worker } from 'node:worker_threads'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { handOffServer, listenOn } from './public-port.ts'
import type { ClientRequestSpec, WarmUpClientData, WarmUpClientResult } from './warm-up-client.ts'

/**
 * Who a warm-up request is sent as: principals made up for the warm-up, whose ids exist nowhere, with tokens
 * this process signs for them. A read finds nothing (404, an empty page) and a money write stops at the session
 * or client check (401), so the warm-up reads and writes no one's data; what it exercises is the whole path of a
 * read, up to and including its database and Redis round trips, and authentication.
 */
export interface WarmUpPrincipals {
  user: { id: string, authorization: string }
  otherUserId: string
  client: { id: string, authorization: string }
  /** A fresh Idempotency-Key. */
  key: () => string
}

export interface WarmUpRequest {
  method: 'GET' | 'POST'
  url: string
  authorization: string
  headers?: Record<string, string>
  body?: unknown
}

export type WarmUpRequestFactory = (who: WarmUpPrincipals) => WarmUpRequest

export type WarmUpResult = WarmUpClientResult & { seconds: number }

/** Connections the warm-up sends on at once: enough to keep the event loop busy, as traffic would. */
const WARM_UP_CONNECTIONS = 10
/** More requests a second than the warm-up can send here, so that the principals made for it always suffice. */
const MAX_RATE = 4000
/** Seconds past its time after which a warm-up client that has not finished is stopped. */
const CLIENT_GRACE_S = 30
/** Requests per made-up principal: well inside the pro tier's bucket (600). */
const PRINCIPAL_REQUESTS = 300

declare module 'fastify' {
  interface FastifyInstance {
    warmUp: {
      /** A request the domains' routes take in production; the warm-up cycles through all of them. */
      add: (factory: WarmUpRequestFactory) => void
      /**
       * Sends the added requests to this app over loopback sockets of its own for `seconds`, from `connections`
       * connections at once, before the public port listens. Resolves when the last response is in, or `graceS`
       * (30) past its time, when a client still waiting is stopped and the warm-up counts as failed.
       */
      run: (options: { seconds: number, connections?: number, graceS?: number }) => Promise<WarmUpResult>
    }
  }
}

/**
 * A newly started process runs its request path in V8's interpreter until the optimising compiler has seen
 * enough calls: at the day-5 load (1,000 connections, 1,000 req/s) that made the first seconds cost about twice
 * the CPU per request, the event loop fell behind, and p99 reached seconds before it caught up. So the process
 * warms itself before it takes traffic: its own requests, through the same HTTP server (node:http, every hook,
 * validation, the database and Redis clients, serialization), over sockets that only it can reach. The public
 * port opens afterwards, so no client waits behind the warm-up.
 *
 * Warm-up requests carry a traceparent that is not sampled, so a parent-based sampler records none of them; their
 * request logs are held back (the logger at warn while it runs). Their metrics count like any request: they
 * happen before the first scrape a ready process gets, and rate() does not see a counter's first value.
 */
async function warmUpPlugin (app: FastifyInstance) {
  const factories: WarmUpRequestFactory[] = []

  async function principals (): Promise<WarmUpPrincipals> {
    const user = { id: randomUUID(), tier: 'pro' as const, sessionId: randomUUID() }
    const client = { id: randomUUID(), scopes: ['funds:write'] as const }
    const [userToken, clientToken] = await Promise.all([app.issueToken(user), app.issueClientToken(client)])
    let keys = 0
    const prefix = `warm-up-${randomUUID()}`
    return {
      user: { id: user.id, authorization: `Bearer ${userToken.accessToken}` },
      otherUserId: randomUUID(),
      client: { id: client.id, authorization: `Bearer ${clientToken.accessToken}` },
      key: () => `${prefix}-${++keys}`
    }
  }

  async function run ({ seconds, connections = WARM_UP_CONNECTIONS, graceS = CLIENT_GRACE_S }: { seconds: number, connections?: number, graceS?: number }): Promise<WarmUpResult> {
    const result: WarmUpResult = { requests: 0, statuses: {}, seconds: 0 }
    if (seconds <= 0 || factories.length === 0) return result
    await app.ready()
    // Enough made-up principals that none of them reaches its rate limit (the warm-up is not about 429s).
    const count = Math.max(connections, Math.ceil(seconds * MAX_RATE / PRINCIPAL_REQUESTS))
    const who = await Promise.all(Array.from({ length: count }, principals))
    const requests: ClientRequestSpec[] = who.flatMap((principals) => factories.map((factory) => {
      const { method, url, authorization, headers, body } = factory(principals)
      return { method, path: url, headers: { ...headers, authorization }, ...(body === undefined ? {} : { body: JSON.stringify(body) }) }
    }))
    const loopback = handOffServer(app.server)
    await listenOn(loopback, { port: 0, host: '127.0.0.1' })
    const level = app.log.level
    app.log.level = 'warn'
    const started = performance.now()
    try {
      // The client runs on a thread of its own, so that this event loop spends the warm-up serving.
      const worker = new Worker(new URL('./warm-up-client.ts', import.meta.url), {
        workerData: { port: (loopback.address() as AddressInfo).port, connections, seconds, requests } satisfies WarmUpClientData
      })
      // A client that never finishes (a request that hangs) must not hold the boot: it is stopped, and that fails.
      const stop = setTimeout(() => { worker.terminate().catch(() => {}) }, (seconds + graceS) * 1000)
      const sent = await new Promise<WarmUpClientResult>((resolve, reject) => {
        worker.once('message', resolve)
        worker.once('error', reject)
        worker.once('exit', (code) => reject(new Error(`the warm-up client exited with ${code}`)))
      }).finally(() => { clearTimeout(stop) })
      result.requests = sent.requests
      result.statuses = sent.statuses
    } catch (error) {
      // An optimisation, not a condition of serving: the process starts cold rather than not at all.
      app.log.warn({ err: error }, 'warm-up failed; serving without it')
    } finally {
      app.log.level = level
      await new Promise((resolve) => loopback.close(resolve))
    }
    result.seconds = (performance.now() - started) / 1000
    app.log.info(result, 'warmed up')
    return result
  }

  app.decorate('warmUp', {
    add: (factory: WarmUpRequestFactory) => { factories.push(factory) },
    run
  })
}

export default fp(warmUpPlugin, { name: 'warm-up', dependencies: ['auth'] })
