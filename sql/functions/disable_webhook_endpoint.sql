-- disable_webhook_endpoint(): takes an endpoint out of delivery, as the worker does after WEBHOOK_DISABLE_AFTER_H of
-- failed attempts (record_webhook_attempt()) and as its owner does with PATCH /webhook-endpoints/:id. Its pending
-- deliveries become `failed` (keeping the count of every attempt started, those still in flight or cut short by
-- a dead worker included: they are counted from their job rows until recorded) and their queued jobs go; an attempt
-- already in flight finishes, finds its delivery final and records nothing more than its count. True when this call
-- disabled it, false when it was disabled already (or is gone).
-- post_transaction() queues nothing for a disabled endpoint; re-enabling it (the owner's PATCH) resumes delivery
-- with the next event.
--
-- SECURITY INVOKER: what the API role may do anyway, in one statement from the client; every relation is named
-- with its schema and the search_path is pinned as the definer functions' is (pg_catalog, then pg_temp last).
create or replace function public.disable_webhook_endpoint(p_endpoint_id uuid) returns boolean
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  update public.webhook_endpoints e set disabled_at = pg_catalog.now()
   where e.id = p_endpoint_id and e.disabled_at is null;
  if not found then
    return false;
  end if;
  update public.webhook_deliveries d
     set status = 'failed', next_attempt_at = null,
         attempts = greatest(d.attempts, coalesce((
           select pg_catalog.max(j.attempts) from public.jobs j
            where j.endpoint_id = p_endpoint_id and j.claimed_at is not null
              and j.payload->>'deliveryId' = d.id::text), 0))
   where d.endpoint_id = p_endpoint_id and d.status = 'pending';
  delete from public.jobs j
   where j.endpoint_id = p_endpoint_id and not (j.claimed_at is not null and j.run_at > pg_catalog.now());
  return true;
end
$$;

revoke all on function public.disable_webhook_endpoint from public;
grant execute on function public.disable_webhook_endpoint to ledger_api;
