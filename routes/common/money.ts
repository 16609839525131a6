import { z } from 'zod'

// ISO 4217 codes as the runtime's ICU knows them; refusing anything else keeps typos out of the ledger.
const currencies = new Set(Intl.supportedValuesOf('currency'))

export const CurrencySchema = z.string().regex(/^[A-Z]{3}$/, 'must be an ISO 4217 code such as USD')
  .refine((code) => currencies.has(code), { message: 'is not an ISO 4217 currency code' })

/**
 * Integer minor units (cents). The ceiling is the largest integer a JSON number carries exactly; the database
 * has the same bound, so no layer rounds money.
 */
export const AmountSchema = z.number().int('must be an integer number of minor units').positive().max(Number.MAX_SAFE_INTEGER)

/** int8 columns arrive as strings; the CHECK constraints guarantee they fit a JSON number exactly. */
export const toMinorUnits = (value: string | number) => Number(value)
