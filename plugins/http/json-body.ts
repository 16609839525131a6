import { errorCodes, type FastifyRequest } from 'fastify'
import secureJsonParse from 'secure-json-parse'

/**
 * A JSON number literal written with a fraction or an exponent (`10.5`, `1.0`, `1e3`, `1.0000000000000001`), kept
 * as its source text. JSON.parse would turn it into the nearest double, so `1.0000000000000001` would arrive as 1
 * and `9007199254740990.7` as 9007199254740991: integers no client wrote. The body parser hands it on as this
 * object instead, which no number schema accepts, so validation refuses it with the field's path.
 */
export class NonIntegerLiteral {
  readonly source: string

  constructor (source: string) {
    this.source = source
  }
}

// The reviver reads each literal's source text (JSON.parse source text access, Node 24). Without it every literal
// would pass as its rounded value, so a runtime that does not provide it stops the process at start.
const probe = JSON.parse('[1.0]', (_key, value, context?: { source?: string }) => typeof value === 'number' ? context?.source : value) as unknown[]
if (probe[0] !== '1.0') throw new Error('JSON.parse does not pass number literals\' source text to revivers; Node 24 or later is required')

const fractionOrExponent = /[.eE]/

function reviveNumber (_key: string, value: unknown, context?: { source?: string }) {
  if (typeof value !== 'number') return value
  const source = context?.source ?? ''
  return fractionOrExponent.test(source) ? new NonIntegerLiteral(source) : value
}

const isDigit = (c: number) => c >= 0x30 && c <= 0x39

/**
 * Whether the text holds a number literal with a fraction or an exponent: outside strings, a '.' or an 'e'/'E'
 * right after a digit (the 'e' of `true` and `false` follows a letter). Only such bodies are parsed with the
 * reviver: it costs more, and V8's reviver pass recurses, so a body nested thousands deep that it cannot revive
 * is refused as invalid JSON; bodies without such a literal parse exactly as with Fastify's default parser.
 */
export function hasNonIntegerLiteral (text: string): boolean {
  let inString = false
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (inString) {
      if (c === 0x5c) i++ // a backslash: the next character is escaped, whatever it is
      else if (c === 0x22) inString = false
    } else if (c === 0x22) {
      inString = true
    } else if (c === 0x2e || ((c === 0x65 || c === 0x45) && isDigit(text.charCodeAt(i - 1)))) {
      return true
    }
  }
  return false
}

// Fastify's defaults (onProtoPoisoning, onConstructorPoisoning): a `__proto__` key or `constructor.prototype`
// anywhere in the body is an error, never a polluted prototype.
const poisoning = { protoAction: 'error', constructorAction: 'error' } as const

/**
 * The app's application/json parser: Fastify's default one (secure-json-parse, the same empty-body and invalid-JSON
 * errors, the same body limit), plus number literals with a fraction or an exponent kept as NonIntegerLiteral.
 */
export function parseJsonBody (_request: FastifyRequest, body: string | Buffer, done: (error: Error | null, body?: unknown) => void) {
  const text = typeof body === 'string' ? body : body.toString()
  if (text.length === 0) {
    done(new errorCodes.FST_ERR_CTP_EMPTY_JSON_BODY(), undefined)
    return
  }
  try {
    done(null, secureJsonParse(text, hasNonIntegerLiteral(text) ? reviveNumber : null, poisoning))
  } catch {
    // Syntax errors, poisoned prototypes, and nesting too deep for the reviver's recursion alike.
    done(new errorCodes.FST_ERR_CTP_INVALID_JSON_BODY(), undefined)
  }
}
