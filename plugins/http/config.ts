import { availableParallelism } from 'node:os'
import { z } from 'zod'
import { list, settingsGroup } from '../config-helpers.ts'

/** Seconds a production process warms itself up before its public port listens (plugins/http/warm-up.ts). */
export const DEFAULT_WARM_UP_S = 8

/**
 * V8 flags every API process starts with (the image's CMD, deploy/k8s, `npm start`, the bench and the tests' server
 * processes; test/deploy/node-flags.test.ts holds them to this list). After about ten quiet minutes V8's memory
 * reducer had shrunk the heap (about 430 to 166 MB) and bytecode flushing had dropped the request path's compiled
 * code, so the next burst met a process as cold as a fresh one without its warm-up: the day-5 load's first 10 s
 * after 11 idle minutes reached p99 2.5-2.9 s in two full-bench runs, 332 ms with these flags (docs/performance.md).
 * The price is memory held through quiet periods, the heap of a busy minute instead of an idle one.
 */
export const API_NODE_FLAGS = ['--no-memory-reducer', '--no-flush-bytecode'] as const

/** The public port's listen(2) backlog unless LISTEN_BACKLOG says otherwise. */
export const DEFAULT_LISTEN_BACKLOG = 4096

/**
 * Whether the kernel spreads new connections over sockets that share a port with SO_REUSEPORT. Linux does (by a hash
 * of each connection's addresses); elsewhere (macOS) the option exists without the balancing, so one socket per
 * process, and a node:cluster primary accepts for its workers.
 */
export const REUSE_PORT_SPREADS = process.platform === 'linux'

/** Listening sockets on the public port unless LISTEN_SOCKETS says otherwise. */
export const DEFAULT_LISTEN_SOCKETS = REUSE_PORT_SPREADS ? 8 : 1

export const httpConfig = settingsGroup('HTTP server', 'The public listener, its processes, the operations listener, request limits and load shedding (503 with Retry-After instead of timeouts).', {
  HOST: z.string().min(1).default('127.0.0.1')
    .describe('Listen address; the image and compose use 0.0.0.0.'),
  PORT: z.coerce.number().int().min(0).max(65535).default(3000)
    .describe('Listen port (0-65535).'),
  LISTEN_BACKLOG: z.coerce.number().int().min(1).max(65535).default(DEFAULT_LISTEN_BACKLOG)
    .describe('Connections the kernel holds for the public port before the process accepts them (listen(2) backlog, 1-65535, capped by net.core.somaxconn). Node\'s own 511 overflows when a thousand clients connect while a fresh process is busy, and the kernel then drops their SYNs: each dropped client waits 1 s, then 3 s, for its retry.'),
  LISTEN_SOCKETS: z.coerce.number().int().min(1).max(64).default(DEFAULT_LISTEN_SOCKETS)
    .describe('Sockets listening on the public port in this process (1-64; the default is 8 on Linux and 1 elsewhere, where the kernel does not spread connections over the sockets). Above 1 they share the port with SO_REUSEPORT and the kernel spreads new connections over them: a busy process accepts one connection per socket per turn of its event loop, so with one socket a thousand clients that connect at once wait seconds to be accepted. A second instance on the same port still fails to start. With WORKERS > 1 each worker opens this many sockets of its own on the port (WORKERS × LISTEN_SOCKETS in all); where the kernel does not spread connections, the primary accepts for the workers instead.'),
  WARM_UP_S: z.coerce.number().min(0).max(120).optional().meta({ example: String(DEFAULT_WARM_UP_S) })
    .describe(`Seconds the process sends itself requests (made-up principals, nothing read or written) before the public port listens, so that V8 has optimised the request path when traffic arrives; 0 turns it off. Unset: ${DEFAULT_WARM_UP_S} in production, 0 with NODE_ENV development or test.`),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info')
    .describe('pino level: fatal, error, warn, info, debug, trace or silent.'),
  WORKERS: z.union([
    z.literal('auto').transform(() => availableParallelism()),
    z.coerce.number().int().min(1).max(256)
  ], { error: 'must be auto or a whole number from 1 to 256' }).default(1)
    .describe('API processes on this machine behind one port (node:cluster): a whole number from 1 to 256, or `auto` for one per core. 1 runs the server in this very process. In containers keep 1 and scale with replicas (docs/scaling.md).'),
  OPS_PORT: z.coerce.number().int().min(0).max(65535).optional().meta({ example: '0' })
    .describe('The operations listener (0: off): /health/live, /health/ready and /metrics on a port of their own, for the kubelet and Prometheus. When set, /metrics leaves PORT (404 there); health stays on both (it costs no database call). With WORKERS > 1 the primary serves it: ready while every running worker is, metrics summed. Closed on shutdown after the public port drains; readiness is 503 from the start of the drain. Unset: METRICS_PORT, its former name.'),
  OPS_HOST: z.string().min(1).optional()
    .describe('Address of the operations listener. Unset: HOST (e.g. 127.0.0.1 keeps it off the network on a VM whose Prometheus runs locally).'),
  METRICS_PORT: z.coerce.number().int().min(0).max(65535).default(0).meta({ deprecated: true })
    .describe('Former name of OPS_PORT, still read when OPS_PORT is unset.'),
  BODY_LIMIT_BYTES: z.coerce.number().int().min(1024).max(10 * 1024 * 1024).default(64 * 1024)
    .describe('Largest accepted request body in bytes (1024-10485760); a larger one gets 413.'),
  TRUST_PROXY: list.default([])
    .describe('Comma-separated proxy addresses/CIDRs whose X-Forwarded-For is believed; empty trusts none.'),
  REQUEST_TIMEOUT_MS: z.coerce.number().int().min(1000).default(30_000)
    .describe('Milliseconds the whole request may take to arrive (at least 1000); slow clients are cut.'),
  PRESSURE_MAX_EVENT_LOOP_DELAY_MS: z.coerce.number().int().min(0).default(1000)
    .describe('Mean event-loop delay in ms above which requests are shed (503 with Retry-After); 0 turns the check off.'),
  PRESSURE_MAX_HEAP_USED_MB: z.coerce.number().int().min(0).default(0)
    .describe('Heap use in MiB above which requests are shed; 0 means 90 % of V8\'s heap limit.')
})
