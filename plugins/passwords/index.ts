import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { createHashQueue, decoyHash, hashPassword, needsRehash, verifyPassword, type HashParameters, type HashQueue } from './scrypt.ts'
import { ProblemError } from '../errors/index.ts'

declare module 'fastify' {
  interface FastifyInstance {
    passwords: Passwords
  }
}

/** Password hashing at the configured parameters, every hash through one bounded queue per process. */
export interface Passwords {
  hash: (password: string) => Promise<string>
  /**
   * Checks a password against a stored hash, or against a decoy at the current parameters when there is none
   * (unknown email), so both take the same time and give the same false.
   */
  verify: (password: string, stored: string | null) => Promise<boolean>
  needsRehash: (stored: string) => boolean
  queue: HashQueue
}

export interface PasswordsOptions extends HashParameters {
  concurrency: number
  queue: number
}

const RETRY_AFTER_S = 1

async function passwordsPlugin (app: FastifyInstance, options: PasswordsOptions) {
  const current: HashParameters = { cost: options.cost, parallelism: options.parallelism }
  const queue = createHashQueue({
    concurrency: options.concurrency,
    queue: options.queue,
    busy: () => new ProblemError(503, 'password_hashing_busy', 'Too many passwords are being checked right now; retry shortly.',
      { headers: { 'retry-after': String(RETRY_AFTER_S) } })
  })
  // The decoy is made at boot, so the first unknown email costs what every other one does.
  const decoy = await decoyHash(current.cost, current.parallelism)
  app.decorate('passwords', {
    hash: (password: string) => queue.run(() => hashPassword(password, current.cost, current.parallelism)),
    verify: (password: string, stored: string | null) => queue.run(() => verifyPassword(password, stored ?? decoy)),
    needsRehash: (stored: string) => needsRehash(stored, current),
    queue
  } satisfies Passwords)
}

/** The plugin's options from the configuration. */
export const autoConfig = (app: FastifyInstance): PasswordsOptions => ({
  cost: app.config.PASSWORD_HASH_COST,
  parallelism: app.config.PASSWORD_HASH_PARALLELISM,
  concurrency: app.config.PASSWORD_HASH_CONCURRENCY,
  queue: app.config.PASSWORD_HASH_QUEUE
})

export default fp(passwordsPlugin, { name: 'passwords', dependencies: ['errors'] })
