// The webhook outbound call against real receivers on loopback (allowPrivate, as in development and tests): what
// counts as delivered, what is refused, and that a hostile receiver (hanging, redirecting, flooding, resetting)
// costs a bounded time and memory. The SSRF policy itself is test/security/webhook-targets.test.ts.
import http from 'node:http'
import net, { type AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import { closeWebhookAgents, postWebhook, type TargetPolicy, type WebhookRequest } from '../../../routes/webhooks/outbound.ts'
import { createHostResolver } from '../../../routes/webhooks/resolver.ts'
import { startDnsServer } from '../../dns-server.ts'

t.teardown(closeWebhookAgents)

// Names resolve through a DNS server of the test's own on loopback; it knows none, so every name is NXDOMAIN.
const dns = await startDnsServer()
t.teardown(dns.close)
const DEV: TargetPolicy = { allowPrivate: true, resolver: createHostResolver({ servers: [dns.server], timeoutMs: 1000 }) }

interface Seen { method?: string, url?: string, headers: http.IncomingHttpHeaders, body: string }

/** A receiver on 127.0.0.1 that records what reached it, then answers with `respond`. */
async function receiver (t: Test, respond: (req: http.IncomingMessage, res: http.ServerResponse) => void) {
  const seen: Seen[] = []
  const connections = { count: 0 }
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.on('end', () => {
      seen.push({ method: req.method, url: req.url, headers: req.headers, body: Buffer.concat(chunks).toString() })
      respond(req, res)
    })
  })
  server.on('connection', () => connections.count++)
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>(resolve => {
    server.closeAllConnections()
    server.close(() => resolve())
  }))
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen, connections, server }
}

const request = (url: string, extra: Partial<WebhookRequest> = {}): WebhookRequest => ({
  url,
  headers: { 'content-type': 'application/json', 'webhook-id': 'msg_1' },
  body: JSON.stringify({ id: 'evt_1', type: 'transaction.created', data: { amount: '12.50', note: 'café' } }),
  timeoutMs: 2000,
  maxResponseBytes: 1024,
  policy: DEV,
  ...extra
})

t.test('a 2xx is delivered: one POST with the caller\'s headers and body, the response body kept', async t => {
  const hook = await receiver(t, (_req, res) => res.writeHead(204).end())
  const accepted = await receiver(t, (_req, res) => res.writeHead(202, { 'content-type': 'text/plain' }).end('thanks'))
  const sent = request(`${hook.url}/hooks/ledger?tenant=a%20b`)
  const result = await postWebhook(sent)
  t.match(result, { outcome: 'delivered', statusCode: 204, responseBody: '' })
  t.equal(result.error, undefined)
  t.type(result.durationMs, 'number')
  t.equal(hook.seen.length, 1)
  const [seen] = hook.seen
  t.equal(seen?.method, 'POST')
  t.equal(seen?.url, '/hooks/ledger?tenant=a%20b')
  t.equal(seen?.body, sent.body)
  t.equal(seen?.headers['content-type'], 'application/json')
  t.equal(seen?.headers['webhook-id'], 'msg_1')
  t.equal(seen?.headers['content-length'], String(Buffer.byteLength(sent.body)), 'a length, not chunked')
  t.equal(seen?.headers['transfer-encoding'], undefined)
  t.match(await postWebhook(request(accepted.url)), { outcome: 'delivered', statusCode: 202, responseBody: 'thanks' })
})

t.test('keep-alive: consecutive deliveries to one receiver share one connection', async t => {
  const hook = await receiver(t, (_req, res) => res.end('ok'))
  for (let i = 0; i < 3; i++) t.match(await postWebhook(request(hook.url)), { outcome: 'delivered', statusCode: 200 })
  t.equal(hook.seen.length, 3)
  t.equal(hook.connections.count, 1)
})

t.test('a pooled connection the receiver dropped is retried once on a fresh one, within the same attempt', async t => {
  // The second request on any connection is reset unanswered: what a receiver closing an idle keep-alive
  // connection looks like when the close crosses the next request.
  const served = new WeakMap<object, number>()
  const hook = await receiver(t, (req, res) => {
    const count = (served.get(req.socket) ?? 0) + 1
    served.set(req.socket, count)
    if (count > 1) req.socket.destroy()
    else res.end('ok')
  })
  t.match(await postWebhook(request(hook.url)), { outcome: 'delivered', statusCode: 200 })
  t.match(await postWebhook(request(hook.url)), { outcome: 'delivered', statusCode: 200 })
  t.equal(hook.seen.length, 3, 'the reset request and its one retry')
  t.equal(hook.connections.count, 2)
  // A fresh connection that is reset is the receiver's answer: not retried.
  const resets = await receiver(t, req => req.socket.destroy())
  t.match(await postWebhook(request(resets.url)), { outcome: 'failed', error: 'reset' })
  t.equal(resets.seen.length, 1)
})

t.test('a 500 is failed with its status code and body', async t => {
  const hook = await receiver(t, (_req, res) => res.writeHead(500).end('{"error":"boom"}'))
  t.match(await postWebhook(request(hook.url)), {
    outcome: 'failed', statusCode: 500, error: 'status', responseBody: '{"error":"boom"}'
  })
  const gone = await receiver(t, (_req, res) => res.writeHead(410).end())
  t.match(await postWebhook(request(gone.url)), { outcome: 'failed', statusCode: 410, error: 'status' })
  t.equal(hook.seen.length, 1, 'one attempt, no retry inside the call')
})

t.test('a redirect is failed and never followed', async t => {
  const target = await receiver(t, (_req, res) => res.end('ok'))
  for (const status of [301, 302, 303, 307, 308]) {
    const hook = await receiver(t, (_req, res) => res.writeHead(status, { location: `${target.url}/stolen` }).end())
    t.match(await postWebhook(request(hook.url)), { outcome: 'failed', statusCode: status, error: 'redirect' }, `${status}`)
    t.equal(hook.seen.length, 1)
  }
  t.equal(target.seen.length, 0, 'the redirect target saw nothing')
  t.equal(target.connections.count, 0)
})

t.test('a receiver that never answers is a timeout within timeoutMs', async t => {
  const hook = await receiver(t, () => { /* holds the request open */ })
  const result = await postWebhook(request(hook.url, { timeoutMs: 300 }))
  t.match(result, { outcome: 'failed', statusCode: null, error: 'timeout' })
  t.equal(result.responseBody, undefined)
  t.ok(result.durationMs >= 290, `waited the timeout (${result.durationMs} ms)`)
  // Generous slack for a shared CI core; the point is that it ends near the bound, not at some socket default.
  t.ok(result.durationMs < 300 + 1500, `ended near the timeout (${result.durationMs} ms)`)
  t.equal(hook.seen.length, 1)
})

t.test('connecting is bounded on its own: a TLS handshake that never completes ends at the connect timeout', async t => {
  // Accepts TCP and says nothing: an https target whose handshake hangs, as a blackholed or overloaded receiver's.
  const sockets = new Set<net.Socket>()
  const silent = net.createServer((socket) => { sockets.add(socket) })
  await new Promise<void>(resolve => silent.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>(resolve => { for (const socket of sockets) socket.destroy(); silent.close(() => resolve()) }))
  const url = `https://127.0.0.1:${(silent.address() as AddressInfo).port}/hooks`
  const result = await postWebhook(request(url, { timeoutMs: 5000, connectTimeoutMs: 300 }))
  t.match(result, { outcome: 'failed', statusCode: null, error: 'connect_timeout' })
  t.ok(result.durationMs >= 290, `waited the connect timeout (${result.durationMs} ms)`)
  t.ok(result.durationMs < 300 + 1500, `and not the whole attempt's 5 s (${result.durationMs} ms)`)
})

t.test('the connect timeout does not cut an answer that is merely slow once connected', async t => {
  const hook = await receiver(t, (_req, res) => { setTimeout(() => res.writeHead(200).end('late'), 600) })
  t.match(await postWebhook(request(hook.url, { timeoutMs: 3000, connectTimeoutMs: 200 })), { outcome: 'delivered', statusCode: 200 })
  // The same receiver again, over the pooled connection: no connect phase, nothing to time out.
  t.match(await postWebhook(request(hook.url, { timeoutMs: 3000, connectTimeoutMs: 200 })), { outcome: 'delivered', statusCode: 200 })
  t.equal(hook.connections.count, 1, 'the second attempt reused the connection')
})

t.test('the timeout covers the body: a 200 whose body never ends is a timeout, not a delivery', async t => {
  const hook = await receiver(t, (_req, res) => { res.writeHead(200); res.write('partial') })
  const result = await postWebhook(request(hook.url, { timeoutMs: 300 }))
  t.match(result, { outcome: 'failed', statusCode: 200, error: 'timeout', responseBody: 'partial' })
  t.ok(result.durationMs < 300 + 1500)
})

t.test('a receiver that never accepts the body (slow reader) is bounded by the same timeout', async t => {
  // Never reads the request: a large body fills the socket buffers and the write stalls.
  const server = http.createServer(() => {})
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>(resolve => { server.closeAllConnections(); server.close(() => resolve()) }))
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  const result = await postWebhook(request(url, { timeoutMs: 300, body: 'x'.repeat(8 * 1024 * 1024) }))
  t.match(result, { outcome: 'failed', statusCode: null, error: 'timeout' })
  t.ok(result.durationMs < 300 + 1500)
})

t.test('the caller\'s signal aborts the attempt', async t => {
  const hook = await receiver(t, () => {})
  const controller = new AbortController()
  setTimeout(() => controller.abort(), 100)
  const result = await postWebhook(request(hook.url, { timeoutMs: 5000, signal: controller.signal }))
  t.match(result, { outcome: 'failed', statusCode: null, error: 'aborted' })
  t.ok(result.durationMs < 2000)
  const already = new AbortController()
  already.abort()
  t.match(await postWebhook(request(hook.url, { signal: already.signal })), { outcome: 'failed', error: 'aborted' })
})

t.test('a huge response body is read only to maxResponseBytes, then the connection is dropped', async t => {
  // An endless body: without the bound this test would never end (or end the process's memory).
  let written = 0
  let closed = false
  const chunk = Buffer.alloc(64 * 1024, 'a')
  const hook = await receiver(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' })
    res.on('close', () => { closed = true })
    const pump = () => {
      while (!res.destroyed && res.write(chunk)) written += chunk.length
      if (!res.destroyed) res.once('drain', pump)
    }
    pump()
  })
  const result = await postWebhook(request(hook.url, { maxResponseBytes: 1000 }))
  t.match(result, { outcome: 'delivered', statusCode: 200 })
  t.equal(result.responseBody, 'a'.repeat(1000))
  await new Promise(resolve => setTimeout(resolve, 100))
  t.ok(closed, 'the receiver saw the connection close')
  t.ok(written < 64 * 1024 * 1024, `the receiver could not push the whole flood (${written} bytes written)`)
  // The bound holds for a body that is large but finite, and for an error answer.
  const big = await receiver(t, (_req, res) => res.writeHead(503).end('b'.repeat(200_000)))
  const failed = await postWebhook(request(big.url, { maxResponseBytes: 4096 }))
  t.match(failed, { outcome: 'failed', statusCode: 503, error: 'status' })
  t.equal(failed.responseBody?.length, 4096)
  const none = await postWebhook(request(big.url, { maxResponseBytes: 0 }))
  t.match(none, { outcome: 'failed', statusCode: 503, responseBody: '' })
})

t.test('a multi-byte character cut at the bound never yields more than maxResponseBytes bytes', async t => {
  const hook = await receiver(t, (_req, res) => res.end('é'.repeat(100)))
  const result = await postWebhook(request(hook.url, { maxResponseBytes: 5 }))
  t.equal(result.outcome, 'delivered')
  t.ok(Buffer.byteLength(result.responseBody ?? '') <= 5 + 2, 'at most the bound (plus one replacement character)')
  t.match(result.responseBody, /^éé/)
})

t.test('a receiver that resets the connection is a failed attempt with no status', async t => {
  const beforeAnswer = await receiver(t, req => req.socket.destroy())
  t.match(await postWebhook(request(beforeAnswer.url)), { outcome: 'failed', statusCode: null, error: 'reset' })
  t.equal(beforeAnswer.seen.length, 1)
  const midBody = await receiver(t, (req, res) => {
    res.writeHead(200, { 'content-length': '100' })
    res.write('only part of it', () => req.socket.destroy())
  })
  t.match(await postWebhook(request(midBody.url)), { outcome: 'failed', statusCode: 200, error: 'reset' })
})

t.test('nothing listening and a name that does not resolve fail without throwing', async t => {
  const closed = await receiver(t, () => {})
  await new Promise<void>(resolve => {
    closed.server.closeAllConnections()
    closed.server.close(() => resolve())
  })
  t.match(await postWebhook(request(closed.url)), { outcome: 'failed', statusCode: null, error: 'connect' })
  t.match(await postWebhook(request('http://no-such-host.invalid/hook')), { outcome: 'failed', statusCode: null, error: 'dns' })
  t.ok(dns.queries.some((query) => query.name === 'no-such-host.invalid'), 'answered by the loopback DNS server')
  t.match(await postWebhook(request('not a url')), { outcome: 'failed', statusCode: null, error: 'invalid_url' })
})

t.test('https without a trusted certificate is a TLS failure, never a silent downgrade', async t => {
  // A plain-HTTP listener answering a TLS handshake: the handshake fails, the request is not sent in clear.
  const hook = await receiver(t, (_req, res) => res.end('ok'))
  const result = await postWebhook(request(hook.url.replace('http:', 'https:')))
  t.match(result, { outcome: 'failed', statusCode: null, error: 'tls' })
  t.equal(hook.seen.length, 0)
})

t.test('an answer that is not HTTP, or whose headers have no end, is a protocol failure', async t => {
  const answers = [
    'SSH-2.0-OpenSSH_9.6\r\n\r\n',
    'HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab',
    `HTTP/1.1 200 OK\r\nX-Flood: ${'a'.repeat(64 * 1024)}` // past the 16 KiB header bound, never terminated
  ]
  for (const answer of answers) {
    const server = net.createServer(socket => {
      socket.on('error', () => {}) // the client hangs up on it
      socket.once('data', () => socket.write(answer))
    })
    await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
    const result = await postWebhook(request(url))
    t.match(result, { outcome: 'failed', statusCode: null, error: 'protocol' }, answer.slice(0, 30))
    await new Promise(resolve => server.close(resolve))
  }
})
