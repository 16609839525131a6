import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'

declare module 'fastify' {
  interface FastifyContextConfig {
    /**
     * The route's answers can hold a credential (an access or refresh token, a signing secret): every response of
     * it, errors included, says no cache may keep it. The OpenAPI document reads the same flag.
     */
    carriesCredentials?: boolean
  }
}

/**
 * `Cache-Control: no-store` keeps a response out of every cache between here and the client (RFC 9111; RFC 6749
 * sections 5.1 and 5.2 require it of token responses); `Pragma: no-cache` says the same to HTTP/1.0 caches.
 */
export const credentialResponseHeaders = { 'cache-control': 'no-store', pragma: 'no-cache' } as const

async function credentialResponsesPlugin (app: FastifyInstance) {
  // onSend runs for every answer, whichever hook or handler produced it (a 429 from the limiter, a 503 while closing).
  // A callback hook: it runs for every response, and an async one costs each a promise and a microtask turn.
  app.addHook('onSend', (request, reply, payload, next) => {
    if (request.routeOptions.config?.carriesCredentials === true) reply.headers(credentialResponseHeaders)
    next()
  })
}

export default fp(credentialResponsesPlugin, { name: 'credential-responses' })
