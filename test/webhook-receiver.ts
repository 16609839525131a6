// A real HTTP receiver on loopback for the webhook tests, and Standard Webhooks verification by the specification's
// reference library (standardwebhooks), not the service's own signing code, so a signing bug cannot agree with itself.
import { createServer, type IncomingHttpHeaders, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Webhook } from 'standardwebhooks'

export interface Received {
  /** The request's path and query (one receiver can stand for many endpoints). */
  path: string
  /** performance.now() when the whole request had arrived. */
  arrivedAt: number
  id: string
  timestamp: string
  signature: string
  body: string
  headers: IncomingHttpHeaders
}

/** What the receiver does with the n-th request (0-based): answer a status, after a delay, or never. */
export type Behaviour = (n: number, received: Received) => { status: number, delayMs?: number, headers?: Record<string, string> } | 'hang'

export interface Receiver {
  url: string
  received: Received[]
  /** webhook-ids seen, once each: a receiver that deduplicates. */
  unique: Set<string>
  behaviour: Behaviour
  /** The most requests that were open at once, per path (the per-endpoint limit, seen from the receiver). */
  peakOpen: Map<string, number>
  close: () => Promise<void>
}

export async function startReceiver (behaviour: Behaviour = () => ({ status: 200 }), path = '/hooks', port = 0): Promise<Receiver> {
  const hanging = new Set<ServerResponse>()
  const receiver: Receiver = {
    url: '',
    received: [],
    unique: new Set(),
    behaviour,
    peakOpen: new Map(),
    close: async () => {
      for (const response of hanging) response.destroy()
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
  const open = new Map<string, number>()
  const server = createServer((request, response) => {
    const path = request.url ?? ''
    open.set(path, (open.get(path) ?? 0) + 1)
    receiver.peakOpen.set(path, Math.max(receiver.peakOpen.get(path) ?? 0, open.get(path) ?? 0))
    response.once('close', () => open.set(path, (open.get(path) ?? 1) - 1))
    const chunks: Buffer[] = []
    request.on('data', (chunk: Buffer) => chunks.push(chunk))
    request.on('end', () => {
      const received: Received = {
        path,
        arrivedAt: performance.now(),
        id: String(request.headers['webhook-id']),
        timestamp: String(request.headers['webhook-timestamp']),
        signature: String(request.headers['webhook-signature']),
        body: Buffer.concat(chunks).toString('utf8'),
        headers: request.headers
      }
      const n = receiver.received.length
      receiver.received.push(received)
      const answer = receiver.behaviour(n, received)
      if (answer === 'hang') {
        hanging.add(response)
        return
      }
      const send = () => {
        if (answer.status >= 200 && answer.status < 300) receiver.unique.add(received.id)
        response.writeHead(answer.status, answer.headers).end('ok')
      }
      if (answer.delayMs === undefined) send()
      else setTimeout(send, answer.delayMs)
    })
  })
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve))
  receiver.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}${path}`
  return receiver
}

/**
 * Whether a delivery verifies with the Standard Webhooks reference library, exactly as a receiver would check it:
 * the `whsec_` secret, the webhook-id, webhook-timestamp (within its five minute tolerance) and webhook-signature
 * headers, and the body as it arrived.
 */
export function verifyStandardWebhook (secret: string, received: Received): boolean {
  try {
    new Webhook(secret).verify(received.body, {
      'webhook-id': received.id,
      'webhook-timestamp': received.timestamp,
      'webhook-signature': received.signature
    })
    return true
  } catch {
    return false
  }
}
