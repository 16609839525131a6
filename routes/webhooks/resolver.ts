// How webhook target names become addresses, for registration's check and for every delivery's connection.
//
// Through c-ares (dns.promises.Resolver), never getaddrinfo: dns.lookup runs on libuv's thread pool, which scrypt
// shares, and a slow name held a thread for as long as the system resolver liked, long after the caller had stopped
// waiting. Here a lookup is two UDP queries (A and AAAA) on the event loop under one deadline: when it passes, the
// lookup's own c-ares channel is cancelled, so nothing of it outlives the deadline. At most `concurrency` lookups
// run at once per resolver; the others wait in line, within the same deadline.
//
// `localhost` and names under `.localhost` are loopback without asking anyone (RFC 6761, 6.3), and an IP literal is
// its own address, so neither depends on a DNS server.
import { getServers } from 'node:dns'
import { Resolver } from 'node:dns/promises'
import { isIP } from 'node:net'

export interface ResolvedAddress { address: string, family: 4 | 6 }

export interface HostResolverOptions {
  /** DNS servers (`ip`, `ip:port` or `[ipv6]:port`); empty: the system's resolvers, as this process started with. */
  servers: readonly string[]
  /** One lookup from start to answer, both families and any wait for a slot included. */
  timeoutMs: number
  /** Lookups in flight at once (default 8). */
  concurrency?: number
  /** Queries to each server per family before the lookup gives up (default 2), all within timeoutMs. */
  tries?: number
}

export interface HostResolver {
  /** Every A and AAAA address of `host`; rejects with a ResolveError when either family got no answer. */
  resolve: (host: string) => Promise<ResolvedAddress[]>
}

/**
 * A lookup without a usable answer. The codes are getaddrinfo's, which callers of a socket's `lookup` expect:
 * ENOTFOUND, the name or any address of it does not exist; EAI_AGAIN, no answer in time (a timeout, a failing or
 * refusing server, no free slot before the deadline).
 */
export class ResolveError extends Error {
  readonly code: 'ENOTFOUND' | 'EAI_AGAIN'
  readonly hostname: string

  constructor (hostname: string, code: 'ENOTFOUND' | 'EAI_AGAIN', cause?: unknown) {
    super(`${hostname}: ${code === 'ENOTFOUND' ? 'no address' : 'no answer in time'}`, { cause })
    this.name = 'ResolveError'
    this.code = code
    this.hostname = hostname
  }
}

export const DEFAULT_DNS_CONCURRENCY = 8
const DEFAULT_TRIES = 2

const LOOPBACK: ResolvedAddress[] = [{ address: '127.0.0.1', family: 4 }, { address: '::1', family: 6 }]
const isLocalhost = (host: string) => /^(?:.+\.)?localhost\.?$/i.test(host)

type FamilyAnswer = { addresses: string[] } | { missing: 'name' | 'answer' }

/** One family's query, as an answer: ENODATA is an answer (the name has no such record), NXDOMAIN is "no name". */
async function query (run: () => Promise<string[]>): Promise<FamilyAnswer> {
  try {
    return { addresses: await run() }
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    if (code === 'ENODATA') return { addresses: [] }
    return { missing: code === 'ENOTFOUND' ? 'name' : 'answer' }
  }
}

export function createHostResolver (options: HostResolverOptions): HostResolver {
  const servers = options.servers.length > 0 ? [...options.servers] : getServers()
  const concurrency = options.concurrency ?? DEFAULT_DNS_CONCURRENCY
  const tries = options.tries ?? DEFAULT_TRIES
  // c-ares asks each server `tries` times; each query gets its share of the deadline, so a silent server is left
  // for the next one in time (maxTimeout stops c-ares from growing the per-try timeout past the share).
  const perTryMs = Math.max(20, Math.floor(options.timeoutMs / (tries * Math.max(1, servers.length))))

  let active = 0
  const waiting: Array<() => void> = []
  /** A slot, or false when none came free before the deadline. */
  const acquire = (deadline: number): Promise<boolean> => {
    if (active < concurrency) {
      active++
      return Promise.resolve(true)
    }
    return new Promise<boolean>((resolve) => {
      const take = () => { clearTimeout(timer); resolve(true) }
      const timer = setTimeout(() => {
        waiting.splice(waiting.indexOf(take), 1)
        resolve(false)
      }, Math.max(0, deadline - Date.now()))
      waiting.push(take)
    })
  }
  const release = () => {
    // The slot passes straight to the next in line (active stays the same), else it is freed.
    const next = waiting.shift()
    if (next !== undefined) next()
    else active--
  }

  return {
    async resolve (host) {
      const literal = isIP(host)
      if (literal !== 0) return [{ address: host, family: literal as 4 | 6 }]
      if (isLocalhost(host)) return LOOPBACK.map((entry) => ({ ...entry }))

      const deadline = Date.now() + options.timeoutMs
      if (!await acquire(deadline)) throw new ResolveError(host, 'EAI_AGAIN')
      if (Date.now() >= deadline) {
        release()
        throw new ResolveError(host, 'EAI_AGAIN')
      }
      // A channel per lookup, so that cancelling it at the deadline cancels this lookup's queries and no other's.
      const channel = new Resolver({ timeout: perTryMs, maxTimeout: perTryMs, tries })
      let timer: NodeJS.Timeout | undefined
      try {
        channel.setServers(servers)
        timer = setTimeout(() => channel.cancel(), Math.max(0, deadline - Date.now()))
        const [v4, v6] = await Promise.all([query(() => channel.resolve4(host)), query(() => channel.resolve6(host))])
        if ('missing' in v4 || 'missing' in v6) {
          // Every address must be known to be checked: one family without an answer fails the whole lookup.
          const nameMissing = ('missing' in v4 && v4.missing === 'name') || ('missing' in v6 && v6.missing === 'name')
          throw new ResolveError(host, nameMissing ? 'ENOTFOUND' : 'EAI_AGAIN')
        }
        const found = [
          ...v4.addresses.map((address): ResolvedAddress => ({ address, family: 4 })),
          ...v6.addresses.map((address): ResolvedAddress => ({ address, family: 6 }))
        ]
        if (found.length === 0) throw new ResolveError(host, 'ENOTFOUND')
        return found
      } finally {
        clearTimeout(timer)
        release()
      }
    }
  }
}
