import { createHmac, timingSafeEqual } from 'node:crypto'
import { z } from 'zod'
import { badRequest } from '../../plugins/errors.ts'

/**
 * Opaque, tamper-proof pagination cursors: base64url(JSON position) + '.' + HMAC over (scope, position).
 * The scope binds a cursor to one resource and one caller, so a cursor edited by hand, made for another
 * user or taken from another list is refused with 400 instead of leaking or skipping rows.
 */
export interface CursorCodec {
  encode: (scope: string, position: unknown) => string
  decode: <T>(scope: string, cursor: string, schema: z.ZodType<T>) => T
}

const SIGNATURE_BYTES = 16

export function createCursorCodec (secret: string): CursorCodec {
  // A key of its own, derived from the app secret, so a cursor signature is never valid as anything else.
  const key = createHmac('sha256', secret).update('ledger-api:cursor:v1').digest()
  const sign = (scope: string, body: string) =>
    createHmac('sha256', key).update(scope).update('\0').update(body).digest().subarray(0, SIGNATURE_BYTES)

  return {
    encode (scope, position) {
      const body = Buffer.from(JSON.stringify(position)).toString('base64url')
      return `${body}.${sign(scope, body).toString('base64url')}`
    },
    decode (scope, cursor, schema) {
      const invalid = () => badRequest('The cursor is invalid.', [{ path: 'cursor', message: 'is not a cursor this list issued to you' }])
      const [body, signature, extra] = cursor.split('.')
      if (body === undefined || signature === undefined || extra !== undefined) throw invalid()
      const given = Buffer.from(signature, 'base64url')
      const expected = sign(scope, body)
      if (given.length !== expected.length || !timingSafeEqual(given, expected)) throw invalid()
      let position: unknown
      try {
        position = JSON.parse(Buffer.from(body, 'base64url').toString('utf8'))
      } catch {
        throw invalid()
      }
      const parsed = schema.safeParse(position)
      if (!parsed.success) throw invalid()
      return parsed.data
    }
  }
}

/** The `cursor` query parameter: bounded and limited to the characters a cursor can contain. */
export const CursorParamSchema = z.string().min(1).max(512).regex(/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/, 'is not a cursor')
