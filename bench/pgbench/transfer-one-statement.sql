-- Baseline (b): the database's ceiling for one money write per request. A transfer as ONE statement through
-- PgBouncer: claim an idempotency key, debit with a balance guard, credit, insert the transaction and its two
-- entries, all in data-modifying CTEs (one round trip, one commit). Run by bench/run.ts with
--   pgbench -n -M simple -c 50 -j 2 -T <s> --max-tries=10 -D users=<N> -f transfer-one-statement.sql ledger_bench
-- bench_users maps 1..N to the seeded users' ids. It writes the ledger tables directly, which only the owner may
-- (sql/007), so bench/run.ts runs it as the owner through the same PgBouncer. Deadlocks between opposite transfers are possible here (no lock
-- ordering); pgbench retries them (--max-tries) and reports how many.
\set a random(1, :users)
\set b random(1, :users - 1)
\set b case when :b >= :a then :b + 1 else :b end
\set amount random(1, 100)
with pair as (
  select f.id as from_id, t.id as to_id, nextval(pg_get_serial_sequence('transactions', 'id')) as tx_id
    from bench_users f, bench_users t
   where f.n = :a and t.n = :b
), claim as (
  insert into idempotency_keys (principal_id, key, fingerprint, transaction_id)
  select from_id, gen_random_uuid()::text, 'pgbench-one-statement', tx_id from pair
  on conflict (principal_id, key) do nothing
  returning principal_id as user_id, transaction_id
), debit as (
  update balances b set balance = b.balance - :amount
    from claim c
   where b.user_id = c.user_id and b.currency = 'USD' and b.balance >= :amount
  returning c.transaction_id
), credit as (
  insert into balances (user_id, currency, balance)
  select p.to_id, 'USD', :amount from pair p join debit d on d.transaction_id = p.tx_id
  on conflict (user_id, currency) do update set balance = balances.balance + excluded.balance
  returning user_id
), tx as (
  insert into transactions (id, kind, amount, currency, from_user_id, to_user_id, description)
  overriding system value
  select p.tx_id, 'transfer', :amount, 'USD', p.from_id, p.to_id, null
    from pair p join debit d on d.transaction_id = p.tx_id
  returning id, kind, amount, currency, from_user_id, to_user_id, description, created_at
), moved as (
  insert into entries (user_id, transaction_id, delta)
  select e.user_id, tx.id, e.delta
    from tx cross join lateral (values (tx.from_user_id, -tx.amount::bigint), (tx.to_user_id, tx.amount::bigint)) as e (user_id, delta)
  returning transaction_id
)
select tx.*, (select count(*) from credit) as credited, (select count(*) from moved) as entries from tx;
