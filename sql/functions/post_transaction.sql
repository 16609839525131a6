-- post_transaction(): the whole money write as one statement from the client, so a request costs one round trip
-- through PgBouncer and is atomic by construction: any raise rolls back the key claim, the balances and the rows
-- together. Re-applied by the migration runner whenever this file changes (scripts/migrate.ts); the drops make
-- a change of signature or result an ordinary edit of this file.
--
-- Who may move money how: a user (p_client_id null) transfers from their own balance (p_user_id) to another
-- user; a service client deposits to or withdraws from a user's balance (p_user_id) with its settlement
-- reference, unique per client (transactions_client_reference_key, so concurrent requests cannot both use it).
-- Idempotency keys belong to whoever posted: the client, else the user. A key older than p_key_ttl_s is expired:
-- it no longer replays (the purge deletes it later), and a new request may claim it afresh.
--
-- SECURITY DEFINER, owned by ledger_owner (no superuser, sql/bootstrap.sql), with search_path pinned to pg_catalog
-- then pg_temp (an unlisted pg_temp would be searched first) and every relation named with its schema: the API role (ledger_api) may execute this and nothing else that writes money,
-- and no object it could create (temporary tables included) can stand in for the ones named here. It trusts its
-- caller for who is calling, never for what that caller may do: a client must exist, be live and hold funds:write.
-- (scripts/migrate.ts refuses any SECURITY DEFINER function whose search_path does not end with pg_temp.)
--   outcome 'created'  : a new transaction was written
--   outcome 'replayed' : the key was used before with the same fingerprint; the original transaction is returned
--   outcome 'mismatch' : the key was used before with a different request
-- `queued` counts the webhook deliveries written with a created transaction (0 otherwise), so the API knows whether
-- to wake the workers after its commit.
-- Errors raised (the API maps each to a client error): LDG01 insufficient_funds, LDG02 user_not_found,
-- LDG03 balance_limit_exceeded, LDG04 caller_not_found, LDG05 transfer_to_self, LDG06 client_revoked (also: a
-- client without funds:write, which the API never sends);
-- 23505 on transactions_client_reference_key: the reference was used already.
drop function if exists public.post_transaction;
drop type if exists public.posted_transaction;

create type public.posted_transaction as (
  outcome text,
  id bigint,
  kind text,
  amount bigint,
  currency char(3),
  from_user_id uuid,
  to_user_id uuid,
  description text,
  reference text,
  created_at timestamptz,
  queued integer
);

create function public.post_transaction(
  p_client_id uuid,
  p_user_id uuid,
  p_key text,
  p_fingerprint text,
  p_kind text,
  p_amount bigint,
  p_currency char(3),
  p_to_user_id uuid,
  p_description text,
  p_reference text,
  p_key_ttl_s integer
) returns public.posted_transaction
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_id bigint := pg_catalog.nextval(pg_catalog.pg_get_serial_sequence('public.transactions', 'id'));
  v_owner uuid := coalesce(p_client_id, p_user_id);
  v_from uuid;
  v_to uuid;
  v_existing public.idempotency_keys%rowtype;
  v_rows int;
  v_queued int;
  v_result public.posted_transaction;
begin
  if p_client_id is null then
    -- The token may outlive its user; without this a transfer would fail on a foreign key (a 500).
    if not exists (select 1 from public.users where id = p_user_id) then
      raise exception 'caller_not_found' using errcode = 'LDG04';
    end if;
  elsif not public.client_may_move_funds(p_client_id) then
    -- Revocation reaches every API process within a second; the ledger itself never waits for that. The scope is
    -- checked here too: the API checks it first, but this function must hold for whoever holds the API's role.
    raise exception 'client_revoked' using errcode = 'LDG06';
  end if;

  -- Claim the key first. A concurrent request with the same key blocks here on the primary key until the
  -- first one commits, then sees its row and replays it: the same key never produces two transactions. An expired
  -- key is taken over as if it were new. When the key row vanishes between the claim and the lookup (the purge
  -- deleted it), the claim is simply tried again.
  loop
    insert into public.idempotency_keys (principal_id, key, fingerprint, transaction_id)
    values (v_owner, p_key, p_fingerprint, v_id)
    on conflict (principal_id, key) do update
      set fingerprint = excluded.fingerprint, transaction_id = excluded.transaction_id, created_at = now()
      where idempotency_keys.created_at < pg_catalog.now() - pg_catalog.make_interval(secs => p_key_ttl_s);
    exit when found;

    select * into v_existing from public.idempotency_keys where principal_id = v_owner and key = p_key;
    if found then
      if v_existing.fingerprint <> p_fingerprint then
        v_result.outcome := 'mismatch';
        return v_result;
      end if;
      select 'replayed', t.id, t.kind, t.amount, t.currency, t.from_user_id, t.to_user_id, t.description, t.reference, t.created_at
        into v_result from public.transactions t where t.id = v_existing.transaction_id;
      return v_result;
    end if;
  end loop;

  case p_kind
    when 'deposit' then v_to := p_user_id;
    when 'withdrawal' then v_from := p_user_id;
    else v_from := p_user_id; v_to := p_to_user_id;
  end case;

  if v_from = v_to then
    raise exception 'transfer_to_self' using errcode = 'LDG05';
  end if;

  -- The user a client names, or a transfer's recipient, must exist (the caller of a transfer was checked above).
  if exists (
    select 1 from (values (v_from), (v_to)) as side (user_id)
     where side.user_id is not null
       and not (p_client_id is null and side.user_id = p_user_id)
       and not exists (select 1 from public.users u where u.id = side.user_id)
  ) then
    raise exception 'user_not_found' using errcode = 'LDG02';
  end if;

  -- Written before the balances, so a reference another request already used fails here (its unique index
  -- waits for that request to commit), before any balance row is locked.
  insert into public.transactions (id, kind, amount, currency, from_user_id, to_user_id, description, client_id, reference)
  overriding system value
  values (v_id, p_kind, p_amount, p_currency, v_from, v_to, p_description, p_client_id, p_reference)
  returning 'created', id, kind, amount, currency, from_user_id, to_user_id, description, reference, created_at
  into v_result;

  -- Create-or-lock every balance row this write touches, in one fixed order (user id), before any arithmetic:
  -- missing rows are created at 0 first (in that order), then all are locked (in that order). Two opposite
  -- transfers wait for each other instead of deadlocking, even when one of the rows is created by a third write
  -- in between, and every check below reads a locked row.
  insert into public.balances (user_id, currency, balance)
  select side.user_id, p_currency, 0
    from (values (v_from), (v_to)) as side (user_id)
   where side.user_id is not null
   order by side.user_id
  on conflict (user_id, currency) do nothing;

  perform 1 from public.balances
   where currency = p_currency and user_id in (v_from, v_to)
   order by user_id
   for update;

  if v_from is not null then
    update public.balances set balance = balance - p_amount
     where user_id = v_from and currency = p_currency and balance >= p_amount;
    get diagnostics v_rows = row_count;
    if v_rows = 0 then
      raise exception 'insufficient_funds' using errcode = 'LDG01';
    end if;
  end if;

  if v_to is not null then
    -- A credit that would take the balance past the money_minor bound is the client's problem, not a 500.
    update public.balances set balance = balance + p_amount
     where user_id = v_to and currency = p_currency and balance <= 9007199254740991 - p_amount;
    get diagnostics v_rows = row_count;
    if v_rows = 0 then
      raise exception 'balance_limit_exceeded' using errcode = 'LDG03';
    end if;
  end if;

  insert into public.entries (user_id, transaction_id, delta)
  select user_id, v_id, delta
    from (values (v_from, -p_amount), (v_to, p_amount)) as e (user_id, delta)
   where user_id is not null;

  -- The events, in this same transaction: queue_transaction_webhooks() writes them. Most writes touch no principal
  -- with an endpoint, so one probe of the principal index decides first whether to call it. Skipping it then spares
  -- its executor start-up and its locks, taken on every call even when it writes nothing (webhook_deliveries, jobs,
  -- service_clients, the endpoint indexes): they push a transfer past the 16 relations a backend can lock on its
  -- fast path, into the shared lock table; about 10 % of this function's database CPU in pgbench. An endpoint that
  -- commits while this runs may be seen or not: nothing orders a registration against a concurrent money write.
  v_queued := 0;
  if exists (select 1 from public.webhook_endpoints e where e.principal_id in (v_from, v_to, p_client_id)) then
    v_queued := public.queue_transaction_webhooks(v_id, v_from, v_to, p_client_id);
  end if;
  v_result.queued := v_queued;

  return v_result;
end
$$;

revoke all on function public.post_transaction from public;
grant execute on function public.post_transaction to ledger_api;
