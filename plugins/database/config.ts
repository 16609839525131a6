import { z } from 'zod'
import { settingsGroup, url } from '../config-helpers.ts'

/**
 * PgBouncer's server-side cap in the local stack, compose and deploy/k8s: max_db_connections in
 * deploy/pgbouncer/pgbouncer.ini, which test/deploy/pgbouncer-settings.test.ts holds this constant to. With several
 * workers and no DATABASE_POOL_MAX, each worker gets an equal share of it, so workers x pool stays at 20 client
 * connections: queueing then happens in each worker's pool, not in PgBouncer, and PostgreSQL never sees more.
 */
export const PGBOUNCER_SERVER_CONNECTIONS = 20
export const DEFAULT_POOL_MAX = 10
export const defaultPoolMax = (workers: number) =>
  workers > 1 ? Math.max(2, Math.floor(PGBOUNCER_SERVER_CONNECTIONS / workers)) : DEFAULT_POOL_MAX

const postgresUrl = () => url(['postgres:', 'postgresql:'])

export const databaseConfig = settingsGroup('PostgreSQL', 'The primary through PgBouncer (transaction mode), an optional streaming replica for reads, and each pool\'s circuit breaker.', {
  DATABASE_URL: postgresUrl().meta({ example: 'postgres://ledger_api@127.0.0.1:62432/ledger' })
    .describe('Required, no default: PostgreSQL through PgBouncer (transaction mode), as the restricted ledger_api role. `npm start` fills it from the local stack when unset.'),
  DATABASE_DIRECT_URL: postgresUrl().optional().meta({ example: 'postgres://ledger@127.0.0.1:61432/ledger' })
    .describe('PostgreSQL directly, as the `ledger` login that acts as the schema owner (sql/bootstrap.sql): migrations, seeding, `npm run clients` and `npm run reconcile`. A transaction-mode pooler is fine for queries, not for them. Unset: DATABASE_URL.'),
  DATABASE_POOL_MAX: z.coerce.number().int().min(1).max(100).optional().meta({ example: String(DEFAULT_POOL_MAX) })
    .describe(`Connections each API process opens to PgBouncer (1-100). Unset: ${DEFAULT_POOL_MAX}, or with WORKERS > 1 max(2, floor(${PGBOUNCER_SERVER_CONNECTIONS} / WORKERS)), each worker's share of PgBouncer's max_db_connections = ${PGBOUNCER_SERVER_CONNECTIONS}, so queueing happens in the pools rather than in PgBouncer. Each process also keeps one connection of its own for the readiness probe. Rule: processes x (pool + 1) <= PgBouncer's max_client_conn (2000).`),
  DATABASE_POOL_WARM: z.coerce.number().int().min(0).max(100).optional().meta({ example: String(DEFAULT_POOL_MAX) })
    .describe('Connections each pool opens while the process starts, before it listens and reports ready (0-100, at most the pool\'s size), so the first burst of requests does not wait for connects. Unset: the whole pool (DATABASE_POOL_MAX); 0: connections open on demand. A connection that does not open within DATABASE_CONNECT_TIMEOUT_S delays the start by that long at most and opens on demand later.'),
  DATABASE_IDLE_TIMEOUT_S: z.coerce.number().int().min(0).default(0)
    .describe('Seconds an idle pooled connection is kept before it is closed; 0 (the default) keeps it until its lifetime ends (30-60 minutes, drawn per connection). An idle client connection to PgBouncer holds no PostgreSQL backend, and one closed during a quiet period would be reopened by the first request after it.'),
  DATABASE_CONNECT_TIMEOUT_S: z.coerce.number().int().min(1).max(60).default(5)
    .describe('Seconds to wait for a new connection (1-60); after it the request gets 503.'),
  DATABASE_CIRCUIT_FAILURES: z.coerce.number().int().min(1).max(1000).default(5)
    .describe('Connection failures in a row that open a pool\'s circuit breaker (1-1000): statements then get 503 at once instead of waiting on a database that is down.'),
  DATABASE_CIRCUIT_OPEN_MS: z.coerce.number().int().min(10).max(60_000).default(250)
    .describe('Milliseconds an open circuit refuses statements before one probe statement goes through (10-60000).'),
  DATABASE_REPLICA_URL: postgresUrl().optional().meta({ example: 'postgres://ledger@127.0.0.1:61433/ledger' })
    .describe('Optional streaming replica for GET /transactions and uncached GET /feed pages (the same pool size as the primary). Locally: `npm run stack -- replica up` and `npm run stack -- replica env`; in production PgBouncer in front of it (docs/scaling.md).'),
  READ_YOUR_WRITES_S: z.coerce.number().int().min(1).max(3600).default(5)
    .describe('Seconds after a caller\'s write during which their reads stay on the primary (read-your-writes, 1-3600), so they never read older data than they wrote.')
})
