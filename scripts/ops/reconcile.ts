// `npm run reconcile`: checks the ledger's invariants over the whole database and exits 0 only when all hold.
// Like `npm start` it uses the configured database (DATABASE_DIRECT_URL, else DATABASE_URL: read-only work, so the
// API's role will do) or else the project-local stack. The invariants are one SQL function, ledger_invariants()
// (sql/functions/ledger_invariants.sql), read through routes/ledger/invariants.ts by this command, the ledger check,
// the fault suite and the route tests.
import postgres from 'postgres'
import { reconcileLedger, type ReconcileCheck } from '../../routes/ledger/invariants.ts'
import { localStackUp } from '../local-stack.ts'
import { migrate } from '../migrate.ts'

export { ledgerInvariants, reconcileLedger, type ReconcileCheck } from '../../routes/ledger/invariants.ts'

export function renderReconciliation (checks: ReconcileCheck[], seconds: number): string {
  const lines = checks.flatMap((check) => [
    `${check.ok ? 'OK  ' : 'FAIL'}  ${check.name}: ${check.checked}`,
    ...check.offending.map((row) => `      ${JSON.stringify(row)}`)
  ])
  lines.push(`reconcile: ${checks.filter((c) => c.ok).length} held, ${checks.filter((c) => !c.ok).length} failed, in ${seconds.toFixed(1)} s`)
  return lines.join('\n')
}

if (import.meta.main) {
  let url = process.env.DATABASE_DIRECT_URL || process.env.DATABASE_URL
  if (url === undefined || url === '') {
    url = localStackUp().DATABASE_DIRECT_URL
    await migrate(url, (line) => console.error(line))
  }
  const sql = postgres(url, { max: 1, prepare: false, onnotice: () => {}, connect_timeout: 10, connection: { application_name: 'ledger-reconcile' } })
  const started = performance.now()
  try {
    const checks = await reconcileLedger(sql)
    console.log(renderReconciliation(checks, (performance.now() - started) / 1000))
    process.exitCode = checks.every((check) => check.ok) ? 0 : 1
  } catch (error) {
    console.error('reconcile failed:', error instanceof Error ? error.message : error)
    process.exitCode = 2
  } finally {
    await sql.end({ timeout: 5 })
  }
}
