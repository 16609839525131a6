import { randomBytes, scrypt, timingSafeEqual, type ScryptOptions } from 'node:crypto'
import { DEFAULT_COST, isPowerOfTwo } from './config.ts'

export { DEFAULT_COST, isPowerOfTwo }

/**
 * scrypt at OWASP's current parameters (N = 2^17, r = 8, p = 1: 128 MiB and a few hundred milliseconds per hash).
 * scrypt rather than argon2id: Node has it built in (argon2 in node:crypto is still experimental), the stored
 * format and the upgrade of existing hashes stay one scheme, and the memory it takes per hash is bounded here by
 * the hashing queue (PASSWORD_HASH_CONCURRENCY hashes at a time).
 */
export const BLOCK_SIZE = 8
const KEY_LENGTH = 64
// Stored hashes are ours, but a corrupted or planted one must not make a login allocate gigabytes.
const MAX_COST = 1 << 20
const MAX_PARALLELISM = 16

export interface HashParameters {
  cost: number
  parallelism: number
}

/** What OpenSSL's scrypt allocates (V: 128·r·(N+2) bytes, B: 128·r·p bytes); maxmem must cover it. */
export const scryptMemoryBytes = (cost: number, blockSize: number, parallelism: number) =>
  128 * blockSize * (cost + 2) + 128 * blockSize * parallelism

function derive (password: string, salt: Buffer, options: ScryptOptions & { N: number, r: number, p: number }): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(password.normalize('NFKC'), salt, KEY_LENGTH, { ...options, maxmem: scryptMemoryBytes(options.N, options.r, options.p) + 1024 * 1024 },
      (error, key) => error ? reject(error) : resolve(key))
  })
}

/** scrypt with a random 16-byte salt; the parameters travel with the hash so the cost can be raised later. */
export async function hashPassword (password: string, cost: number, parallelism = 1): Promise<string> {
  const salt = randomBytes(16)
  const key = await derive(password, salt, { N: cost, r: BLOCK_SIZE, p: parallelism })
  return `scrypt$${cost}$${BLOCK_SIZE}$${parallelism}$${salt.toString('base64')}$${key.toString('base64')}`
}

interface StoredHash { cost: number, blockSize: number, parallelism: number, salt: Buffer, key: Buffer }

function parseHash (stored: string): StoredHash | null {
  const [scheme, n, r, p, salt, key] = stored.split('$')
  if (scheme !== 'scrypt' || salt === undefined || key === undefined) return null
  const cost = Number(n)
  const blockSize = Number(r)
  const parallelism = Number(p)
  if (!isPowerOfTwo(cost) || cost > MAX_COST || !Number.isInteger(blockSize) || blockSize < 1 || blockSize > 32 ||
    !Number.isInteger(parallelism) || parallelism < 1 || parallelism > MAX_PARALLELISM) return null
  return { cost, blockSize, parallelism, salt: Buffer.from(salt, 'base64'), key: Buffer.from(key, 'base64') }
}

export async function verifyPassword (password: string, stored: string): Promise<boolean> {
  const hash = parseHash(stored)
  if (hash === null) return false
  const actual = await derive(password, hash.salt, { N: hash.cost, r: hash.blockSize, p: hash.parallelism })
  return actual.length === hash.key.length && timingSafeEqual(actual, hash.key)
}

/** Whether a stored hash is weaker than the current parameters (then a successful login re-hashes it). */
export function needsRehash (stored: string, current: HashParameters): boolean {
  const hash = parseHash(stored)
  return hash === null || hash.cost < current.cost || hash.blockSize < BLOCK_SIZE || hash.parallelism < current.parallelism
}

const decoys = new Map<string, Promise<string>>()

/**
 * A hash of a random password at the given (current) parameters. Login verifies against it when the email is
 * unknown, so an unknown email costs the same time as a wrong password and timing reveals nothing.
 */
export function decoyHash (cost: number, parallelism = 1): Promise<string> {
  const key = `${cost}:${parallelism}`
  let decoy = decoys.get(key)
  if (decoy === undefined) {
    decoy = hashPassword(randomBytes(32).toString('hex'), cost, parallelism)
    decoys.set(key, decoy)
  }
  return decoy
}

export interface HashQueueOptions {
  /** Hashes running at once (each holds one libuv thread and scryptMemoryBytes of memory). */
  concurrency: number
  /** Hashes waiting for a slot; beyond it the request is answered 503 at once. */
  queue: number
  /** The error a request gets when the queue is full (a 503 with Retry-After). */
  busy: () => Error
}

export interface HashQueue {
  run: <T>(work: () => Promise<T>) => Promise<T>
  readonly running: number
  readonly waiting: number
}

/**
 * Bounds password hashing: scrypt runs on libuv's small thread pool (4 threads by default, shared with file and
 * DNS work), so an unbounded flood of logins would queue there invisibly, take memory per hash and slow every
 * request. Here at most `concurrency` hashes run, `queue` wait, and the rest get 503 with Retry-After at once.
 */
export function createHashQueue (options: HashQueueOptions): HashQueue {
  let running = 0
  const waiting: Array<() => void> = []
  const release = () => {
    running--
    const next = waiting.shift()
    if (next !== undefined) {
      running++
      next()
    }
  }
  return {
    async run (work) {
      if (running >= options.concurrency) {
        if (waiting.length >= options.queue) throw options.busy()
        await new Promise<void>((resolve) => waiting.push(resolve))
      } else {
        running++
      }
      try {
        return await work()
      } finally {
        release()
      }
    },
    get running () { return running },
    get waiting () { return waiting.length }
  }
}
