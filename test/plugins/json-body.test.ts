import fc from 'fast-check'
import t from 'tap'
import { hasNonIntegerLiteral, NonIntegerLiteral, parseJsonBody } from '../../plugins/http/json-body.ts'
import type { FastifyError, FastifyRequest } from 'fastify'

/** Runs the parser as Fastify does and returns what it passed to `done`. */
function parse (text: string): { error: FastifyError | null, body?: unknown } {
  let result: { error: FastifyError | null, body?: unknown } | undefined
  parseJsonBody({} as FastifyRequest, text, (error, body) => { result = { error: error as FastifyError | null, body } })
  if (result === undefined) throw new Error('done was not called')
  return result
}

/** Every number in a value as JSON.stringify writes it. */
function numberLiterals (value: unknown): string[] {
  if (typeof value === 'number') return [JSON.stringify(value)]
  if (Array.isArray(value)) return value.flatMap(numberLiterals)
  if (value !== null && typeof value === 'object') return Object.values(value).flatMap(numberLiterals)
  return []
}

t.test('only number literals with a fraction or an exponent are kept apart, wherever they are', async (t) => {
  t.same(parse('{"a":1,"b":[2,-3,0],"c":"1.5e3","d":true,"e":false,"f":null}'), { error: null, body: { a: 1, b: [2, -3, 0], c: '1.5e3', d: true, e: false, f: null } })
  const { body } = parse('{"a":1.0,"b":[1e3,1E-3,-0.0,7],"c":{"d":1.0000000000000001},"e":"x\\"1.5"}') as { body: Record<string, unknown> }
  t.same(body.a, new NonIntegerLiteral('1.0'))
  t.same(body.b, [new NonIntegerLiteral('1e3'), new NonIntegerLiteral('1E-3'), new NonIntegerLiteral('-0.0'), 7])
  t.same(body.c, { d: new NonIntegerLiteral('1.0000000000000001') })
  t.equal(body.e, 'x"1.5', 'an escaped quote does not end the string early')
  t.ok(body.a instanceof NonIntegerLiteral)
  t.ok((parse('9007199254740990.7').body as NonIntegerLiteral).source === '9007199254740990.7', 'a top-level literal too')
})

t.test('the scan agrees with the literals JSON.stringify writes (property)', async (t) => {
  fc.assert(fc.property(fc.jsonValue(), (value) => {
    const text = JSON.stringify(value)
    const expected = numberLiterals(value).some((literal) => /[.eE]/.test(literal))
    return hasNonIntegerLiteral(text) === expected
  }), { numRuns: 2000 })
  t.pass('2000 generated JSON values')
})

t.test('Fastify\'s parser protections and errors are kept, with and without the reviver', async (t) => {
  for (const amount of ['1', '1.5']) {
    for (const poisoned of [`{"a":${amount},"__proto__":{"x":1}}`, `{"a":${amount},"\\u005f_proto__":{"x":1}}`, `{"a":${amount},"constructor":{"prototype":{"x":1}}}`]) {
      t.equal(parse(poisoned).error?.code, 'FST_ERR_CTP_INVALID_JSON_BODY', poisoned)
    }
    t.equal(parse(`{"a":${amount},`).error?.code, 'FST_ERR_CTP_INVALID_JSON_BODY', `truncated with ${amount}`)
    t.same(parse(`{"a":${amount},"constructor":{"x":1}}`).error, null, 'a plain constructor key is data')
  }
  t.equal(parse('').error?.code, 'FST_ERR_CTP_EMPTY_JSON_BODY')
  t.notOk(({} as Record<string, unknown>).x, 'Object.prototype is not polluted')
  t.same(parse('\ufeff{"a":1.5}').body, { a: new NonIntegerLiteral('1.5') }, 'a byte-order mark is skipped, as before')
})
