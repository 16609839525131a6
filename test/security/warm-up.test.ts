// Abuse of the warm-up (plugins/http/warm-up.ts): the process signs tokens for made-up principals and sends itself
// requests before its ports open. Nothing it sends may reach anyone's data or money, and the loopback listener it
// uses must be gone before the process takes traffic.
import { execFileSync } from 'node:child_process'
import t from 'tap'
import { DEFAULT_LISTEN_SOCKETS } from '../../plugins/http/config.ts'
import { buildTestApp, createUser, fund, ownerSql } from '../helper.ts'
import { spawnApiServer } from '../scale/support.ts'

t.test('a warm-up moves no money, stores no key and leaves real users\' balances alone', async (t) => {
  const app = await buildTestApp(t)
  const sql = ownerSql()
  const user = await createUser(app)
  await fund(app, user, 5_000)
  const balance = async () => (await sql<{ amount: string }[]>`select balance::text as amount from balances where user_id = ${user.id} and currency = 'USD'`)[0]?.amount
  const transactions = async () => (await sql<{ n: number }[]>`select count(*)::int as n from entries where user_id = ${user.id}`)[0]?.n
  const [balanceBefore, transactionsBefore] = [await balance(), await transactions()]

  const result = await app.warmUp.run({ seconds: 1, connections: 4 })
  t.ok(result.requests > 0, `${result.requests} requests`)
  t.notOk(Object.keys(result.statuses).some((status) => status.startsWith('2') && status !== '200'), 'no 201: no write was accepted')
  const [keys] = await sql<{ n: number }[]>`select count(*)::int as n from idempotency_keys where key like 'warm-up-%'`
  t.equal(keys?.n, 0, 'no Idempotency-Key of the warm-up was stored')
  t.equal(await balance(), balanceBefore, 'a real user\'s balance is unchanged')
  t.equal(await transactions(), transactionsBefore, 'and so are their entries')
})

t.test('after the warm-up the process listens on its public port only: the loopback listener is closed', async (t) => {
  const api = await spawnApiServer(t, { WARM_UP_S: '1' })
  const listening = execFileSync('ss', ['-ltnpH'], { encoding: 'utf8' }).split('\n').filter((line) => line.includes(`pid=${api.child.pid},`))
  t.equal(listening.length, DEFAULT_LISTEN_SOCKETS, `its ${DEFAULT_LISTEN_SOCKETS} public sockets (LISTEN_SOCKETS):\n${listening.join('\n')}`)
  t.ok(listening.every((line) => line.includes(` 127.0.0.1:${api.port} `)), 'all on the public port')
})
