-- Deletes up to p_limit idempotency keys older than p_ttl_s seconds (never younger than a day, whatever the
-- caller asks), oldest first, skipping keys a concurrent request holds; returns how many went. Every API process
-- calls it now and then (plugins/housekeeping/index.ts), so the table stays the size of the window. SECURITY DEFINER:
-- the API role may run this, but may not DELETE from the table itself. Its search_path ends with pg_temp and every
-- relation is named with its schema, so nothing the caller creates can stand in for them.
create or replace function public.purge_idempotency_keys(p_ttl_s integer, p_limit integer) returns integer
language sql
security definer
set search_path = pg_catalog, pg_temp
as $$
  with doomed as (
    select principal_id, key
      from public.idempotency_keys
     where created_at < pg_catalog.now() - pg_catalog.make_interval(secs => greatest(p_ttl_s, 86400))
     order by created_at
     limit p_limit
       for update skip locked
  ), purged as (
    delete from public.idempotency_keys k
     using doomed d
     where k.principal_id = d.principal_id and k.key = d.key
    returning 1
  )
  select count(*)::integer from purged
$$;

revoke all on function public.purge_idempotency_keys from public;
grant execute on function public.purge_idempotency_keys to ledger_api;
