import { z } from 'zod'
import { settingsGroup } from '../../plugins/config-helpers.ts'

export const ledgerConfig = settingsGroup('Ledger', 'Idempotent posting, the active currencies, and the ledger check: the whole ledger\'s invariants (those of `npm run reconcile`) verified in the background.', {
  IDEMPOTENCY_KEY_TTL_H: z.coerce.number().int().min(24).max(24 * 365).default(24)
    .describe('Hours an Idempotency-Key replays its first answer (24 to a year; payment APIs keep them at least a day); older keys are purged in the background and may be used afresh.'),
  CURRENCIES_REFRESH_S: z.coerce.number().int().min(1).max(3600).default(60)
    .describe('Seconds between each API process\'s re-reads of the active currencies (1-3600): a currency enabled or retired in the currencies table is accepted or refused by every process within about this long.'),
  RECONCILE_INTERVAL_S: z.coerce.number().int().min(0).max(86_400).default(600)
    .describe('The ledger check runs once per this many seconds among all API processes (0-86400): each tries, one checks the whole ledger in one snapshot per interval. 0: this process never runs it, and the ledger-check-not-run alert says so once no process does (docs/operations.md).'),
  LEDGER_BATCH_MAX: z.coerce.number().int().min(1).max(32).default(32)
    .describe('The most POST /transactions one database call carries (1-32; post_transactions() refuses more): while a call is in flight, arriving money writes queue and leave together as one call and one commit. 1 sends every write alone.'),
  LEDGER_BATCHES_IN_FLIGHT: z.coerce.number().int().min(1).max(64).default(4)
    .describe('The most money-write database calls each API process keeps in flight at once (1-64). A write that finds no call in flight leaves at once, alone; while one is in flight, writes queue and leave together when it returns, and a further call leaves only with a full batch (LEDGER_BATCH_MAX waiting), so a light load makes one call at a time (the biggest batches, the least database work per write) and a backlog drains in parallel. Keep it well below DATABASE_POOL_MAX, which reads share.'),
  RECONCILE_STATEMENT_TIMEOUT_S: z.coerce.number().int().min(1).max(3600).default(300)
    .describe('The longest one statement of the ledger check may run, in seconds (1-3600): whole-table scans, beyond the database\'s own 5 s guard rail.')
})
