import { isIP } from 'node:net'
import { z } from 'zod'
import { boolean, list, settingsGroup } from '../../plugins/config-helpers.ts'

/** A DNS server as c-ares takes it: an IP address, optionally with a port (`1.1.1.1`, `1.1.1.1:53`, `[2606:4700::1111]:53`). */
function isDnsServer (value: string): boolean {
  const bracketed = /^\[(.+)\]:(\d{1,5})$/.exec(value)
  if (bracketed !== null) return isIP(bracketed[1] ?? '') === 6 && Number(bracketed[2]) <= 65535
  const withPort = /^([\d.]+):(\d{1,5})$/.exec(value)
  if (withPort !== null) return isIP(withPort[1] ?? '') === 4 && Number(withPort[2]) <= 65535
  return isIP(value) !== 0
}

export const webhooksConfig = settingsGroup('Webhooks', 'Outbound deliveries: guarded against private targets, bounded in time per attempt and in attempts per endpoint, retried as the job worker\'s JOB_RETRY_* say.', {
  WEBHOOK_ALLOW_PRIVATE_TARGETS: boolean.default(false)
    .describe('Allow http and private/loopback webhook targets: local development (`npm start` on the local stack sets it) and tests only.'),
  WEBHOOK_TIMEOUT_MS: z.coerce.number().int().min(100).max(10_000).default(10_000)
    .describe('One delivery attempt, connect to last byte, in ms (100-10000; 10 s by contract).'),
  WEBHOOK_CONNECT_TIMEOUT_MS: z.coerce.number().int().min(100).max(10_000).default(3000)
    .describe('Connecting (DNS, TCP, TLS handshake) inside WEBHOOK_TIMEOUT_MS, in ms (100-10000), so a receiver that never accepts frees its slot early.'),
  WEBHOOK_ENDPOINT_CONCURRENCY: z.coerce.number().int().min(1).max(100).default(4)
    .describe('Attempts in flight per endpoint, across every worker process (1-100).'),
  WEBHOOK_DISABLE_AFTER_H: z.coerce.number().int().min(1).max(24 * 365).default(72)
    .describe('An endpoint that has failed every attempt for this many hours is disabled at its next failure (1 h to a year; 3 days by contract); its owner re-enables it.'),
  WEBHOOK_DELIVERY_RETENTION_H: z.coerce.number().int().min(1).max(24 * 365).default(24 * 7)
    .describe('Hours finished deliveries stay listed before housekeeping purges them (1 h to a year).'),
  WEBHOOK_DNS_SERVERS: list.pipe(z.array(z.string().refine(isDnsServer, 'must be IP addresses, each optionally with a port (1.1.1.1, 1.1.1.1:53, [2606:4700::1111]:53)'))).default([])
    .describe('DNS servers where webhook target names are resolved, at registration and for every delivery\'s connection: ip, ip:port or [ipv6]:port, comma-separated. Unset: the system\'s resolvers (/etc/resolv.conf as the process started). Lookups go through c-ares on the event loop, never getaddrinfo on libuv\'s thread pool.'),
  WEBHOOK_DNS_TIMEOUT_MS: z.coerce.number().int().min(50).max(10_000).default(3000)
    .describe('One lookup of a target name (A and AAAA), in ms (50-10000); a name that did not answer by then is refused like one that does not exist.')
})
