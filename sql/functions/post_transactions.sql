-- post_transactions(): several money writes in one statement and one commit (group commit), for API processes that
-- coalesce concurrent POST /transactions. Each request is applied by post_transaction() itself, so the money rules
-- live in one place; this function only orders the locks and keeps the requests apart.
--
-- p_requests is a jsonb array of objects, one per request, with post_transaction()'s arguments under the keys
-- client_id, user_id, key, fingerprint, kind, amount, currency, to_user_id, description, reference. One jsonb value
-- rather than parallel arrays: the statement text never changes with the batch, each element is read and cast
-- inside its own request's subtransaction (a malformed element is that request's refusal, never the batch's), and
-- the caller needs no array type of any parameter.
--
-- One row per request, in input order (ordinal from 1): outcome created, replayed or mismatch as post_transaction()
-- answers, or 'refused' with the SQLSTATE (and constraint, for 23505) of the error that rolled that request back:
-- LDG01..LDG06, 23505 on transactions_client_reference_key, 40P01 when the deadlock detector chose this request's
-- lock wait, or any other code for a malformed or unexpected request. Nothing a refused request did is kept.
--
-- Lock order. Before any request runs, every balance row the batch may touch is created at 0 if missing (only for
-- users and currencies that exist) and then locked, both in one global order (user_id, currency). post_transaction()
-- later finds its rows already locked. Two batches therefore never wait on each other's balances in a cycle, and a
-- single post_transaction() (one currency, user id order) follows the same order. What stays possible is a cycle
-- through an idempotency key or a client reference: a batch holding balances waits on a key or reference that a
-- concurrent write claimed while that write waits for one of the batch's balances. Only the same key or reference
-- posted twice at once does that; the deadlock detector then aborts one side, which wrote nothing, and the API
-- retries it on its own.
--
-- The cap: each request is a subtransaction, and a backend whose transaction holds more than 64 committed
-- subtransactions overflows its subtransaction cache, which makes every other session's snapshot checks slower
-- until it ends. The API never sends more than it is configured to; this holds for whoever holds its role.
--
-- SECURITY DEFINER, owned by ledger_owner, search_path pinned to pg_catalog then pg_temp, every relation named with
-- its schema, executable by ledger_api only: the same rules as post_transaction() (scripts/migrate.ts enforces them).
-- Errors raised for the whole batch: LDG07 batch_too_large (more than 32 requests), 22023 when p_requests is not
-- a json array.
drop function if exists public.post_transactions;

create function public.post_transactions(p_requests jsonb, p_key_ttl_s integer)
returns table (
  ordinal integer,
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
  queued integer,
  error_sqlstate text,
  error_constraint text
)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  c_max_requests constant integer := 32;
  v_count integer;
  v_request jsonb;
  v_posted public.posted_transaction;
  v_users uuid[];
  v_currencies text[];
  v_created_users uuid[];
  v_created_currencies text[];
  v_used_users uuid[] := '{}';
  v_used_currencies text[] := '{}';
  v_sqlstate text;
  v_constraint text;
begin
  if p_requests is null or pg_catalog.jsonb_typeof(p_requests) <> 'array' then
    raise exception 'post_transactions takes a json array of requests' using errcode = '22023';
  end if;
  v_count := pg_catalog.jsonb_array_length(p_requests);
  if v_count > c_max_requests then
    raise exception 'batch_too_large: % requests, at most %', v_count, c_max_requests using errcode = 'LDG07';
  end if;

  -- Every (user, currency) a request names, from well-formed values only: a malformed element must not fail the
  -- batch here, it is refused in its own subtransaction below. Only users and currencies that exist get a row.
  with sides as (
    select r->>'user_id' as user_id, r->>'currency' as currency
      from pg_catalog.jsonb_array_elements(p_requests) as r
     where pg_catalog.jsonb_typeof(r) = 'object'
    union
    select r->>'to_user_id', r->>'currency'
      from pg_catalog.jsonb_array_elements(p_requests) as r
     where pg_catalog.jsonb_typeof(r) = 'object' and r->>'kind' = 'transfer'
  ), wanted as (
    select distinct s.user_id::uuid as user_id, s.currency::char(3) as currency
      from sides s
     where s.user_id ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' and s.currency ~ '^[A-Z]{3}$'
  )
  select pg_catalog.array_agg(w.user_id order by w.user_id, w.currency),
         pg_catalog.array_agg(w.currency::text order by w.user_id, w.currency)
    into v_users, v_currencies
    from wanted w
   where exists (select 1 from public.users u where u.id = w.user_id)
     and exists (select 1 from public.currencies c where c.code = w.currency);

  if v_users is not null then
    -- Missing rows first, in the global order, remembered so the ones no request ends up using can go again.
    with made as (
      insert into public.balances (user_id, currency, balance)
      -- (multi-array unnest is FROM-clause syntax and takes no schema; pg_catalog comes first in the path)
      select w.user_id, w.currency::char(3), 0
        from unnest(v_users, v_currencies) as w (user_id, currency)
       order by w.user_id, w.currency
      on conflict do nothing
      returning balances.user_id, balances.currency
    )
    select pg_catalog.array_agg(m.user_id), pg_catalog.array_agg(m.currency::text)
      into v_created_users, v_created_currencies
      from made m;

    perform 1
       from public.balances b
       join unnest(v_users, v_currencies) as w (user_id, currency)
         on b.user_id = w.user_id and b.currency = w.currency::char(3)
      order by b.user_id, b.currency
        for update of b;
  end if;

  for i in 1 .. v_count loop
    v_request := p_requests -> (i - 1);
    ordinal := i;
    begin
      if pg_catalog.jsonb_typeof(v_request) <> 'object' then
        raise exception 'a request is a json object' using errcode = '22023';
      end if;
      v_posted := public.post_transaction(
        (v_request->>'client_id')::uuid,
        (v_request->>'user_id')::uuid,
        v_request->>'key',
        v_request->>'fingerprint',
        v_request->>'kind',
        (v_request->>'amount')::bigint,
        -- bpchar, not char(3): an explicit cast to char(3) would cut a longer value down to a valid-looking code.
        (v_request->>'currency')::bpchar,
        (v_request->>'to_user_id')::uuid,
        v_request->>'description',
        v_request->>'reference',
        p_key_ttl_s
      );
      outcome := v_posted.outcome;
      id := v_posted.id;
      kind := v_posted.kind;
      amount := v_posted.amount;
      currency := v_posted.currency;
      from_user_id := v_posted.from_user_id;
      to_user_id := v_posted.to_user_id;
      description := v_posted.description;
      reference := v_posted.reference;
      created_at := v_posted.created_at;
      queued := v_posted.queued;
      error_sqlstate := null;
      error_constraint := null;
      if v_posted.outcome = 'created' then
        v_used_users := v_used_users || pg_catalog.array_remove(array[v_posted.from_user_id, v_posted.to_user_id], null);
        v_used_currencies := v_used_currencies || pg_catalog.array_fill(v_posted.currency::text,
          array[pg_catalog.cardinality(pg_catalog.array_remove(array[v_posted.from_user_id, v_posted.to_user_id], null))]);
      end if;
    exception when others then
      -- Everything this request wrote is rolled back with its subtransaction; the batch goes on.
      get stacked diagnostics v_sqlstate = returned_sqlstate, v_constraint = constraint_name;
      outcome := 'refused';
      id := null; kind := null; amount := null; currency := null; from_user_id := null; to_user_id := null;
      description := null; reference := null; created_at := null; queued := null;
      error_sqlstate := v_sqlstate;
      error_constraint := nullif(v_constraint, '');
    end;
    return next;
  end loop;

  -- A balance row made above for a request that was refused or replayed would otherwise outlive the batch at 0,
  -- which no single write leaves behind (its rollback takes the row with it).
  if v_created_users is not null then
    delete from public.balances b
     using unnest(v_created_users, v_created_currencies) as made (user_id, currency)
     where b.user_id = made.user_id and b.currency = made.currency::char(3)
       and b.balance = 0
       and not exists (
         select 1 from unnest(v_used_users, v_used_currencies) as used (user_id, currency)
          where used.user_id = made.user_id and used.currency = made.currency
       );
  end if;
end
$$;

revoke all on function public.post_transactions from public;
grant execute on function public.post_transactions to ledger_api;
