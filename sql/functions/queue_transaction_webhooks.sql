-- queue_transaction_webhooks(): the webhooks domain's part of a money write, called by post_transaction() in the
-- same transaction (the outbox, sql/010): one `transaction.created` event per interested principal that has a
-- subscribed endpoint (the users the money moved for; the posting client if it holds events:read), delivered to
-- each such endpoint that is not disabled (sql/014). Each job names its endpoint: the webhook lane's fairness goes
-- by it. Returns how many deliveries it queued, so the API knows whether to wake the workers after its commit.
--
-- SECURITY INVOKER and executable by its owner alone: it runs with post_transaction()'s rights (ledger_owner), and
-- the API role may not call it, so whoever holds that role's credentials cannot queue events for a transaction
-- that is not theirs, or twice.
create or replace function public.queue_transaction_webhooks(
  p_transaction_id bigint,
  p_from uuid,
  p_to uuid,
  p_client_id uuid
) returns integer
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_queued int;
begin
  with targets as (
    select e.id as endpoint_id, e.principal_id
      from public.webhook_endpoints e
     where e.principal_kind = 'user' and e.principal_id in (p_from, p_to)
       and 'transaction.created' = any (e.events) and e.disabled_at is null
    union all
    select e.id, e.principal_id
      from public.webhook_endpoints e
     where p_client_id is not null and e.principal_kind = 'client' and e.principal_id = p_client_id
       and 'transaction.created' = any (e.events) and e.disabled_at is null
       and exists (select 1 from public.service_clients c where c.id = p_client_id and 'events:read' = any (c.scopes))
  ), events as (
    select principal_id, pg_catalog.gen_random_uuid() as event_id from targets group by principal_id
  ), deliveries as (
    insert into public.webhook_deliveries (event_id, endpoint_id, type, transaction_id)
    select ev.event_id, t.endpoint_id, 'transaction.created', p_transaction_id
      from targets t join events ev using (principal_id)
    returning id, endpoint_id
  )
  insert into public.jobs (kind, payload, endpoint_id)
  select 'webhook.deliver', pg_catalog.jsonb_build_object('deliveryId', id::text), endpoint_id from deliveries;
  get diagnostics v_queued = row_count;
  return v_queued;
end
$$;

revoke all on function public.queue_transaction_webhooks from public;
