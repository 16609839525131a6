// scripts/ops/reconcile.ts run as the operator runs it (its own process) against the test database: it passes on
// the ledger as the API leaves it and fails, naming the row, on one the owner corrupted on purpose. Runs with the
// fault suite (one file at a time, after the main suite), as test/faults/ledger-check.test.ts does: it corrupts the
// shared test ledger for a few seconds, and the main suite's files check it whole (test/security/database-boundary's
// reconcile failed on this test's +7 when the two ran side by side).
import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { buildTestApp, createUser, fund, testSql } from '../helper.ts'

const script = fileURLToPath(new URL('../../scripts/ops/reconcile.ts', import.meta.url))

function reconcile (): Promise<{ code: number, stdout: string, stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [script], { env: process.env, timeout: 120_000 }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : Number(error.code ?? 1), stdout, stderr })
    })
  })
}

t.test('passes on a sound ledger, fails with the offending row on a corrupted one, passes again once repaired', async (t) => {
  const app = await buildTestApp(t)
  const owner = testSql(t)
  const alice = await createUser(app)
  const bob = await createUser(app)
  await fund(app, alice, 1_000)
  const transfer = await app.inject({
    method: 'POST',
    url: '/transactions',
    headers: { authorization: alice.authorization, 'idempotency-key': `r-${alice.id}` },
    payload: { kind: 'transfer', amount: 250, currency: 'USD', toUserId: bob.id }
  })
  t.equal(transfer.statusCode, 201)

  const sound = await reconcile()
  t.equal(sound.code, 0, sound.stdout + sound.stderr)
  t.match(sound.stdout, /^OK {4}balances per currency = deposits - withdrawals: .*USD \d+ = \d+/m)
  t.match(sound.stdout, /^OK {4}every balance = sum of its entries: \d+ balances$/m)
  t.match(sound.stdout, /^OK {4}every transaction's entries match it: \d+ transactions$/m)
  t.match(sound.stdout, /^OK {4}no reference used twice: \d+ references$/m)
  t.match(sound.stdout, /^reconcile: 4 held, 0 failed, in [\d.]+ s$/m)

  // The owner bypasses post_transaction(): a balance that no entry explains, and totals that no longer add up.
  await owner`update balances set balance = balance + 7 where user_id = ${bob.id} and currency = 'USD'`
  try {
    const corrupted = await reconcile()
    t.equal(corrupted.code, 1, 'exit 1')
    t.match(corrupted.stdout, /^FAIL {2}balances per currency = deposits - withdrawals/m)
    t.match(corrupted.stdout, /^FAIL {2}every balance = sum of its entries/m)
    t.match(corrupted.stdout, new RegExp(`"user_id":"${bob.id}","currency":"USD","balance":"257","entries":"250"`), 'names the row')
    t.match(corrupted.stdout, /^OK {4}every transaction's entries match it/m, 'the history itself is intact')
  } finally {
    await owner`update balances set balance = balance - 7 where user_id = ${bob.id} and currency = 'USD'`
  }
  t.equal((await reconcile()).code, 0, 'repaired: exit 0 again')
})
