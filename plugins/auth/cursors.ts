import { createHmac, timingSafeEqual } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { z } from 'zod'
import { badRequest } from '../errors/index.ts'

/** What every list route answers: one page of items and the opaque cursor of the next page (null on the last). */
export interface Page<Item> {
  data: Item[]
  nextCursor: string | null
}

/**
 * Opaque, tamper-proof pagination cursors: base64url(JSON position) + '.' + HMAC over (scope, position).
 * The scope binds a cursor to one list and one caller, so a cursor edited by hand, made for another caller or
 * taken from another list is refused with 400 instead of leaking or skipping rows.
 */
export interface CursorCodec {
  encode: (scope: string, position: unknown) => string
  decode: <T>(scope: string, cursor: string, schema: z.ZodType<T>) => T
  /** Where the requested page starts: undefined on the first page, else the position the cursor carries. */
  position: <T>(scope: string, cursor: string | undefined, schema: z.ZodType<T>) => T | undefined
  /**
   * Turns the rows of a keyset query that asked for `limit + 1` into a page. The extra row is only a look-ahead:
   * its presence says a next page exists (no count query, and the last page has a null cursor instead of
   * leading the client to an empty page). The next cursor holds the position of the page's last row.
   */
  page: <Row, Item>(scope: string, rows: readonly Row[], limit: number, toItem: (row: Row) => Item, positionOf: (row: Row) => unknown) => Page<Item>
}

declare module 'fastify' {
  interface FastifyInstance {
    cursors: CursorCodec
  }
}

const SIGNATURE_BYTES = 16

export function createCursorCodec (secret: string): CursorCodec {
  // A key of its own, derived from the app secret, so a cursor signature is never valid as anything else.
  const key = createHmac('sha256', secret).update('ledger-api:cursor:v1').digest()
  const sign = (scope: string, body: string) =>
    createHmac('sha256', key).update(scope).update('\0').update(body).digest().subarray(0, SIGNATURE_BYTES)

  const codec: CursorCodec = {
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
    },
    position (scope, cursor, schema) {
      return cursor === undefined ? undefined : codec.decode(scope, cursor, schema)
    },
    page (scope, rows, limit, toItem, positionOf) {
      const kept = rows.slice(0, limit)
      const last = kept.at(-1)
      return {
        data: kept.map(toItem),
        nextCursor: rows.length > limit && last !== undefined ? codec.encode(scope, positionOf(last)) : null
      }
    }
  }
  return codec
}

/** The `cursor` query parameter: bounded and limited to the characters a cursor can contain. */
export const CursorParamSchema = z.string().min(1).max(512).regex(/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/, 'is not a cursor')

async function cursorsPlugin (app: FastifyInstance, options: { secret: string }) {
  app.decorate('cursors', createCursorCodec(options.secret))
}

/** The plugin's options from the configuration. */
export const autoConfig = (app: FastifyInstance) => ({ secret: app.config.JWT_SECRET })

export default fp(cursorsPlugin, { name: 'cursors', dependencies: ['errors'] })
