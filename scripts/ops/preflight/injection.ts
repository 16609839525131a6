// 2 injection: every operation, each string field and each parameter in turn set to SQL injection payloads, the
// rest valid: every answer 2xx or 4xx, never 5xx, no database error text, no answer slow enough to be a pg_sleep
// that ran; GET /users/me still answers afterwards. Write operations get them too (unless --read-only): what they
// accept is stored as inert text, counted in the evidence.
import { randomBytes } from 'node:crypto'
import { int } from '../format.ts'
import { CONCURRENCY } from './auth.ts'
import { buildRequest, type Check } from './context.ts'
import { bearer, mapLimit, PATIENCE_MS, reply, said, send } from './http.ts'
import { isEmail, slotsOf, type Operation, type Slot } from './openapi.ts'

/** The pg_sleep payload sleeps this long; an answer that much slower than the field's other payloads means it ran. */
const SLEEP_S = 3
const SLEEP_PAYLOAD = `'||pg_sleep(${SLEEP_S})--`
export const PAYLOADS = ['\' OR 1=1 --', '\'; DROP TABLE users;--', '" OR ""="', SLEEP_PAYLOAD]
/**
 * A valid address with quotes in it, so an email field's payload gets past format validation to the query; unique
 * per run, so a second run is not a 409 before the query.
 */
export const emailPayload = () => `o'reilly'--${randomBytes(4).toString('hex')}@example.test`
// What a database error looks like when it leaks into a response body.
const LEAK = /syntax error at or near|unterminated quoted string|SQLSTATE|PostgresError|relation "[^"]+" does not exist/i

export const injection: Check = {
  id: 2,
  name: 'injection',
  async run (ctx) {
    const targets = ctx.ops.filter((op) => !ctx.readOnly || op.method === 'GET')
    const cases: Array<{ op: Operation, slot: Slot, value: string, field: string }> = targets.flatMap((op) => slotsOf(ctx.schemas, op).flatMap((slot) =>
      (isEmail(slot.schema, slot.name) ? [...PAYLOADS, emailPayload()] : PAYLOADS).map((value) => ({ op, slot, value, field: `${op.key} ${slot.in} ${slot.name}` }))))
    const failures: string[] = []
    const statuses: Record<string, number> = {}
    let writes = 0
    const answers = await mapLimit(cases, CONCURRENCY, async ({ op, slot, value, field }) => {
      const answer = await send(ctx.base, buildRequest(ctx, op, { override: { slot, value } }), PATIENCE_MS)
      const where = `${field}=${JSON.stringify(value)}`
      statuses[answer.status] = (statuses[answer.status] ?? 0) + 1
      if (answer.status === 0) failures.push(`${where}: no answer (${answer.error})`)
      else if (answer.status >= 500) failures.push(`${where} -> ${said(answer)}`)
      else if (LEAK.test(answer.text)) failures.push(`${where} -> ${answer.status} with database error text in the body`)
      if (op.method !== 'GET' && answer.status >= 200 && answer.status < 300) writes++
      return answer
    })
    // Timing, per field: against the same field's other payloads, so a busy server is not mistaken for a sleep.
    const slowest = new Map<string, number>()
    cases.forEach(({ field, value }, i) => {
      if (value !== SLEEP_PAYLOAD) slowest.set(field, Math.max(slowest.get(field) ?? 0, answers[i]!.ms))
    })
    cases.forEach(({ field, value }, i) => {
      const extraMs = answers[i]!.ms - (slowest.get(field) ?? 0)
      if (value === SLEEP_PAYLOAD && extraMs >= SLEEP_S * 1000 * 0.9) {
        failures.push(`${field}=${JSON.stringify(value)} took ${(extraMs / 1000).toFixed(1)} s longer than the field's other payloads: the pg_sleep ran`)
      }
    })
    // A payload that worked as SQL (DROP TABLE users) would show here, whatever the answers above said.
    const after = await reply(ctx.api.GET('/users/me', { headers: bearer(ctx.token) }))
    if (after.status !== 200) failures.push(`GET /users/me after the payloads -> ${after.said} (expected 200)`)
    const codes = Object.entries(statuses).sort(([a], [b]) => Number(a) - Number(b)).map(([code, n]) => `${code}x${n}`).join(' ')
    const limited = statuses[429] ?? 0
    return {
      status: failures.length > 0 ? 'FAIL' : 'PASS',
      evidence: `${int(cases.length)} requests, ${PAYLOADS.length} payloads into ${new Set(cases.map((c) => c.field)).size} fields and parameters of ${targets.length} operations` +
        `${ctx.readOnly ? ' (GETs only: --read-only)' : ''}: ${codes || 'none sent'}; ${failures.length} 5xx/leaks/slow; ${writes} accepted as inert data` +
        `${limited > 0 ? `; ${limited} still rate limited after waiting ${PATIENCE_MS / 1000} s (never reached a handler)` : ''}; GET /users/me afterwards ${after.status}`,
      details: failures.sort()
    }
  }
}
