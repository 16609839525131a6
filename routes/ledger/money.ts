import { z } from 'zod'
import { isActiveCurrency } from './currencies.ts'
import { NonIntegerLiteral } from '../../plugins/http/json-body.ts'

// The active rows of the currencies table, as this process last read them (routes/ledger/currencies.ts): no round trip
// per request, and no dependence on the runtime's ICU data. Refusing anything else keeps typos out of the ledger.
export const CurrencySchema = z.string().regex(/^[A-Z]{3}$/, 'must be an ISO 4217 code such as USD')
  .refine(isActiveCurrency, { message: 'is not an active ISO 4217 currency code' })

/**
 * Integer minor units (cents). The ceiling is the largest integer a JSON number carries exactly; the database
 * has the same bound, so no layer rounds money. A literal written with a fraction or an exponent (`10.5`, `1.0`,
 * `1e3`) reaches the schema as a NonIntegerLiteral (plugins/http/json-body.ts), refused even where it would round to
 * an integer: `1.0000000000000001` is not 1.
 */
export const AmountSchema = z.number({
  error: (issue) => issue.input instanceof NonIntegerLiteral ? 'must be an integer number of minor units, written without a fraction or exponent' : undefined
}).int('must be an integer number of minor units').positive().max(Number.MAX_SAFE_INTEGER)

/** int8 columns arrive as strings; the CHECK constraints guarantee they fit a JSON number exactly. */
export const toMinorUnits = (value: string | number) => Number(value)
