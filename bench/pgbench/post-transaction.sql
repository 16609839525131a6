-- Baseline (c): exactly the statement POST /transactions sends for a transfer (routes/ledger/repository.ts),
-- select * from post_transaction(...), with random users and a fresh idempotency key per call. The user ids come
-- from bench_users by number inside the same statement (pgbench cannot draw random uuids). Compared with
-- transfer-one-statement.sql it shows what the function's extra checks (recipient exists, lock ordering, replay
-- lookup) cost; compared with POST /transactions it shows what HTTP, auth, rate limiting and Node cost.
\set a random(1, :users)
\set b random(1, :users - 1)
\set b case when :b >= :a then :b + 1 else :b end
\set amount random(1, 100)
select * from post_transaction(
  null, (select id from bench_users where n = :a), gen_random_uuid()::text, 'pgbench-post-transaction-fingerprint-0000000', 'transfer', :amount,
  'USD', (select id from bench_users where n = :b), null, null, 86400
);
