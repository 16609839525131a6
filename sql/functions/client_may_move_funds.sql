-- client_may_move_funds(): who among service clients may deposit and withdraw, the one rule post_transaction()
-- (each request) and post_transactions() (a whole batch at once) both ask: the client exists, is not revoked and
-- holds funds:write.
--
-- SECURITY INVOKER and executable by its owner alone, like queue_transaction_webhooks(): it runs inside the definer
-- functions, with their rights. Its search_path is pinned all the same and every relation named with its schema.
create or replace function public.client_may_move_funds(p_client_id uuid) returns boolean
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
  select exists (
    select 1 from public.service_clients c
     where c.id = p_client_id and c.revoked_at is null and 'funds:write' = any (c.scopes)
  )
$$;

revoke all on function public.client_may_move_funds from public;
