// How preflight talks to the API: untyped requests built from the document (send), and a client typed from the
// committed document (scripts/ops/api-schema.d.ts, `npm run openapi`) for the calls it makes by name (signing up,
// logging in, GET /users/me): a route that changes its path, body or answer breaks the type check here instead of a
// preflight run. Both wait out a 429 (see patiently()).
import createClient, { type Client } from 'openapi-fetch'
import { reason } from '../format.ts'
import type { paths } from '../api-schema.d.ts'

export const REQUEST_TIMEOUT_MS = 10_000
/** How long a request turned away with 429 is retried (after each Retry-After) before its 429 counts. */
export const PATIENCE_MS = 20_000

export interface Answer {
  status: number
  body: unknown
  text: string
  ms: number
  /** Set when no HTTP answer came (refused, reset, timed out). */
  error?: string
  retryAfterS?: number
}

export interface RequestSpec {
  method: string
  url: string
  headers?: Record<string, string>
  body?: unknown
}

export const bearer = (token: string) => ({ authorization: `Bearer ${token}` })
export const isObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value)
export const said = (answer: Answer) => answer.error ?? `${answer.status}${isObject(answer.body) && typeof answer.body.detail === 'string' ? ` "${answer.body.detail}"` : ''}`

/** Seconds from a Retry-After header, when it holds a usable number. */
function retryAfterOf (headers: Headers): number | undefined {
  const seconds = Number(headers.get('retry-after') ?? Number.NaN)
  return Number.isFinite(seconds) && seconds >= 0 ? seconds : undefined
}

/**
 * Makes one attempt and, with `patienceMs`, retries a 429 after its Retry-After for up to that long: the checks are
 * about what a handler does with a request, so one that the rate limiter turned away has not been checked yet.
 */
async function patiently<T extends { status: number, retryAfterS?: number | undefined }> (attempt: () => Promise<T>, patienceMs: number): Promise<T> {
  const deadline = performance.now() + patienceMs
  for (;;) {
    const answer = await attempt()
    if (answer.status !== 429 || answer.retryAfterS === undefined) return answer
    const waitMs = Math.max(answer.retryAfterS * 1000, 100)
    if (performance.now() + waitMs > deadline) return answer
    await new Promise((resolve) => setTimeout(resolve, waitMs))
  }
}

/** Sends one request built from the document (see patiently() for `patienceMs`). */
export async function send (base: string, spec: RequestSpec, patienceMs = 0): Promise<Answer> {
  return patiently(async () => {
    const started = performance.now()
    const headers: Record<string, string> = { ...spec.headers, ...spec.body === undefined ? {} : { 'content-type': 'application/json' } }
    try {
      const response = await fetch(new URL(spec.url, base), {
        method: spec.method,
        headers,
        body: spec.body === undefined ? null : JSON.stringify(spec.body),
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS)
      })
      const text = await response.text()
      let body: unknown = text
      try { body = JSON.parse(text) } catch {}
      const answer: Answer = { status: response.status, body, text, ms: performance.now() - started }
      const retryAfterS = retryAfterOf(response.headers)
      if (retryAfterS !== undefined) answer.retryAfterS = retryAfterS
      return answer
    } catch (error) {
      return { status: 0, body: undefined, text: '', ms: performance.now() - started, error: reason(error) }
    }
  }, patienceMs)
}

export type Api = Client<paths>

export function apiClient (base: string): Api {
  // The typed client's fetch: each attempt has send()'s timeout, and a 429 is waited out as send() does.
  const patientFetch = async (request: Request) => (await patiently(async () => {
    const answer = await fetch(request.clone(), { signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) })
    // Read within the timeout, and so that an answer that is retried is not left unread.
    const bytes = await answer.arrayBuffer()
    // A null-body status (204, 304) may not be given a body, even an empty one.
    const response = new Response([204, 205, 304].includes(answer.status) ? null : bytes, { status: answer.status, statusText: answer.statusText, headers: answer.headers })
    return { status: response.status, retryAfterS: retryAfterOf(response.headers), response }
  }, PATIENCE_MS)).response
  // send() resolves paths against the origin too: a path in --url is not a prefix.
  return createClient<paths>({ baseUrl: new URL(base).origin, fetch: patientFetch })
}

/** What a typed call answered, and the status and problem detail (or why nothing came back) as said() puts them. */
export interface Reply<T> { data: T | undefined, status: number, said: string }

export async function reply<T> (call: Promise<{ data?: T, error?: unknown, response: Response }>): Promise<Reply<T>> {
  try {
    const { data, error, response } = await call
    // A problem's detail, or an OAuth error's code and description (the token endpoint, RFC 6749 section 5.2).
    const detail = isObject(error) && typeof error.detail === 'string'
      ? ` "${error.detail}"`
      : isObject(error) && typeof error.error === 'string' ? ` ${error.error} "${typeof error.error_description === 'string' ? error.error_description : ''}"` : ''
    return { data, status: response.status, said: `${response.status}${detail}` }
  } catch (error) {
    return { data: undefined, status: 0, said: reason(error) }
  }
}

/** Runs `work` over `items`, at most `limit` at a time; results in the items' order. */
export async function mapLimit<T, R> (items: T[], limit: number, work: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length)
  let next = 0
  const worker = async () => {
    while (next < items.length) {
      const index = next++
      results[index] = await work(items[index]!)
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
  return results
}
