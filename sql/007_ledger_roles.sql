-- The API connects as `ledger_api` (through PgBouncer); migrations, seeding and operator tools as the owner.
-- The API role reads what it serves and writes only the rows that are not money: users, posts, revocations. Money
-- moves only through post_transaction() (SECURITY DEFINER), so a bug or an injected statement in the API cannot
-- UPDATE a balance or DELETE an entry: PostgreSQL refuses it. The platform normally creates the role with LOGIN and
-- a password (scripts/stack.sh, compose.yaml); it is created here, without login, only where it is missing.
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'ledger_api') then
    create role ledger_api nologin;
  end if;
  execute format('grant connect on database %I to ledger_api', current_database());
end
$$;

grant usage on schema public to ledger_api;
grant select on users, posts, transactions, entries, balances, service_clients, revocations to ledger_api;
grant insert, update on users to ledger_api;
grant insert on posts to ledger_api;
grant insert, update on revocations to ledger_api;
-- Tables later migrations create are readable by the API; anything more is granted where the table is made.
alter default privileges in schema public grant select on tables to ledger_api;

-- History is append-only for everyone, the owner included: a correction is a new transaction, never an edit.
-- (Deleting a user who has transactions was already impossible: the foreign keys refuse it.)
create function ledger_history_is_append_only() returns trigger
language plpgsql
as $$
begin
  raise exception '% on % refused: ledger history is append-only', tg_op, tg_table_name using errcode = 'LDG90';
end
$$;

create trigger transactions_append_only before update or delete on transactions
  for each row execute function ledger_history_is_append_only();
create trigger transactions_no_truncate before truncate on transactions
  for each statement execute function ledger_history_is_append_only();
create trigger entries_append_only before update or delete on entries
  for each row execute function ledger_history_is_append_only();
create trigger entries_no_truncate before truncate on entries
  for each statement execute function ledger_history_is_append_only();

-- Keys are kept for a window (IDEMPOTENCY_KEY_TTL_H, at least a day) and purged in the background; the index
-- lets the purge find the oldest without scanning the table.
create index idempotency_keys_created_at_idx on idempotency_keys (created_at);
