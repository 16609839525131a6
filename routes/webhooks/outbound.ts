// The outbound HTTP call of webhook delivery, and the SSRF policy that guards it.
//
// A target is checked twice: at registration (`checkTarget`: syntax, then every address its host resolves to) and
// at every connection (`postWebhook` passes its own `lookup` to the socket, so the address actually dialled is
// the one checked: a DNS answer that changes after registration, DNS rebinding, cannot reach an internal host).
// Both resolve through the policy's resolver (resolver.ts: c-ares with a deadline, never libuv's thread pool).
//
// IP literals in any spelling (2130706433, 0177.0.0.1, 0x7f.1, 127.1, %31%32%37.0.0.1, full-width digits) reach us
// already normalized to dotted form: the WHATWG URL parser does that for special schemes, and the tests pin it.
// The address ranges are node:net BlockLists built from the IANA special-purpose registries, with no dependency:
// ipaddr.js would parse what `URL` and `isIP` already parse, and its range names would still need a table like
// the one below to become a policy (its list of special IPv6 ranges also lags the registry, e.g. 3fff::/20).
import type { LookupAddress, LookupOptions } from 'node:dns'
import http from 'node:http'
import https from 'node:https'
import { BlockList, isIP } from 'node:net'
import { performance } from 'node:perf_hooks'
import type { Config } from '../../settings.ts'
import { createHostResolver, ResolveError, type HostResolver } from './resolver.ts'

export interface TargetPolicy {
  /** WEBHOOK_ALLOW_PRIVATE_TARGETS: http and any address allowed (development and tests). */
  allowPrivate: boolean
  /** Resolves target names, at registration and for every connection (WEBHOOK_DNS_SERVERS, WEBHOOK_DNS_TIMEOUT_MS). */
  resolver: HostResolver
}

type PolicySettings = Pick<Config, 'WEBHOOK_ALLOW_PRIVATE_TARGETS' | 'WEBHOOK_DNS_SERVERS' | 'WEBHOOK_DNS_TIMEOUT_MS'>
const policies = new WeakMap<PolicySettings, TargetPolicy>()

/**
 * The policy of a configuration, one per configuration object: the routes' registrations and the worker's deliveries
 * of one process share its resolver, hence its bound on lookups in flight.
 */
export function targetPolicy (config: PolicySettings): TargetPolicy {
  let policy = policies.get(config)
  if (policy === undefined) {
    policy = {
      allowPrivate: config.WEBHOOK_ALLOW_PRIVATE_TARGETS,
      resolver: createHostResolver({ servers: config.WEBHOOK_DNS_SERVERS, timeoutMs: config.WEBHOOK_DNS_TIMEOUT_MS })
    }
    policies.set(config, policy)
  }
  return policy
}

export type TargetCheck = { ok: true, url: URL } | { ok: false, reason: string }

export interface WebhookRequest {
  url: string
  headers: Record<string, string>
  body: string
  /** Whole attempt, connect to last byte (10 s by contract). */
  timeoutMs: number
  /**
   * Connecting a new socket (DNS, TCP, TLS handshake), within timeoutMs: a receiver that never accepts gives the
   * attempt's slot back after this long instead of the whole timeout. A pooled keep-alive socket is already connected.
   */
  connectTimeoutMs?: number
  /** The response body is read up to this bound; the rest is discarded with the socket. */
  maxResponseBytes: number
  policy: TargetPolicy
  signal?: AbortSignal
}

export interface WebhookResponse {
  /** delivered = 2xx within the timeout; a 3xx is failed (redirects are never followed). */
  outcome: 'delivered' | 'failed'
  /** null when no response arrived (refused address, DNS, connect, TLS, timeout, reset). */
  statusCode: number | null
  /** Short machine-friendly reason, absent when delivered: see WebhookError. */
  error?: WebhookError
  /** At most maxResponseBytes (decoded as UTF-8), present whenever a response arrived. */
  responseBody?: string
  durationMs: number
}

export type WebhookError =
  | 'invalid_url' // the URL fails parseTargetUrl for a reason other than its address (scheme, userinfo ...)
  | 'refused_address' // an IP literal, or an address the host resolved to at connect time, is not public
  | 'dns' // the host does not resolve, or not in time
  | 'connect' // refused, unreachable
  | 'tls' // handshake or certificate failure
  | 'reset' // the connection closed before the whole response arrived
  | 'protocol' // the answer is not valid HTTP (garbage, oversized headers, conflicting lengths)
  | 'connect_timeout' // connectTimeoutMs passed before the socket was connected (TLS handshake included)
  | 'timeout' // timeoutMs passed before the last byte
  | 'aborted' // the caller's signal fired
  | 'redirect' // a 3xx answer (not followed)
  | 'status' // any other non-2xx answer
  | 'network' // any other socket error

/**
 * The longest webhook URL, as sent and as stored: the table's CHECK (sql/010_webhooks.sql) holds the same bound on
 * the stored form, the URL parser's serialization, which percent-encodes and punycodes everything to ASCII (so
 * JavaScript's length and PostgreSQL's agree) and can be several times longer than what was sent.
 */
export const MAX_URL_LENGTH = 2048
// IPv4: every block of the IANA IPv4 special-purpose registry that is not globally reachable, plus the deprecated
// 6to4 relay anycast block; 240.0.0.0/4 includes the limited broadcast address.
const blockedV4 = new BlockList()
for (const [network, prefix] of [
  ['0.0.0.0', 8], // "this network"
  ['10.0.0.0', 8], // RFC 1918
  ['100.64.0.0', 10], // shared address space (CGNAT; also some clouds' metadata, e.g. 100.100.100.200)
  ['127.0.0.0', 8], // loopback
  ['169.254.0.0', 16], // link-local (cloud metadata 169.254.169.254)
  ['172.16.0.0', 12], // RFC 1918
  ['192.0.0.0', 24], // IETF protocol assignments
  ['192.0.2.0', 24], // TEST-NET-1
  ['192.88.99.0', 24], // 6to4 relay anycast (deprecated, RFC 7526)
  ['192.168.0.0', 16], // RFC 1918
  ['198.18.0.0', 15], // benchmarking
  ['198.51.100.0', 24], // TEST-NET-2
  ['203.0.113.0', 24], // TEST-NET-3
  ['224.0.0.0', 4], // multicast
  ['240.0.0.0', 4] // reserved, and 255.255.255.255 broadcast
] as const) blockedV4.addSubnet(network, prefix, 'ipv4')

// IPv6 is an allow-list: only global unicast 2000::/3 can be public. That alone refuses ::, ::1, IPv4-mapped
// ::ffff:0:0/96, IPv4-compatible ::/96, discard 100::/64, local-use NAT64 64:ff9b:1::/48, SRv6 5f00::/16,
// unique-local fc00::/7, link-local fe80::/10, site-local fec0::/10 and multicast ff00::/8.
const globalUnicastV6 = new BlockList()
globalUnicastV6.addSubnet('2000::', 3, 'ipv6')
// Within it, the blocks that are not public or that tunnel to an IPv4 address we would not see.
const blockedV6 = new BlockList()
for (const [network, prefix] of [
  ['2001::', 23], // IETF protocol assignments: Teredo 2001::/32 (embeds an obfuscated IPv4), benchmarking, ORCHID
  ['2001:db8::', 32], // documentation
  ['2002::', 16], // 6to4 (embeds an IPv4 address; deprecated, RFC 7526)
  ['3fff::', 20] // documentation (RFC 9637)
] as const) blockedV6.addSubnet(network, prefix, 'ipv6')
// The well-known NAT64 prefix: public exactly when the IPv4 address it embeds is (DNS64 networks answer with it).
const nat64 = new BlockList()
nat64.addSubnet('64:ff9b::', 96, 'ipv6')

/** The eight 16-bit groups of an IPv6 address that isIP() accepted (a dotted IPv4 tail allowed). */
function ipv6Groups (address: string): number[] {
  let text = address
  const dotted = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text)
  if (dotted !== null) {
    const [a, b, c, d] = dotted.slice(1).map(Number) as [number, number, number, number]
    text = text.slice(0, dotted.index) + `${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`
  }
  const [head = '', tail] = text.split('::')
  const parse = (part: string) => (part === '' ? [] : part.split(':').map(group => Number.parseInt(group, 16)))
  const front = parse(head)
  if (tail === undefined) return front
  const back = parse(tail)
  return [...front, ...new Array<number>(8 - front.length - back.length).fill(0), ...back]
}

/**
 * True when the address may be a webhook target: a valid IPv4 or IPv6 address (no brackets, no zone) in globally
 * reachable unicast space. Anything else, including garbage, is false.
 */
export function isPublicAddress (address: string): boolean {
  const family = isIP(address)
  if (family === 4) return !blockedV4.check(address, 'ipv4')
  // A zone index (fe80::1%eth0) only ever qualifies a scoped, hence non-public, address.
  if (family !== 6 || address.includes('%')) return false
  if (nat64.check(address, 'ipv6')) {
    const groups = ipv6Groups(address)
    const high = groups[6] ?? 0
    const low = groups[7] ?? 0
    return isPublicAddress(`${high >> 8}.${high & 0xff}.${low >> 8}.${low & 0xff}`)
  }
  return globalUnicastV6.check(address, 'ipv6') && !blockedV6.check(address, 'ipv6')
}

type Parsed = { ok: true, url: URL } | { ok: false, reason: string, error: 'invalid_url' | 'refused_address' }

function parseTarget (raw: string, policy: TargetPolicy): Parsed {
  if (typeof raw !== 'string' || raw.length > MAX_URL_LENGTH) {
    return { ok: false, reason: `must be a URL of at most ${MAX_URL_LENGTH} characters`, error: 'invalid_url' }
  }
  let url: URL
  try {
    url = new URL(raw)
  } catch {
    return { ok: false, reason: 'must be an absolute URL', error: 'invalid_url' }
  }
  if (url.href.length > MAX_URL_LENGTH) {
    return { ok: false, reason: `must be a URL of at most ${MAX_URL_LENGTH} characters`, error: 'invalid_url' }
  }
  if (url.protocol !== 'https:' && !(policy.allowPrivate && url.protocol === 'http:')) {
    return { ok: false, reason: policy.allowPrivate ? 'must use https or http' : 'must use https', error: 'invalid_url' }
  }
  if (url.username !== '' || url.password !== '') {
    return { ok: false, reason: 'must not contain credentials', error: 'invalid_url' }
  }
  // In a serialized URL '#' appears only as the fragment delimiter (an empty fragment included).
  if (url.href.includes('#')) return { ok: false, reason: 'must not contain a fragment', error: 'invalid_url' }
  const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname
  if (host === '') return { ok: false, reason: 'must have a host', error: 'invalid_url' }
  if (!policy.allowPrivate && isIP(host) !== 0 && !isPublicAddress(host)) {
    return { ok: false, reason: 'must not point to a private, loopback, link-local or reserved address', error: 'refused_address' }
  }
  return { ok: true, url }
}

/**
 * Syntax only, no DNS: https (http only when allowPrivate), no userinfo, no fragment, port allowed, host not an
 * IP literal that is not public (any form: dotted, decimal, octal, hex, short forms, IPv6, IPv4-mapped IPv6).
 * A refusal's reason is a short sentence about the URL, fit for a 400's field error.
 */
export function parseTargetUrl (raw: string, policy: TargetPolicy): TargetCheck {
  const parsed = parseTarget(raw, policy)
  return parsed.ok ? parsed : { ok: false, reason: parsed.reason }
}

/** The host as net.connect and a resolver want it: IPv6 literals without brackets. */
const connectHost = (url: URL) => (url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname)

/**
 * The one refusal for a name, whatever went wrong: it does not exist, has no address, did not answer in time, or
 * resolves to an address that is not public. Telling these apart would let a caller probe which internal names exist.
 */
export const HOST_NOT_PUBLIC = 'must have a host that resolves, and only to public addresses'

/**
 * parseTargetUrl plus DNS: every address the host resolves to must be public (registration-time check). Under
 * allowPrivate any address is allowed, so the host is not resolved at all (development and tests need no DNS).
 * It resolves through the policy's resolver, as the connection will.
 */
export async function checkTarget (raw: string, policy: TargetPolicy): Promise<TargetCheck> {
  const parsed = parseTargetUrl(raw, policy)
  if (!parsed.ok || policy.allowPrivate) return parsed
  const host = connectHost(parsed.url)
  if (isIP(host) !== 0) return parsed
  const addresses = await policy.resolver.resolve(host).catch(() => [])
  // The resolved addresses are not echoed either: they would tell a caller what internal names resolve to.
  if (addresses.length === 0 || !addresses.every(entry => isPublicAddress(entry.address))) return { ok: false, reason: HOST_NOT_PUBLIC }
  return parsed
}

const REFUSED_ADDRESS = 'ERR_WEBHOOK_REFUSED_ADDRESS'

type LookupCallback = (error: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void
type Lookup = (hostname: string, options: LookupOptions, callback: LookupCallback) => void

/**
 * The sockets' resolver under a policy: the policy's resolver, and when private targets are refused, every address
 * checked (a host with any address that is not public is refused, as at registration). It answers in the shape asked
 * for (net.connect asks for all of them when it races address families, one otherwise).
 */
function lookupFor (policy: TargetPolicy): Lookup {
  return (hostname, options, callback) => {
    policy.resolver.resolve(hostname).then((found) => {
      const addresses = options.family === 4 || options.family === 6 ? found.filter(entry => entry.family === options.family) : found
      if (addresses.length === 0) return callback(new ResolveError(hostname, 'ENOTFOUND'), [])
      if (!policy.allowPrivate && addresses.some(entry => !isPublicAddress(entry.address))) {
        const refusal: NodeJS.ErrnoException = new Error(`${hostname} resolves to a non-public address`)
        refusal.code = REFUSED_ADDRESS
        return callback(refusal, [])
      }
      if (options.all === true) return callback(null, addresses)
      const first = addresses[0] as LookupAddress
      callback(null, first.address, first.family)
    }, (error: NodeJS.ErrnoException) => callback(error, []))
  }
}

// One pair of keep-alive agents per policy, reused by every call; both resolve through the policy's lookup. Pools are
// per host:port, so a socket is only ever reused for the origin (and the checked address) it was opened to. No
// proxyEnv: HTTP(S)_PROXY must not reroute this.
const AGENT_OPTIONS = { keepAlive: true, maxSockets: 64, maxFreeSockets: 16 }
interface Agents { lookup: Lookup, https: https.Agent, http: http.Agent }
let agentsByPolicy = new WeakMap<TargetPolicy, Agents>()
let openAgents: Agents[] = []

function agentsFor (policy: TargetPolicy): Agents {
  let agents = agentsByPolicy.get(policy)
  if (agents === undefined) {
    const lookup = lookupFor(policy)
    agents = { lookup, https: new https.Agent({ ...AGENT_OPTIONS, lookup }), http: new http.Agent({ ...AGENT_OPTIONS, lookup }) }
    agentsByPolicy.set(policy, agents)
    openAgents.push(agents)
  }
  return agents
}

/** Closes the pooled keep-alive sockets (an onClose hook of whatever runs deliveries); later calls get new agents. */
export function closeWebhookAgents (): void {
  for (const agents of openAgents) {
    agents.https.destroy()
    agents.http.destroy()
  }
  openAgents = []
  agentsByPolicy = new WeakMap()
}

const TLS_ERROR = /^(ERR_TLS_|ERR_SSL_|CERT_|UNABLE_TO_|DEPTH_ZERO_|SELF_SIGNED_|HOSTNAME_MISMATCH|ERR_OSSL_)/

function classify (error: NodeJS.ErrnoException): WebhookError {
  const code = error.code ?? ''
  if (code === REFUSED_ADDRESS) return 'refused_address'
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN' || code === 'EAI_FAIL' || code === 'ENODATA') return 'dns'
  if (['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL', 'ETIMEDOUT'].includes(code)) return 'connect'
  // EPROTO: the peer did not speak TLS (a plain-HTTP port behind an https URL).
  if (code === 'EPROTO' || TLS_ERROR.test(code)) return 'tls'
  if (['ECONNRESET', 'EPIPE', 'ECONNABORTED', 'ERR_STREAM_PREMATURE_CLOSE'].includes(code)) return 'reset'
  if (code.startsWith('HPE_')) return 'protocol' // llhttp's parse errors
  return 'network'
}

/** net.connect's Happy Eyeballs reports every family's failure at once; the first says what went wrong. */
const firstCause = (error: Error): NodeJS.ErrnoException =>
  error instanceof AggregateError && error.errors[0] instanceof Error ? error.errors[0] : error

interface Exchange { statusCode: number | null, error?: WebhookError, responseBody?: string, reusedSocket: boolean }

/** One request on one socket; settles on the first of: the last byte, the bound, an error, the signal. */
function exchange (url: URL, request: WebhookRequest, signal: AbortSignal, timeout: AbortSignal): Promise<Exchange> {
  return new Promise(resolve => {
    const body = Buffer.from(request.body, 'utf8')
    const secure = url.protocol === 'https:'
    const agents = agentsFor(request.policy)
    const agent = secure ? agents.https : agents.http
    const send = secure ? https.request : http.request
    let statusCode: number | null = null
    const chunks: Buffer[] = []
    let received = 0
    let settled = false

    const req = send({
      protocol: url.protocol,
      hostname: connectHost(url),
      port: url.port === '' ? undefined : Number(url.port),
      path: `${url.pathname}${url.search}`,
      method: 'POST',
      agent,
      // Redundant with the agent's, so no code path (a default agent, a changed option) connects unchecked.
      lookup: agents.lookup,
      headers: { ...request.headers, 'content-length': String(body.length) }
    })

    const settle = (outcome: { error?: WebhookError }, keepSocket = false) => {
      if (settled) return
      settled = true
      signal.removeEventListener('abort', onAbort)
      // A socket with unread bytes, or after any failure, is never handed back to the pool.
      if (!keepSocket) req.destroy()
      resolve({
        statusCode,
        ...outcome,
        ...(statusCode === null ? {} : { responseBody: Buffer.concat(chunks).toString('utf8') }),
        reusedSocket: req.reusedSocket
      })
    }
    const onAbort = () => settle({ error: timeout.aborted ? 'timeout' : 'aborted' })
    signal.addEventListener('abort', onAbort)

    req.on('socket', socket => {
      // Reused from the pool: connected long ago. A request that settles first (the whole timeout) destroys it.
      if (req.reusedSocket || request.connectTimeoutMs === undefined || (!secure && !socket.connecting)) return
      const timer = setTimeout(() => settle({ error: 'connect_timeout' }), request.connectTimeoutMs)
      socket.once(secure ? 'secureConnect' : 'connect', () => clearTimeout(timer))
      socket.once('close', () => clearTimeout(timer))
    })
    req.on('error', error => settle({ error: classify(firstCause(error)) }))
    req.on('response', res => {
      statusCode = res.statusCode ?? null
      // keepSocket: only a response read to its end leaves the socket clean enough for the pool.
      const done = (keepSocket: boolean) => {
        const ok = statusCode !== null && statusCode >= 200 && statusCode < 300
        const redirect = statusCode !== null && statusCode >= 300 && statusCode < 400
        settle(ok ? {} : { error: redirect ? 'redirect' : 'status' }, keepSocket)
      }
      if (request.maxResponseBytes <= 0) return done(false)
      res.on('data', (chunk: Buffer) => {
        const room = request.maxResponseBytes - received
        chunks.push(chunk.length > room ? chunk.subarray(0, room) : chunk)
        received += Math.min(chunk.length, room)
        if (received >= request.maxResponseBytes) done(false) // the rest is discarded with the socket
      })
      res.on('end', () => done(true))
      // Closed before the last byte (the receiver or the network dropped it): the answer is incomplete.
      res.on('close', () => { if (!res.complete) settle({ error: 'reset' }) })
      res.on('error', error => settle({ error: classify(firstCause(error)) }))
    })
    if (signal.aborted) return onAbort()
    req.end(body)
  })
}

/**
 * One POST; never throws for network or HTTP failures (only for programming errors). The address actually
 * connected to is checked again at connect time (custom `lookup`), which defeats DNS rebinding. Redirects are
 * never followed. The caller sets every header but content-length (content-type included).
 */
export async function postWebhook (request: WebhookRequest): Promise<WebhookResponse> {
  const started = performance.now()
  const elapsed = () => Math.round(performance.now() - started)
  const parsed = parseTarget(request.url, request.policy)
  if (!parsed.ok) return { outcome: 'failed', statusCode: null, error: parsed.error, durationMs: elapsed() }

  const timeout = AbortSignal.timeout(request.timeoutMs)
  const signal = request.signal === undefined ? timeout : AbortSignal.any([timeout, request.signal])
  let result = await exchange(parsed.url, request, signal, timeout)
  // A pooled socket the receiver closed while idle fails before any answer: that is not the receiver's verdict,
  // so it is tried once more on a fresh socket, within the same deadline (receivers deduplicate by webhook-id).
  if (result.error === 'reset' && result.statusCode === null && result.reusedSocket && !signal.aborted) {
    result = await exchange(parsed.url, request, signal, timeout)
  }
  const { reusedSocket: _reused, ...answer } = result
  return { outcome: answer.error === undefined ? 'delivered' : 'failed', ...answer, durationMs: elapsed() }
}
