-- A group-committed batch as the API sends it (routes/ledger/group-commit.ts): select * from post_transactions(...)
-- with :batch random transfers (-D batch=16) among bench_users (-D users=N), a fresh idempotency key per request.
-- The batch is built inside the statement (pgbench cannot draw random uuids or build json); that costs the same
-- whatever post_transactions() does with it. Transfers per second are TPS x :batch, to set against
-- post-transaction.sql (one transfer per call) and minimal-ledger-transfer.sql. Run as the API's role, e.g.
--   pgbench -n -M simple -c 8 -j 2 -T 20 -D users=5000 -D batch=16 -f post-transactions-batch.sql ledger_bench
select * from post_transactions((
  select jsonb_agg(jsonb_build_object(
           'client_id', null, 'user_id', f.id, 'key', gen_random_uuid()::text,
           'fingerprint', 'pgbench-post-transactions-fingerprint-00000', 'kind', 'transfer', 'amount', p.amount,
           'currency', 'USD', 'to_user_id', t.id, 'description', null, 'reference', null) order by p.g)
    from (
      select g, a, case when b >= a then b + 1 else b end as b, amount
        from (
          select g, 1 + floor(random() * :users)::int as a, 1 + floor(random() * (:users - 1))::int as b,
                 1 + floor(random() * 100)::int as amount
            from generate_series(1, :batch) g
        ) drawn
    ) p
    join bench_users f on f.n = p.a
    join bench_users t on t.n = p.b
), 86400);
