// PgBouncer stopped in the middle of a load and started again (issue 9). Runs after the main suite, alone
// (scripts/test.ts), against the stack that script controls.
import t from 'tap'
import { buildTestApp, createUser, hasLocalStack, testSql } from '../helper.ts'
import { outageUnderLoad, untilReady } from './support.ts'

const skip = hasLocalStack ? false : 'needs the local stack started by scripts/test.ts'

t.test('PgBouncer stopped mid-load: fast 503s, recovery by itself, every key applied exactly once', { skip }, async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  await untilReady(app)
  const users = [await createUser(app), await createUser(app), await createUser(app), await createUser(app)]
  // Connection refused and reset come back at once; the slowest honest answer is a connect attempt that PgBouncer
  // accepted while shutting down, failed by DATABASE_CONNECT_TIMEOUT_S (5 s). 7 s is that plus slack, not a hang.
  await outageUnderLoad(t, {
    fault: 'pgbouncer stopped',
    service: 'pgbouncer',
    outageMs: 2000,
    latencyBoundMs: 7000,
    app,
    users,
    sql
  })
})
