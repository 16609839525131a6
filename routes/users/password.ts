import { randomBytes, scrypt, timingSafeEqual, type ScryptOptions } from 'node:crypto'

const KEY_LENGTH = 64
const BLOCK_SIZE = 8
const PARALLELISM = 1

function derive (password: string, salt: Buffer, options: ScryptOptions): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(password.normalize('NFKC'), salt, KEY_LENGTH, options, (error, key) => error ? reject(error) : resolve(key))
  })
}

/** scrypt with a random 16-byte salt; the parameters travel with the hash so the cost can be raised later. */
export async function hashPassword (password: string, cost: number): Promise<string> {
  const salt = randomBytes(16)
  const key = await derive(password, salt, { N: cost, r: BLOCK_SIZE, p: PARALLELISM, maxmem: 256 * cost * BLOCK_SIZE })
  return `scrypt$${cost}$${BLOCK_SIZE}$${PARALLELISM}$${salt.toString('base64')}$${key.toString('base64')}`
}

export async function verifyPassword (password: string, stored: string): Promise<boolean> {
  const [scheme, n, r, p, salt, key] = stored.split('$')
  if (scheme !== 'scrypt' || salt === undefined || key === undefined) return false
  const cost = Number(n)
  const blockSize = Number(r)
  const expected = Buffer.from(key, 'base64')
  const actual = await derive(password, Buffer.from(salt, 'base64'), { N: cost, r: blockSize, p: Number(p), maxmem: 256 * cost * blockSize })
  return actual.length === expected.length && timingSafeEqual(actual, expected)
}

let decoy: Promise<string> | undefined

/**
 * A hash of a random password at the configured cost. Login verifies against it when the email is unknown, so
 * an unknown email costs the same time as a wrong password and timing reveals nothing.
 */
export function decoyHash (cost: number): Promise<string> {
  decoy ??= hashPassword(randomBytes(32).toString('hex'), cost)
  return decoy
}
