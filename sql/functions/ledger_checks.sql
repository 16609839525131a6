-- The ledger check's bookkeeping (sql/015_ledger_checks.sql, routes/ledger/ledger-check.ts). SECURITY DEFINER, search_path
-- pinned with pg_temp last and every relation named with its schema (scripts/migrate.ts enforces both): the API
-- role may call these and has no write privilege on ledger_check_runs itself.
--
-- The advisory lock key of the ledger check: claims try it, the check's own transaction waits for it.
create or replace function ledger_check_lock_key() returns bigint
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$ select pg_catalog.hashtextextended('ledger-api ledger check', 0) $$;

-- claim_ledger_check(interval, runner): the slot this process may check now, or null. Takes the check's
-- transaction-scoped advisory lock without waiting: null while another process claims or runs a check (the check
-- holds the same lock for its whole snapshot). Holding it, it claims the current slot unless that slot already has
-- its run, or a run was claimed in the last minute and has not finished (claimed, about to take the lock). The lock
-- is taken before anything is read, and in READ COMMITTED each statement below reads after it, so every claim
-- committed by an earlier holder is seen. Runs older than 30 days go on the way (the history's retention).
-- Works through PgBouncer in transaction mode: nothing outlives the caller's transaction.
create or replace function claim_ledger_check(p_interval_s integer, p_runner text) returns timestamptz
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_slot timestamptz;
begin
  if p_interval_s is null or p_interval_s not between 1 and 86400 then
    raise exception 'interval must be 1 to 86400 seconds' using errcode = '22023';
  end if;
  if not pg_catalog.pg_try_advisory_xact_lock(public.ledger_check_lock_key()) then
    return null;
  end if;
  delete from public.ledger_check_runs where slot_start < pg_catalog.now() - interval '30 days';
  if exists (select 1 from public.ledger_check_runs
              where finished_at is null and started_at > pg_catalog.now() - interval '1 minute') then
    return null;
  end if;
  v_slot := pg_catalog.to_timestamp(pg_catalog.floor(extract(epoch from pg_catalog.now()) / p_interval_s) * p_interval_s);
  insert into public.ledger_check_runs (slot_start, interval_s, runner)
  values (v_slot, p_interval_s, p_runner)
  on conflict (slot_start) do nothing;
  return case when found then v_slot end;
end
$$;

-- finish_ledger_check(slot, outcome, duration, failures): records a claimed run's result, once; false when the run
-- is unknown or already finished.
create or replace function finish_ledger_check(p_slot timestamptz, p_outcome text, p_duration_s double precision, p_failures jsonb)
returns boolean
language sql
security definer
set search_path = pg_catalog, pg_temp
as $$
  with finished as (
    update public.ledger_check_runs
       set finished_at = pg_catalog.now(), outcome = p_outcome, duration_s = p_duration_s, failures = p_failures
     where slot_start = p_slot and finished_at is null
    returning 1
  )
  select exists (select 1 from finished)
$$;

revoke all on function ledger_check_lock_key() from public;
revoke all on function claim_ledger_check(integer, text) from public;
revoke all on function finish_ledger_check(timestamptz, text, double precision, jsonb) from public;
grant execute on function ledger_check_lock_key() to ledger_api;
grant execute on function claim_ledger_check(integer, text) to ledger_api;
grant execute on function finish_ledger_check(timestamptz, text, double precision, jsonb) to ledger_api;
