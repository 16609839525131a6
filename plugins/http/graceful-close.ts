import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { ProblemError, sendProblem } from '../errors/index.ts'

/**
 * While the app closes (SIGTERM), in-flight requests finish and new ones are refused in the API's own error
 * format. Node closes only the connections that are idle when close starts: a keep-alive connection whose request
 * is still running would stay open after its response and hold the drain until the grace period ends (exit 1).
 * So every response sent while closing says `Connection: close`, and its connection ends right after it.
 * Fastify's built-in 503 while closing is turned off in the server options (plugins/http/index.ts, `return503OnClosing: false`): it is plain JSON
 * without Retry-After.
 */
async function gracefulClosePlugin (app: FastifyInstance) {
  let closing = false
  app.addHook('preClose', async () => { closing = true })
  // Callback hooks: they run for every request, and an async hook costs each a promise and a microtask turn.
  // A request refused while closing is answered here and goes no further (no call to next).
  app.addHook('onRequest', (request, reply, next) => {
    if (!closing) return next()
    sendProblem(request, reply, new ProblemError(503, 'shutting_down', 'This instance is shutting down; retry the request.', {
      headers: { 'retry-after': '1' }
    }))
  })
  app.addHook('onSend', (request, reply, payload, next) => {
    if (closing) reply.header('connection', 'close')
    next()
  })
}

export default fp(gracefulClosePlugin, { name: 'graceful-close', dependencies: ['errors'] })
