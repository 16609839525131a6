// The warm-up's client (plugins/http/warm-up.ts), on a worker thread: it sends the given requests, in turn, from
// `connections` keep-alive connections to the app's loopback listener until `seconds` have passed.
import { randomBytes } from 'node:crypto'
import { Agent, request } from 'node:http'
import { parentPort, workerData } from 'node:worker_threads'

export interface ClientRequestSpec {
  method: 'GET' | 'POST'
  path: string
  headers: Record<string, string>
  body?: string
}

export interface WarmUpClientData {
  port: number
  connections: number
  seconds: number
  requests: ClientRequestSpec[]
}

export interface WarmUpClientResult {
  requests: number
  /** Responses by status code. */
  statuses: Record<number, number>
}

function send (port: number, agent: Agent, spec: ClientRequestSpec): Promise<number> {
  const headers: Record<string, string> = {
    ...spec.headers,
    // Not sampled: a parent-based sampler records none of the warm-up's spans.
    traceparent: `00-${randomBytes(16).toString('hex')}-${randomBytes(8).toString('hex')}-00`,
    ...(spec.body === undefined ? {} : { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(spec.body)) })
  }
  return new Promise((resolve, reject) => {
    const outgoing = request({ host: '127.0.0.1', port, agent, method: spec.method, path: spec.path, headers }, (response) => {
      response.resume()
      response.once('end', () => resolve(response.statusCode ?? 0))
      response.once('error', reject)
    })
    outgoing.once('error', reject)
    outgoing.end(spec.body)
  })
}

async function warmUp ({ port, connections, seconds, requests }: WarmUpClientData): Promise<WarmUpClientResult> {
  const result: WarmUpClientResult = { requests: 0, statuses: {} }
  const agent = new Agent({ keepAlive: true, maxSockets: connections })
  const deadline = performance.now() + seconds * 1000
  let next = 0
  try {
    await Promise.all(Array.from({ length: connections }, async () => {
      while (performance.now() < deadline) {
        const status = await send(port, agent, requests[next++ % requests.length]!)
        result.requests++
        result.statuses[status] = (result.statuses[status] ?? 0) + 1
      }
    }))
  } finally {
    agent.destroy()
  }
  return result
}

if (parentPort !== null) parentPort.postMessage(await warmUp(workerData as WarmUpClientData))
