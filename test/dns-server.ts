// A DNS server on loopback for the tests that need names: no test resolves a name anywhere but on this machine.
// It answers A and AAAA queries (RFC 1035 over UDP) from a zone the test owns and records every query, so a test can
// also assert what was asked, and when. Names outside the zone are NXDOMAIN. Small on purpose: one question per
// message, no compression in questions, no EDNS in answers (c-ares accepts a plain answer to an EDNS query).
import dgram from 'node:dgram'
import { isIP, type AddressInfo } from 'node:net'

/** A name's answer: its addresses per family (a family left out has no records: NODATA), or a failure. */
export type ZoneAnswer =
  | { a?: string[], aaaa?: string[] }
  | 'nxdomain' // the name does not exist
  | 'servfail' // the server failed
  | 'drop' // no answer at all (a black hole: the client times out)

export interface DnsQuery {
  name: string
  type: 'A' | 'AAAA' | `TYPE${number}`
  /** How many queries for this name and type came before this one (retries included). */
  seen: number
  at: number
}

/** Fixed answers, or a function of the query (a name whose answer changes: DNS rebinding). */
export type Zone = Record<string, ZoneAnswer | ((query: DnsQuery) => ZoneAnswer)>

export interface DnsServer {
  /** For setServers and WEBHOOK_DNS_SERVERS: `127.0.0.1:port`. */
  server: string
  queries: DnsQuery[]
  zone: Zone
  close: () => Promise<void>
}

const TYPE_A = 1
const TYPE_AAAA = 28
const RCODE = { ok: 0, servfail: 2, nxdomain: 3, notimp: 4 } as const

function ipv4Bytes (address: string): Buffer {
  return Buffer.from(address.split('.').map(Number))
}

function ipv6Bytes (address: string): Buffer {
  const [head = '', tail] = address.split('::')
  const groups = (part: string) => (part === '' ? [] : part.split(':'))
  const front = groups(head)
  const back = tail === undefined ? [] : groups(tail)
  const all = [...front, ...new Array<string>(8 - front.length - back.length).fill('0'), ...back]
  const bytes = Buffer.alloc(16)
  all.forEach((group, i) => bytes.writeUInt16BE(Number.parseInt(group, 16), i * 2))
  return bytes
}

/** The question's name (lower case, no trailing dot), type and where the question ends; null when malformed. */
function parseQuestion (message: Buffer): { name: string, type: number, end: number } | null {
  if (message.length < 12 || message.readUInt16BE(4) !== 1) return null
  const labels: string[] = []
  let offset = 12
  for (;;) {
    const length = message[offset]
    if (length === undefined || length > 63) return null
    offset += 1
    if (length === 0) break
    labels.push(message.toString('latin1', offset, offset + length))
    offset += length
  }
  if (offset + 4 > message.length) return null
  return { name: labels.join('.').toLowerCase(), type: message.readUInt16BE(offset), end: offset + 4 }
}

function answer (query: Buffer, question: { type: number, end: number }, rcode: number, addresses: string[]): Buffer {
  const header = Buffer.alloc(12)
  header.writeUInt16BE(query.readUInt16BE(0), 0) // id
  // QR, the query's opcode and RD, AA, RA, the code.
  header.writeUInt16BE(0x8000 | (query.readUInt16BE(2) & 0x7900) | 0x0400 | 0x0080 | rcode, 2)
  header.writeUInt16BE(1, 4)
  header.writeUInt16BE(addresses.length, 6)
  const records = addresses.map((address) => {
    const data = question.type === TYPE_A ? ipv4Bytes(address) : ipv6Bytes(address)
    const record = Buffer.alloc(12)
    record.writeUInt16BE(0xc00c, 0) // the name: a pointer to the question's
    record.writeUInt16BE(question.type, 2)
    record.writeUInt16BE(1, 4) // IN
    record.writeUInt32BE(0, 6) // TTL 0: nothing is cached between lookups
    record.writeUInt16BE(data.length, 10)
    return Buffer.concat([record, data])
  })
  return Buffer.concat([header, query.subarray(12, question.end), ...records])
}

export async function startDnsServer (zone: Zone = {}): Promise<DnsServer> {
  const socket = dgram.createSocket('udp4')
  const queries: DnsQuery[] = []
  socket.on('message', (message, remote) => {
    const question = parseQuestion(message)
    if (question === null) return
    const type = question.type === TYPE_A ? 'A' : question.type === TYPE_AAAA ? 'AAAA' : `TYPE${question.type}` as const
    const query: DnsQuery = { name: question.name, type, seen: queries.filter((q) => q.name === question.name && q.type === type).length, at: Date.now() }
    queries.push(query)
    const entry = zone[question.name]
    const found = typeof entry === 'function' ? entry(query) : entry ?? 'nxdomain'
    if (found === 'drop') return
    let reply: Buffer
    if (found === 'nxdomain' || found === 'servfail') reply = answer(message, question, RCODE[found], [])
    else if (type === 'A' || type === 'AAAA') {
      const addresses = (type === 'A' ? found.a : found.aaaa) ?? []
      if (!addresses.every((address) => isIP(address) === (type === 'A' ? 4 : 6))) throw new Error(`zone ${question.name}: ${addresses.join(', ')} is not ${type}`)
      reply = answer(message, question, RCODE.ok, addresses)
    } else reply = answer(message, question, RCODE.notimp, [])
    socket.send(reply, remote.port, remote.address)
  })
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve))
  return {
    server: `127.0.0.1:${(socket.address() as AddressInfo).port}`,
    queries,
    zone,
    close: () => new Promise<void>((resolve) => socket.close(() => resolve()))
  }
}
