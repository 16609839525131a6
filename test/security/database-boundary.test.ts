// Assume SQL injection: whoever holds the API role's credentials (an injected statement, a leaked DATABASE_URL, a
// compromised pod or dependency) connects through PgBouncer as the API does and attacks the ledger directly. Every
// attempt is refused by PostgreSQL itself, the API's later requests on the same pooled server connections write
// real ledger rows, and the ledger reconciles afterwards.
import { randomUUID } from 'node:crypto'
import postgres from 'postgres'
import t from 'tap'
import { hashClientSecret } from '../../routes/identity/clients.ts'
import { reconcileLedger } from '../../scripts/ops/reconcile.ts'
import { buildTestApp, createClient, createUser, fund, ownerSql, type TestUser } from '../helper.ts'
import { asApiRole, outcome, TEST_CURRENCY } from './support.ts'

const apiUrl = process.env.DATABASE_URL ?? ''
const adminUrl = process.env.DATABASE_ADMIN_URL

const INSUFFICIENT_PRIVILEGE = '42501'

// Every relation the SECURITY DEFINER functions name, and what a look-alike of each needs to stand in for it.
const SHADOWS: Record<string, string> = {
  users: 'id uuid primary key',
  service_clients: 'id uuid primary key, revoked_at timestamptz, scopes text[]',
  idempotency_keys: 'principal_id uuid, key text, fingerprint text, transaction_id bigint, created_at timestamptz default now(), primary key (principal_id, key)',
  transactions: 'id bigint primary key, kind text, amount bigint, currency char(3), from_user_id uuid, to_user_id uuid, description text, client_id uuid, reference text, created_at timestamptz default now()',
  entries: 'user_id uuid, transaction_id bigint, delta bigint',
  balances: 'user_id uuid, currency char(3), balance bigint, primary key (user_id, currency)',
  webhook_endpoints: 'id uuid, principal_id uuid, principal_kind text, events text[]',
  webhook_deliveries: 'id bigint, event_id uuid, endpoint_id uuid, type text, transaction_id bigint',
  jobs: 'id bigint, kind text, payload jsonb'
}

async function balanceOf (userId: string): Promise<string | undefined> {
  const [row] = await ownerSql()<Array<{ balance: string }>>`
    select balance::text from balances where user_id = ${userId} and currency = ${TEST_CURRENCY}`
  return row?.balance
}

/** Ledger entries of a user (one per transaction that moved their money; entries' key starts with the user). */
async function entryCount (userId: string): Promise<number> {
  const [row] = await ownerSql()<Array<{ n: number }>>`select count(*)::int as n from entries where user_id = ${userId}`
  return row?.n ?? 0
}

// post_transaction()'s arguments in order: client, user, key, fingerprint, kind, amount, currency, recipient,
// description, reference, key TTL.
const callPost = (sql: postgres.Sql, args: { clientId: string | null, userId: string, kind: string, amount: number, toUserId?: string | null, reference?: string | null }) => sql`
  select (p).outcome, (p).id::text as id from (
    select post_transaction(${args.clientId}::uuid, ${args.userId}::uuid, ${randomUUID()}, ${randomUUID()}, ${args.kind}, ${args.amount}::bigint,
      ${TEST_CURRENCY}::char(3), ${args.toUserId ?? null}::uuid, null, ${args.reference ?? null}, 86400) as p) s`

t.test('the API role cannot create anything: no temporary tables, no tables, functions or schemas of its own', async (t) => {
  const sql = asApiRole(t)
  // The reproduction's first statement, and its variants, for every relation the definer functions touch.
  for (const [name, columns] of Object.entries(SHADOWS)) {
    t.equal(await outcome(sql.unsafe(`create temporary table ${name} (${columns})`)), INSUFFICIENT_PRIVILEGE, `create temporary table ${name}`)
    t.equal(await outcome(sql.unsafe(`create table pg_temp.${name} (${columns})`)), INSUFFICIENT_PRIVILEGE, `create table pg_temp.${name}`)
  }
  t.equal(await outcome(sql`create table public.attacker_table (id int)`), INSUFFICIENT_PRIVILEGE, 'create table in public')
  t.equal(await outcome(sql`create schema attacker`), INSUFFICIENT_PRIVILEGE, 'create schema')
  t.equal(await outcome(sql`create function public.attacker_fn() returns int language sql as 'select 1'`), INSUFFICIENT_PRIVILEGE, 'create function in public')
  t.equal(await outcome(sql`create function pg_temp.attacker_fn() returns int language sql as 'select 1'`), INSUFFICIENT_PRIVILEGE, 'create function in pg_temp')

  const [privileges] = await sql<Array<{ temp: boolean, create: boolean, super: boolean, createrole: boolean, bypassrls: boolean, owner: boolean }>>`
    select has_database_privilege(current_database(), 'TEMPORARY') as temp,
           has_database_privilege(current_database(), 'CREATE') as create,
           r.rolsuper as super, r.rolcreaterole as createrole, r.rolbypassrls as bypassrls,
           pg_has_role(current_user, 'ledger_owner', 'usage') as owner
      from pg_roles r where r.rolname = current_user`
  t.same(privileges, { temp: false, create: false, super: false, createrole: false, bypassrls: false, owner: false })
  t.equal(await outcome(sql`set role ledger_owner`), INSUFFICIENT_PRIVILEGE, 'cannot act as the owner')
  t.equal(await outcome(sql`set session authorization ledger`), INSUFFICIENT_PRIVILEGE, 'cannot become the migrator')
})

t.test('every SECURITY DEFINER function is owned by a role that is no superuser and pins search_path with pg_temp last', async (t) => {
  const owner = ownerSql()
  const definers = await owner<Array<{ fn: string, config: string[] | null, super: boolean, createrole: boolean, bypassrls: boolean, canlogin: boolean }>>`
    select p.oid::regprocedure::text as fn, p.proconfig as config, r.rolsuper as super, r.rolcreaterole as createrole,
           r.rolbypassrls as bypassrls, r.rolcanlogin as canlogin
      from pg_proc p join pg_roles r on r.oid = p.proowner
     where p.prosecdef and p.pronamespace = 'public'::regnamespace
     order by 1`
  t.ok(definers.length >= 3, `the ledger's definer functions are there: ${definers.map((d) => d.fn).join(', ')}`)
  for (const fn of definers) {
    t.same({ super: fn.super, createrole: fn.createrole, bypassrls: fn.bypassrls, canlogin: fn.canlogin },
      { super: false, createrole: false, bypassrls: false, canlogin: false }, `${fn.fn} is owned by the NOLOGIN owner role`)
    t.same(fn.config, ['search_path=pg_catalog, pg_temp'], `${fn.fn} pins its search_path`)
  }
})

// Defence in depth, should TEMPORARY ever be granted again: a login in the API role's group, given TEMPORARY,
// shadows every relation the functions name (a trigger on the look-alike key table would rewrite a real balance, as
// the functions' owner) and then calls them on that same session. Making the login needs a superuser.
const needsAdmin = adminUrl === undefined ? 'needs DATABASE_ADMIN_URL (the test runner sets it for its local stack)' : false
t.test('even a role that may create temporary tables cannot make the definer functions use them', { skip: needsAdmin }, async (t) => {
  if (adminUrl === undefined) return
  const app = await buildTestApp(t)
  const [sender, recipient, victim] = [await createUser(app), await createUser(app), await createUser(app)]
  await fund(app, sender, 1_000, TEST_CURRENCY)
  await fund(app, victim, 500, TEST_CURRENCY)
  const database = new URL(apiUrl).pathname.slice(1)
  const role = `ledger_attacker_${process.pid}`
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {} })
  t.teardown(async () => {
    await admin.unsafe(`drop owned by ${role}`).catch(() => {})
    await admin.unsafe(`drop role if exists ${role}`)
    await admin.end({ timeout: 5 })
  })
  await admin.unsafe(`create role ${role} login in role ledger_api`)
  await admin.unsafe(`grant temporary on database ${database} to ${role}`)
  const direct = new URL(process.env.DATABASE_DIRECT_URL ?? '')
  direct.username = role
  direct.pathname = `/${database}`
  const attacker = postgres(direct.toString(), { max: 1, prepare: false, onnotice: () => {} })
  t.teardown(() => attacker.end({ timeout: 5 }))
  // A direct session keeps its temporary objects across statements.
  await attacker.begin(async (tx) => {
    for (const [name, columns] of Object.entries(SHADOWS)) await tx.unsafe(`create temporary table ${name} (${columns}) on commit preserve rows`)
  })
  const forgedClient = randomUUID()
  await attacker`insert into pg_temp.service_clients values (${forgedClient}, null, '{funds:write}')`
  await attacker`insert into pg_temp.users values (${sender.id}), (${recipient.id}), (${victim.id})`
  await attacker.unsafe(`
    create function pg_temp.steal() returns trigger language plpgsql as $$
    begin
      update public.balances set balance = balance + 1000000 where user_id = '${victim.id}';
      return new;
    end $$`)
  await attacker.unsafe('create trigger steal before insert on pg_temp.idempotency_keys for each row execute function pg_temp.steal()')

  const forged = await outcome(callPost(attacker, { clientId: forgedClient, userId: victim.id, kind: 'deposit', amount: 1_000_000, reference: `forged-${randomUUID()}` }))
  t.equal(forged, 'LDG06', 'a client that exists only in a temporary table is refused')
  t.equal(await balanceOf(victim.id), '500', 'and no balance moved, by the call or by a trigger on a look-alike table')

  const [posted] = await callPost(attacker, { clientId: null, userId: sender.id, kind: 'transfer', amount: 300, toUserId: recipient.id })
  t.equal(posted?.outcome, 'created')
  const real = await ownerSql()<Array<{ amount: string, entries: number }>>`
    select t.amount::text,
           (select count(*)::int from entries e where e.user_id in (t.from_user_id, t.to_user_id) and e.transaction_id = t.id) as entries
      from transactions t where t.id = ${posted?.id ?? '0'}`
  t.same(real, [{ amount: '300', entries: 2 }], 'the transfer wrote the real transaction and its two entries')
  const [shadowed] = await attacker<Array<{ n: number }>>`
    select (select count(*) from pg_temp.transactions) + (select count(*) from pg_temp.entries) + (select count(*) from pg_temp.idempotency_keys) as n`
  t.equal(Number(shadowed?.n), 0, 'nothing went to the look-alike tables')
  t.equal(await balanceOf(sender.id), '700')
  t.equal(await balanceOf(recipient.id), '300')
  t.equal(await balanceOf(victim.id), '500')
})

t.test('post_transaction() refuses clients that do not exist, are revoked or lack funds:write, whoever calls it', async (t) => {
  const app = await buildTestApp(t)
  const sql = asApiRole(t)
  const user = await createUser(app)
  const reader = await createClient(app, ['events:read'], 'events only')
  const revoked = await createClient(app, ['funds:write'], 'revoked settlement')
  await ownerSql()`update service_clients set revoked_at = now() where id = ${revoked.id}`
  for (const [label, clientId] of [['an unknown client id', randomUUID()], ['a client holding only events:read', reader.id], ['a revoked client', revoked.id]] as const) {
    for (const kind of ['deposit', 'withdrawal']) {
      t.equal(await outcome(callPost(sql, { clientId, userId: user.id, kind, amount: 10_000, reference: `forged-${randomUUID()}` })), 'LDG06', `${kind} by ${label}`)
    }
  }
  t.equal(await balanceOf(user.id), undefined, 'no balance row was even made')
  t.equal(await entryCount(user.id), 0, 'no transaction was written for the user')
})

t.test('the API role cannot write money tables, read secret hashes, or queue work that only the ledger queues', async (t) => {
  const app = await buildTestApp(t)
  const sql = asApiRole(t)
  const user: TestUser = await createUser(app)
  await fund(app, user, 100, TEST_CURRENCY)
  const [tx] = await ownerSql()<Array<{ id: string }>>`select transaction_id::text as id from entries where user_id = ${user.id}`
  const txId = tx?.id ?? '0'

  const writes: Record<string, postgres.PendingQuery<postgres.Row[]>> = {
    'insert transactions': sql`insert into transactions (kind, amount, currency, to_user_id, client_id, reference) values ('deposit', 1, ${TEST_CURRENCY}, ${user.id}, null, null)`,
    'update transactions': sql`update transactions set amount = 1000000 where id = ${txId}`,
    'delete transactions': sql`delete from transactions where id = ${txId}`,
    'insert entries': sql`insert into entries (user_id, transaction_id, delta) values (${user.id}, ${txId}, 1000000)`,
    'update entries': sql`update entries set delta = 1000000 where transaction_id = ${txId}`,
    'delete entries': sql`delete from entries where transaction_id = ${txId}`,
    'insert balances': sql`insert into balances (user_id, currency, balance) values (${user.id}, 'EUR', 1000000)`,
    'update balances': sql`update balances set balance = 1000000 where user_id = ${user.id}`,
    'delete balances': sql`delete from balances where user_id = ${user.id}`,
    'read idempotency keys': sql`select * from idempotency_keys limit 1`,
    'delete idempotency keys': sql`delete from idempotency_keys`,
    'truncate transactions': sql`truncate transactions`,
    'read secret hashes': sql`select secret_hash from service_clients`,
    'read service clients': sql`select id from service_clients`,
    'write service clients': sql`insert into service_clients (name, secret_hash, scopes) values ('mine', ${Buffer.alloc(32)}, '{funds:write}')`,
    'queue a webhook delivery': sql`insert into jobs (kind, payload) values ('webhook.deliver', ${sql.json({ deliveryId: '1' })})`,
    'queue an unknown kind': sql`insert into jobs (kind, payload) values ('shell.exec', ${sql.json({ cmd: 'id' })})`,
    'queue a job as already attempted': sql`insert into jobs (kind, payload, attempts) values ('feed.fan_out', ${sql.json({})}, 99)`,
    'turn a queued job into another kind': sql`update jobs set kind = 'webhook.deliver'`,
    'write webhook deliveries': sql`insert into webhook_deliveries (event_id, endpoint_id, type, transaction_id) values (${randomUUID()}, ${randomUUID()}, 'transaction.created', ${txId})`,
    'rewrite schema history': sql`delete from schema_migrations`
  }
  for (const [label, statement] of Object.entries(writes)) {
    t.equal(await outcome(statement), INSUFFICIENT_PRIVILEGE, label)
  }
  t.equal(await balanceOf(user.id), '100')
  t.same(await ownerSql()<Array<{ amount: string }>>`select amount::text from transactions where id = ${txId}`, [{ amount: '100' }])

  // What the role may do with clients: check one credential, getting the same nothing for every wrong answer.
  const client = await createClient(app, ['funds:write'])
  const [right] = await sql<Array<{ id: string }>>`select id from authenticate_client(${client.id}, ${hashClientSecret(client.secret)})`
  t.equal(right?.id, client.id)
  t.same(await sql`select id from authenticate_client(${client.id}, ${hashClientSecret('lsk_guess')})`, [], 'a wrong secret: no row')
  t.same(await sql`select id from authenticate_client(${randomUUID()}, ${hashClientSecret(client.secret)})`, [], 'an unknown client: no row')
  // What the API itself queues, it still may.
  const [queued] = await sql<Array<{ id: string }>>`insert into jobs (kind, payload, run_at) values ('feed.remove_post', ${sql.json({ postId: '0', authorId: user.id })}, now() + interval '1 day') returning id::text`
  t.ok(queued?.id, 'a feed job is queued')
  await ownerSql()`delete from jobs where id = ${queued?.id ?? '0'}`
})

t.test('state left on pooled server connections does not change what the next client\'s money writes do', async (t) => {
  const app = await buildTestApp(t)
  const attacker = asApiRole(t)
  // Spread over PgBouncer's server connections: each attempt may land on a different one.
  for (let i = 0; i < 20; i++) {
    t.equal(await outcome(attacker.unsafe('create temporary table transactions (id bigint)')), INSUFFICIENT_PRIVILEGE)
    await attacker.unsafe('set search_path = pg_temp, public')
  }
  const [sender, recipient] = [await createUser(app), await createUser(app)]
  await fund(app, sender, 1_000, TEST_CURRENCY)
  const ids: string[] = []
  for (let i = 0; i < 20; i++) {
    const response = await app.inject({
      method: 'POST',
      url: '/transactions',
      headers: { authorization: sender.authorization, 'idempotency-key': randomUUID() },
      payload: { kind: 'transfer', amount: 10, currency: TEST_CURRENCY, toUserId: recipient.id }
    })
    t.equal(response.statusCode, 201, `transfer ${i}: ${response.statusCode === 201 ? 'created' : response.body}`)
    ids.push(String(response.json().id))
  }
  const rows = await ownerSql()<Array<{ id: string, entries: number }>>`
    select t.id::text,
           (select count(*)::int from entries e where e.user_id in (t.from_user_id, t.to_user_id) and e.transaction_id = t.id) as entries
      from transactions t where t.id = any(${ids}::bigint[]) and t.from_user_id = ${sender.id}`
  t.equal(rows.length, 20, 'every answered id is a real transaction of this sender')
  t.ok(rows.every((row) => row.entries === 2), 'each with its two entries')
  t.equal(await balanceOf(sender.id), '800')
  t.equal(await balanceOf(recipient.id), '200')
})

t.test('the ledger reconciles after every attack above', async (t) => {
  const checks = await reconcileLedger(ownerSql())
  for (const check of checks) t.ok(check.ok, `${check.name}: ${check.checked} ${JSON.stringify(check.offending)}`)
})
