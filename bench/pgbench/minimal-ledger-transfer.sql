-- Baseline (d): the minimal ledger write (minimal-ledger.sql), called exactly like post-transaction.sql calls
-- post_transaction(): one statement through the same PgBouncer, random users by number from bench_users, a fresh
-- idempotency key per call. POST /transactions is held to >= 0.60x of it (issue 20); compared with
-- post-transaction.sql it shows what post_transaction() does beyond the work a transfer must do.
\set a random(1, :users)
\set b random(1, :users - 1)
\set b case when :b >= :a then :b + 1 else :b end
\set amount random(1, 100)
select * from bench_minimal.transfer(
  (select id from bench_users where n = :a), gen_random_uuid()::text, (select id from bench_users where n = :b), :amount
);
