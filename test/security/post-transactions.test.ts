// post_transactions() (the group-commit form of post_transaction()) attacked directly by whoever holds the API
// role's credentials: through PgBouncer as ledger_api, with hostile batches. Each request is refused on its own,
// nothing is written for it (no transaction, no entry, no idempotency key, no balance row), and a batch past the cap
// is refused whole before it can pile up subtransactions.
import { randomUUID } from 'node:crypto'
import postgres from 'postgres'
import t from 'tap'
import { buildTestApp, createClient, createUser, fund, ownerSql } from '../helper.ts'
import { asApiRole, outcome, TEST_CURRENCY } from './support.ts'

/** What the ledger holds for a set of users: balance rows, entries, and keys and transactions they or a client own. */
async function footprint (userIds: string[], principals: string[] = userIds) {
  const owner = ownerSql()
  const [row] = await owner<Array<{ balances: string, entries: number, keys: number, transactions: number }>>`
    select (select coalesce(string_agg(user_id || ':' || currency || '=' || balance, ',' order by user_id, currency), '') from balances where user_id in ${owner(userIds)}) as balances,
           (select count(*)::int from entries where user_id in ${owner(userIds)}) as entries,
           (select count(*)::int from idempotency_keys where principal_id in ${owner(principals)}) as keys,
           (select count(*)::int from transactions where from_user_id in ${owner(userIds)} or to_user_id in ${owner(userIds)} or client_id in ${owner(principals)}) as transactions`
  return row
}

type Element = Record<string, unknown>

const call = (sql: postgres.Sql, requests: unknown) =>
  sql<Array<{ ordinal: number, outcome: string, error_sqlstate: string | null }>>`
    select ordinal, outcome, error_sqlstate from post_transactions(${sql.json(requests as postgres.JSONValue)}, 86400)`

t.test('only the API role may call post_transactions(), and it is a pinned SECURITY DEFINER like post_transaction()', async (t) => {
  const [fn] = await ownerSql()<Array<{ definer: boolean, config: string[], owner: string, api: boolean, public: boolean }>>`
    select p.prosecdef as definer, p.proconfig as config, pg_get_userbyid(p.proowner) as owner,
           has_function_privilege('ledger_api', p.oid, 'execute') as api,
           exists (select 1 from aclexplode(p.proacl) a where a.grantee = 0) as public
      from pg_proc p where p.proname = 'post_transactions' and p.pronamespace = 'public'::regnamespace`
  t.same(fn, { definer: true, config: ['search_path=pg_catalog, pg_temp'], owner: 'ledger_owner', api: true, public: false })
})

t.test('a batch past the cap is refused whole, before anything is written', async (t) => {
  const app = await buildTestApp(t)
  const sql = asApiRole(t)
  const [alice, bob] = [await createUser(app), await createUser(app)]
  await fund(app, alice, 1_000, TEST_CURRENCY)
  const before = await footprint([alice.id, bob.id])
  const element = () => ({ user_id: alice.id, key: randomUUID(), fingerprint: 'fp', kind: 'transfer', amount: 1, currency: TEST_CURRENCY, to_user_id: bob.id })
  t.equal(await outcome(call(sql, Array.from({ length: 33 }, element))), 'LDG07', '33 requests')
  t.equal(await outcome(call(sql, Array.from({ length: 10_000 }, element))), 'LDG07', '10,000 requests')
  t.same(await footprint([alice.id, bob.id]), before, 'nothing written')
  const [subtransactions] = await call(sql, Array.from({ length: 32 }, element))
  t.equal(subtransactions?.outcome, 'created', 'the cap itself is accepted')
})

t.test('malformed batches and elements are refused, each element on its own, without a partial write', async (t) => {
  const app = await buildTestApp(t)
  const sql = asApiRole(t)
  const [alice, bob] = [await createUser(app), await createUser(app)]
  await fund(app, alice, 1_000, TEST_CURRENCY)
  const before = await footprint([alice.id, bob.id])
  for (const [label, batch] of [['an object', { user_id: alice.id }], ['a string', 'x'], ['a number', 1], ['json null', null]] as const) {
    t.equal(await outcome(call(sql, batch)), '22023', `a batch that is ${label}`)
  }
  t.equal(await outcome(sql`select * from post_transactions('not json', 86400)`), '22P02', 'text that is no json')
  t.equal(await outcome(sql`select * from post_transactions(null, 86400)`), '22023', 'SQL null')

  const good = () => ({ user_id: alice.id, key: randomUUID(), fingerprint: 'fp', kind: 'transfer', amount: 5, currency: TEST_CURRENCY, to_user_id: bob.id })
  const { key: _, ...keyless } = good()
  const hostile: Array<[string, unknown, string]> = [
    ['a number, not an object', 42, '22023'],
    ['an array, not an object', [good()], '22023'],
    ['an amount as words', { ...good(), amount: 'five' }, '22P02'],
    ['a fractional amount', { ...good(), amount: 1.5 }, '22P02'],
    ['an amount as an object', { ...good(), amount: { value: 5 } }, '22P02'],
    ['a user id that is no uuid', { ...good(), user_id: 'alice' }, '22P02'],
    ['a recipient that is no uuid', { ...good(), to_user_id: "' or 1=1 --" }, '22P02'],
    ['a client id that is no uuid', { ...good(), client_id: 12 }, '22P02'],
    ['no key', keyless, '23502'],
    ['a currency of four letters', { ...good(), currency: 'USDX' }, '22001'],
    ['an unknown kind', { ...good(), kind: 'mint', to_user_id: null }, '23514'],
    ['a zero amount', { ...good(), amount: 0 }, '23514'],
    ['a negative amount', { ...good(), amount: -500 }, '23514'],
    ['an amount past the money bound', { ...good(), amount: 9_007_199_254_740_992 }, '23514'],
    ['an amount past bigint', { ...good(), amount: '99999999999999999999' }, '22003'],
    ['a transfer to oneself', { ...good(), to_user_id: alice.id }, 'LDG05']
  ]
  const rows = await call(sql, hostile.map(([, element]) => element))
  t.equal(rows.length, hostile.length, 'one row per element')
  t.same(rows.map((row) => [row.outcome, row.error_sqlstate]), hostile.map(([, , code]) => ['refused', code]))
  for (const [index, [label, , code]] of hostile.entries()) t.equal(rows[index]?.error_sqlstate, code, label)
  t.same(await footprint([alice.id, bob.id]), before, 'nothing written, no balance row made')
})

t.test('clients that do not exist, are revoked or lack funds:write, and users posting as clients, are refused', async (t) => {
  const app = await buildTestApp(t)
  const sql = asApiRole(t)
  const [victim, thief] = [await createUser(app), await createUser(app)]
  const processor = await createClient(app)
  await fund(app, victim, 1_000, TEST_CURRENCY, { client: processor })
  const reader = await createClient(app, ['events:read'], 'events only')
  const revoked = await createClient(app, ['funds:write'], 'revoked settlement')
  await ownerSql()`update service_clients set revoked_at = now() where id = ${revoked.id}`
  const principals = [victim.id, thief.id, reader.id, revoked.id]
  const before = await footprint([victim.id, thief.id], principals)
  const funding = (clientId: string | null, kind: string, userId: string, extra: Element = {}) =>
    ({ client_id: clientId, user_id: userId, key: randomUUID(), fingerprint: 'fp', kind, amount: 100, currency: TEST_CURRENCY, reference: `forged-${randomUUID()}`, ...extra })
  const cases: Array<[string, Element, string]> = [
    ['an unknown client deposits', funding(randomUUID(), 'deposit', thief.id), 'LDG06'],
    ['a client with only events:read deposits', funding(reader.id, 'deposit', thief.id), 'LDG06'],
    ['a revoked client deposits', funding(revoked.id, 'deposit', thief.id), 'LDG06'],
    ['a revoked client withdraws the victim\'s money', funding(revoked.id, 'withdrawal', victim.id), 'LDG06'],
    ['a user id given as the client id withdraws from the victim', funding(thief.id, 'withdrawal', victim.id), 'LDG06'],
    ['the victim\'s id given as the client id', funding(victim.id, 'withdrawal', victim.id), 'LDG06'],
    ['a user deposits to themselves without a client', funding(null, 'deposit', thief.id), '23514'],
    ['a user withdraws from the victim without a client', funding(null, 'withdrawal', victim.id), '23514'],
    ['a client transfers the victim\'s money to the thief', funding(processor.id, 'transfer', victim.id, { to_user_id: thief.id, reference: null }), '23514'],
    ['a client withdraws past the victim\'s balance', funding(processor.id, 'withdrawal', victim.id, { amount: 1_001 }), 'LDG01'],
    ['a transfer from a user who does not exist', funding(null, 'transfer', randomUUID(), { to_user_id: thief.id, reference: null }), 'LDG04']
  ]
  const rows = await call(sql, cases.map(([, element]) => element))
  t.same(rows.map((row) => [row.outcome, row.error_sqlstate]), cases.map(([, , code]) => ['refused', code]))
  for (const [index, [label, , code]] of cases.entries()) t.equal(rows[index]?.error_sqlstate, code, label)
  t.same(await footprint([victim.id, thief.id], principals), before, 'nothing written for any of them')
})

t.test('a batch that balances only in sum, or names a balance by another spelling of its user id, gets the per-request answers', async (t) => {
  const app = await buildTestApp(t)
  const sql = asApiRole(t)
  const [alice, bob] = [await createUser(app), await createUser(app)]
  const processor = await createClient(app)
  const revoked = await createClient(app, ['funds:write'], 'revoked settlement')
  await ownerSql()`update service_clients set revoked_at = now() where id = ${revoked.id}`
  await fund(app, alice, 1_000, TEST_CURRENCY, { client: processor })
  await fund(app, bob, 500, TEST_CURRENCY, { client: processor })
  const principals = [alice.id, bob.id, processor.id, revoked.id]
  const send = (from: string, to: string, amount: unknown) =>
    ({ user_id: from, key: randomUUID(), fingerprint: 'fp', kind: 'transfer', amount, currency: TEST_CURRENCY, to_user_id: to })
  const balances = async () => (await footprint([alice.id, bob.id], principals))?.balances

  // Alice overdraws first and is refilled after: in sum she never goes below 0, request by request she does.
  const before = await footprint([alice.id, bob.id], principals)
  let rows = await call(sql, [send(alice.id, bob.id, 1_200), send(bob.id, alice.id, -100), send(bob.id, alice.id, 500)])
  t.same(rows.map((row) => [row.outcome, row.error_sqlstate]), [['refused', 'LDG01'], ['refused', '23514'], ['created', null]])
  t.same(await footprint([alice.id, bob.id], principals), {
    balances: [`${alice.id}:${TEST_CURRENCY}=1500`, `${bob.id}:${TEST_CURRENCY}=0`].sort().join(','),
    entries: (before?.entries ?? 0) + 2,
    keys: (before?.keys ?? 0) + 1,
    transactions: (before?.transactions ?? 0) + 1
  }, 'only the refill was written')

  // The same users spelled otherwise: the uuid is the same, so is the balance, and so is the refusal of oneself.
  const spellings = [bob.id.toUpperCase(), bob.id.replaceAll('-', ''), `{${bob.id}}`]
  rows = await call(sql, [...spellings.map((spelling) => send(alice.id, spelling, 1)), send(alice.id, alice.id.toUpperCase(), 1)])
  t.same(rows.map((row) => [row.outcome, row.error_sqlstate]), [['created', null], ['created', null], ['created', null], ['refused', 'LDG05']])
  t.equal(await balances(), [`${alice.id}:${TEST_CURRENCY}=1497`, `${bob.id}:${TEST_CURRENCY}=3`].sort().join(','))

  // A revoked client among requests that are all fine otherwise.
  const deposit = (clientId: string, amount: number) =>
    ({ client_id: clientId, user_id: bob.id, key: randomUUID(), fingerprint: 'fp', kind: 'deposit', amount, currency: TEST_CURRENCY, reference: `ref-${randomUUID()}` })
  rows = await call(sql, [deposit(processor.id, 10), deposit(revoked.id, 1_000_000), send(alice.id, bob.id, 7)])
  t.same(rows.map((row) => [row.outcome, row.error_sqlstate]), [['created', null], ['refused', 'LDG06'], ['created', null]])
  t.equal(await balances(), [`${alice.id}:${TEST_CURRENCY}=1490`, `${bob.id}:${TEST_CURRENCY}=20`].sort().join(','))
})

t.test('the API role cannot call the helpers post_transactions() runs with its owner\'s rights', async (t) => {
  const app = await buildTestApp(t)
  const sql = asApiRole(t)
  const alice = await createUser(app)
  const before = await footprint([alice.id])
  t.equal(await outcome(sql`select * from lock_batch_balances(array[${alice.id}]::uuid[], array['EUR'])`), '42501', 'lock_batch_balances(): no EXECUTE')
  t.equal(await outcome(sql`select client_may_move_funds(${randomUUID()}::uuid)`), '42501', 'client_may_move_funds(): no EXECUTE')
  t.same(await footprint([alice.id]), before, 'no balance row made')
  const helpers = await ownerSql()<Array<{ fn: string, definer: boolean, config: string, public: boolean }>>`
    select p.proname as fn, p.prosecdef as definer, array_to_string(p.proconfig, ',') as config,
           exists (select 1 from aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a where a.grantee = 0 and a.privilege_type = 'EXECUTE') as public
      from pg_proc p
     where p.pronamespace = 'public'::regnamespace and p.proname in ('lock_batch_balances', 'client_may_move_funds') order by p.proname`
  t.same(helpers, ['client_may_move_funds', 'lock_batch_balances'].map((fn) => ({ fn, definer: false, config: 'search_path=pg_catalog, pg_temp', public: false })),
    'their caller\'s rights, pinned search_path, no PUBLIC execute')
})
