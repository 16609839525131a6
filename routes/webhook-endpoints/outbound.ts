// STAND-IN for the webhook-targets branch's module (interface: /work/briefs/outbound.md). It keeps the exported
// names and shapes exactly so the webhooks branch builds and tests against it; the merge of webhook-targets
// replaces this file whole (take theirs).
import { lookup } from 'node:dns/promises'
import { request as httpRequest } from 'node:http'
import { request as httpsRequest } from 'node:https'
import { isIP } from 'node:net'

export interface TargetPolicy { allowPrivate: boolean }
export type TargetCheck = { ok: true, url: URL } | { ok: false, reason: string }

export function isPublicAddress (address: string): boolean {
  const family = isIP(address)
  if (family === 4) {
    const [a = 0, b = 0] = address.split('.').map(Number)
    return !(a === 0 || a === 10 || a === 127 || a >= 224 || (a === 169 && b === 254) || (a === 172 && b >= 16 && b <= 31) ||
      (a === 192 && b === 168) || (a === 100 && b >= 64 && b <= 127))
  }
  if (family === 6) {
    const lower = address.toLowerCase()
    return !(lower === '::' || lower === '::1' || lower.startsWith('fe80') || lower.startsWith('fc') || lower.startsWith('fd') ||
      lower.startsWith('ff') || lower.startsWith('::ffff:'))
  }
  return false
}

export function parseTargetUrl (raw: string, policy: TargetPolicy): TargetCheck {
  let url: URL
  try {
    url = new URL(raw)
  } catch {
    return { ok: false, reason: 'is not a URL' }
  }
  if (url.protocol !== 'https:' && !(policy.allowPrivate && url.protocol === 'http:')) return { ok: false, reason: 'must be an https URL' }
  if (url.username !== '' || url.password !== '') return { ok: false, reason: 'must not carry credentials' }
  if (raw.includes('#')) return { ok: false, reason: 'must not have a fragment' }
  const host = url.hostname.replace(/^\[|\]$/g, '')
  if (!policy.allowPrivate && (isIP(host) !== 0 ? !isPublicAddress(host) : host === 'localhost')) return { ok: false, reason: 'must not be a private address' }
  return { ok: true, url }
}

export async function checkTarget (raw: string, policy: TargetPolicy): Promise<TargetCheck> {
  const parsed = parseTargetUrl(raw, policy)
  if (!parsed.ok || policy.allowPrivate) return parsed
  const host = parsed.url.hostname.replace(/^\[|\]$/g, '')
  if (isIP(host) !== 0) return parsed
  try {
    const addresses = await lookup(host, { all: true })
    if (addresses.length === 0 || addresses.some((a) => !isPublicAddress(a.address))) return { ok: false, reason: 'must resolve to public addresses only' }
  } catch {
    return { ok: false, reason: 'does not resolve' }
  }
  return parsed
}

export interface WebhookRequest {
  url: string
  headers: Record<string, string>
  body: string
  timeoutMs: number
  maxResponseBytes: number
  policy: TargetPolicy
  signal?: AbortSignal
}

export interface WebhookResponse {
  outcome: 'delivered' | 'failed'
  statusCode: number | null
  error?: string
  responseBody?: string
  durationMs: number
}

export async function postWebhook (request: WebhookRequest): Promise<WebhookResponse> {
  const started = performance.now()
  const durationMs = () => Math.round(performance.now() - started)
  const parsed = parseTargetUrl(request.url, request.policy)
  if (!parsed.ok) return { outcome: 'failed', statusCode: null, error: 'refused_address', durationMs: durationMs() }
  const send = parsed.url.protocol === 'https:' ? httpsRequest : httpRequest
  return await new Promise((resolve) => {
    let settled = false
    const finish = (response: Omit<WebhookResponse, 'durationMs'>) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      resolve({ ...response, durationMs: durationMs() })
    }
    const outgoing = send(parsed.url, {
      method: 'POST',
      headers: { ...request.headers, 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(request.body)) },
      agent: false,
      ...(request.signal === undefined ? {} : { signal: request.signal })
    }, (response) => {
      const status = response.statusCode ?? 0
      const chunks: Buffer[] = []
      let size = 0
      response.on('data', (chunk: Buffer) => {
        if (size < request.maxResponseBytes) chunks.push(chunk.subarray(0, request.maxResponseBytes - size))
        size += chunk.length
      })
      response.on('end', () => {
        const responseBody = Buffer.concat(chunks).toString('utf8')
        if (status >= 200 && status < 300) finish({ outcome: 'delivered', statusCode: status, responseBody })
        else finish({ outcome: 'failed', statusCode: status, error: status >= 300 && status < 400 ? 'redirect' : 'status', responseBody })
      })
      response.on('error', () => finish({ outcome: 'failed', statusCode: status, error: 'reset' }))
    })
    const timer = setTimeout(() => {
      finish({ outcome: 'failed', statusCode: null, error: 'timeout' })
      outgoing.destroy()
    }, request.timeoutMs)
    outgoing.on('error', () => finish({ outcome: 'failed', statusCode: null, error: 'connect' }))
    outgoing.end(request.body)
  })
}
