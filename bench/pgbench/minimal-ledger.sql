-- Baseline (d): the minimal ledger write (issue 20), the reference post_transaction() is held to: a PL/pgSQL
-- function on tables of its own that does the work a transfer must do and nothing else. Claim an idempotency key,
-- lock both accounts in id order, check funds, update two balances, insert the transaction and its two entries,
-- with foreign keys. No security definer, no pinned search_path, no triggers, no outbox, no indexes beyond the keys
-- the write needs; whatever post_transaction() costs beyond this is what its guarantees and features cost.
-- bench/run.ts loads this file as the owner on the direct connection after seeding (accounts: one per bench_users
-- row, with the seeded balance), and minimal-ledger-transfer.sql calls the function through PgBouncer.
drop schema if exists bench_minimal cascade;
create schema bench_minimal;

create table bench_minimal.accounts (
  id uuid primary key,
  balance bigint not null check (balance >= 0)
);

create table bench_minimal.transactions (
  id bigint generated always as identity primary key,
  from_id uuid not null references bench_minimal.accounts (id),
  to_id uuid not null references bench_minimal.accounts (id),
  amount bigint not null check (amount > 0)
);

create table bench_minimal.entries (
  transaction_id bigint not null references bench_minimal.transactions (id),
  account_id uuid not null references bench_minimal.accounts (id),
  delta bigint not null
);

create table bench_minimal.idempotency_keys (
  principal_id uuid not null,
  key text not null,
  transaction_id bigint not null,
  primary key (principal_id, key)
);

create function bench_minimal.transfer (p_from uuid, p_key text, p_to uuid, p_amount bigint) returns bigint
language plpgsql
as $$
declare
  v_id bigint := nextval('bench_minimal.transactions_id_seq');
  v_rows int;
begin
  -- The key first: a concurrent request with the same key waits on the primary key, then replays.
  insert into bench_minimal.idempotency_keys (principal_id, key, transaction_id)
  values (p_from, p_key, v_id)
  on conflict (principal_id, key) do nothing;
  if not found then
    select transaction_id into v_id from bench_minimal.idempotency_keys where principal_id = p_from and key = p_key;
    return v_id;
  end if;

  -- Both rows locked in one fixed order, so opposite transfers wait for each other instead of deadlocking.
  perform 1 from bench_minimal.accounts where id in (p_from, p_to) order by id for update;

  update bench_minimal.accounts set balance = balance - p_amount where id = p_from and balance >= p_amount;
  get diagnostics v_rows = row_count;
  if v_rows = 0 then
    raise exception 'insufficient_funds' using errcode = 'LDG01';
  end if;
  update bench_minimal.accounts set balance = balance + p_amount where id = p_to;

  insert into bench_minimal.transactions (id, from_id, to_id, amount) overriding system value
  values (v_id, p_from, p_to, p_amount);
  insert into bench_minimal.entries (transaction_id, account_id, delta)
  values (v_id, p_from, -p_amount), (v_id, p_to, p_amount);
  return v_id;
end
$$;

-- The same accounts and money as the seeded pool users (bench_users), so both baselines pick among as many rows
-- and contend alike.
insert into bench_minimal.accounts (id, balance)
select u.id, b.balance
  from bench_users u join balances b on b.user_id = u.id and b.currency = 'USD';
