-- record_webhook_attempt(): the outcome of one delivery attempt, in one statement from the worker
-- (routes/webhook-endpoints/jobs.ts): the delivery's status, attempts, last status code and next attempt, and its
-- endpoint's health. A 2xx resets the endpoint's run of failures; a failure extends it, and a failure when the run
-- has lasted p_disable_after_s (every attempt failed since failing_since) disables the endpoint
-- (disable_webhook_endpoint()), which also fails this delivery. Nothing is recorded when the delivery is no longer
-- pending (its endpoint was deleted or disabled meanwhile, or a late attempt of a job another worker took over).
-- Returns the delivery's new status and whether this attempt disabled the endpoint; no row when nothing was recorded.
--
-- SECURITY INVOKER, search_path pinned: as disable_webhook_endpoint().
create or replace function public.record_webhook_attempt(
  p_delivery_id bigint,
  p_attempts integer,
  p_status_code integer,
  p_delivered boolean,
  p_next_attempt_at timestamptz,
  p_disable_after_s integer
) returns table (status text, endpoint_disabled boolean)
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_endpoint uuid;
  v_status text;
  v_expired boolean := false;
begin
  select d.endpoint_id into v_endpoint
    from public.webhook_deliveries d
   where d.id = p_delivery_id and d.status = 'pending';
  if not found then
    return;
  end if;

  if p_delivered then
    update public.webhook_endpoints e set consecutive_failures = 0, failing_since = null
     where e.id = v_endpoint and e.consecutive_failures > 0;
    v_status := 'delivered';
  else
    -- The row lock taken here orders concurrent attempts of this endpoint: one of them disables it, once.
    update public.webhook_endpoints e
       set consecutive_failures = e.consecutive_failures + 1,
           failing_since = coalesce(e.failing_since, pg_catalog.now())
     where e.id = v_endpoint
    returning e.disabled_at is null and e.failing_since <= pg_catalog.now() - pg_catalog.make_interval(secs => p_disable_after_s)
      into v_expired;
    v_status := case when p_next_attempt_at is null or coalesce(v_expired, false) then 'failed' else 'pending' end;
  end if;

  update public.webhook_deliveries d
     set status = v_status,
         attempts = greatest(d.attempts, p_attempts),
         last_status_code = p_status_code,
         next_attempt_at = case when v_status = 'pending' then p_next_attempt_at end
   where d.id = p_delivery_id and d.status = 'pending';

  if coalesce(v_expired, false) then
    return query select v_status, public.disable_webhook_endpoint(v_endpoint);
  else
    return query select v_status, false;
  end if;
end
$$;

revoke all on function public.record_webhook_attempt from public;
grant execute on function public.record_webhook_attempt to ledger_api;
