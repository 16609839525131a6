// Loaded into every test process before its file (package.json, tap's node-arg): tests never resolve a name through
// the machine's resolver, only `localhost` and names a test's own DNS server answers on loopback (test/dns-server.ts).
// A lookup that would leave the machine fails loudly instead: it throws where it was made, and the same error is
// thrown again outside any catch, so code that turns lookup failures into answers ("does not resolve") cannot hide
// it and the test file fails.
//
// Guarded: getaddrinfo (dns.lookup, and so every socket connecting to a name) for anything but localhost and IP
// literals; c-ares (the module's resolve functions and every Resolver's, callback and promise forms) unless every
// server it would ask is on loopback.
import dns from 'node:dns'
import { syncBuiltinESMExports } from 'node:module'
import { isIP } from 'node:net'

const isLocal = (host: unknown) => typeof host === 'string' && (isIP(host) !== 0 || /^(?:.+\.)?localhost\.?$/i.test(host))

function isLoopbackServer (server: string): boolean {
  const address = server.replace(/^\[(.+)\](?::\d+)?$/, '$1').replace(/^([\d.]+):\d+$/, '$1')
  return address === '::1' || (isIP(address) === 4 && address.startsWith('127.'))
}

function refuse (what: string): never {
  const error = new Error(`${what}: a test resolved a name through the machine's resolver; run a DNS server of its own on loopback (test/dns-server.ts) and point the resolver at it`)
  setImmediate(() => { throw error })
  throw error
}

type AnyFunction = (this: unknown, ...args: unknown[]) => unknown

function guardLookup (target: { lookup: AnyFunction }) {
  const original = target.lookup
  target.lookup = function (this: unknown, ...args: unknown[]) {
    if (!isLocal(args[0])) refuse(`getaddrinfo(${JSON.stringify(args[0])})`)
    return original.apply(this, args)
  }
}

/** Wraps every resolve* and reverse method of `target` (a Resolver prototype or the module): loopback servers only. */
function guardResolver (target: Record<string, unknown>, servers: (self: unknown) => string[]) {
  for (const name of Object.getOwnPropertyNames(target)) {
    const original = target[name]
    if (typeof original !== 'function' || !/^(resolve|reverse)/.test(name)) continue
    target[name] = function (this: unknown, ...args: unknown[]) {
      const asked = servers(this)
      if (!asked.every(isLoopbackServer)) refuse(`${name}(${JSON.stringify(args[0])}) through ${asked.join(', ') || 'the system resolvers'}`)
      return (original as AnyFunction).apply(this, args)
    }
  }
}

guardLookup(dns as unknown as { lookup: AnyFunction })
guardLookup(dns.promises as unknown as { lookup: AnyFunction })
const ownServers = (self: unknown) => (self as { getServers: () => string[] }).getServers()
guardResolver(dns.Resolver.prototype as unknown as Record<string, unknown>, ownServers)
guardResolver(dns.promises.Resolver.prototype as unknown as Record<string, unknown>, ownServers)
guardResolver(dns as unknown as Record<string, unknown>, () => dns.getServers())
guardResolver(dns.promises as unknown as Record<string, unknown>, () => dns.getServers())
// `import { lookup } from 'node:dns'` reads these bindings: make them the guarded functions too.
syncBuiltinESMExports()
