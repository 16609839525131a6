-- post_transactions(): several money writes in one statement and one commit (group commit), for API processes that
-- coalesce concurrent POST /transactions. A batch in which every request will be created (a plain one, the usual
-- case) is applied with a few set statements; any other batch request by request by post_transaction() itself, each
-- in a subtransaction, so that every refusal, replay and mismatch is post_transaction()'s. Both paths leave exactly
-- the same rows and answers (the set-based path below says what it checks and why that is enough).
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
-- concurrent write claimed while that write waits for one of the batch's balances (or, on the set-based path, which
-- claims its keys before it locks balances as post_transaction() does, a batch holding keys waits on a balance).
-- Only the same key or reference posted twice at once does that; the deadlock detector then aborts one side, which
-- wrote nothing, and the API retries it on its own.
--
-- The cap: on the per-request path each request is a subtransaction (after the set-based path's one), and a backend
-- whose transaction holds more than 64 committed subtransactions overflows its subtransaction cache, which makes
-- every other session's snapshot checks slower until it ends. The API never sends more than it is configured to;
-- this holds for whoever holds its role.
--
-- SECURITY DEFINER, owned by ledger_owner, search_path pinned to pg_catalog then pg_temp, every relation named with
-- its schema, executable by ledger_api only: the same rules as post_transaction() (scripts/migrate.ts enforces them).
-- Errors raised for the whole batch: LDG07 batch_too_large (more than 32 requests), 22023 when p_requests is not
-- a json array.
drop function if exists public.post_transactions;

-- lock_batch_balances(): creates the balance rows (p_users[i], p_currencies[i]) that are missing, at 0, then locks
-- all of them, both in the global (user_id, currency) order.
-- Returns the rows it created, so the ones no request ends up using can go again. Called by post_transactions()
-- alone, from its set-based path and again from its per-request path when the set-based one was rolled back.
-- SECURITY INVOKER and executable by its owner alone, like queue_transaction_webhooks().
create or replace function public.lock_batch_balances(
  p_users uuid[],
  p_currencies text[],
  out created_users uuid[],
  out created_currencies text[]
)
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_users is null then
    return;
  end if;
  with made as (
    insert into public.balances (user_id, currency, balance)
    -- (multi-array unnest is FROM-clause syntax and takes no schema; pg_catalog comes first in the path)
    select w.user_id, w.currency::char(3), 0
      from unnest(p_users, p_currencies) as w (user_id, currency)
     order by w.user_id, w.currency
    on conflict do nothing
    returning balances.user_id, balances.currency
  )
  select pg_catalog.array_agg(m.user_id), pg_catalog.array_agg(m.currency::text)
    into created_users, created_currencies
    from made m;

  perform 1
     from public.balances b
     join unnest(p_users, p_currencies) as w (user_id, currency)
       on b.user_id = w.user_id and b.currency = w.currency::char(3)
    order by b.user_id, b.currency
      for update of b;
end
$$;

revoke all on function public.lock_batch_balances from public;

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
  -- The set-based path: each request's arguments, parsed once, by ordinal.
  v_ids bigint[];
  v_client_ids uuid[];
  v_user_ids uuid[];
  v_keys text[];
  v_fingerprints text[];
  v_kinds text[];
  v_amounts bigint[];
  v_currency_codes text[];
  v_from_ids uuid[];
  v_to_ids uuid[];
  v_descriptions text[];
  v_references text[];
  v_queued integer[];
  v_plain boolean;
  v_lowest bigint;
  v_highest bigint;
  v_bound public.money_minor;
  v_sides integer;
  v_updated integer;
  v_ordinal integer;
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

  -- The set-based path. Most batches are plain: every request in them will be created. Those are applied with a
  -- few set statements instead of a subtransaction and post_transaction()'s statements per request, and give
  -- exactly what the per-request path below would: the same rows, ids in input order, outcomes, balances, entries,
  -- keys and outbox rows. Whatever is not plain, and whatever raises here, is rolled back with this block (its
  -- keys, balance rows and locks too; only the ids it drew are not given back, as with any rolled-back write) and
  -- the whole batch goes the per-request way, so every refusal, replay and mismatch comes from post_transaction()
  -- alone.
  --
  -- Checked before writing, because nothing would raise otherwise: every element is an object; a client may move
  -- funds (client_may_move_funds(), post_transaction()'s own rule); every side a request moves money for is one
  -- of the balance rows locked here (so its user and currency exist and no concurrent write changes it); and each
  -- of those balances stays a money_minor after every request, taking the requests in input order. That last one
  -- is post_transaction()'s funds and limit rule (LDG01 below 0, LDG03 past the domain's bound) on running sums:
  -- a request that would be refused mid-batch makes the batch not plain even when later ones would cover it. The
  -- rest raises by itself and so falls back: a key already stored (live or expired) or given twice, a reference
  -- used, an unknown user or client (foreign keys), a transfer to oneself, a kind, amount, currency, description
  -- or reference the table refuses, a value that does not cast. QUERY_CANCELED is not caught by `others`: a
  -- statement timeout ends the batch as it would on the per-request path.
  --
  -- The keys are claimed before the balances are locked, as post_transaction() does. A batch waiting here for a
  -- key that a concurrent write holds therefore holds no balance that write could be waiting for; were it the
  -- other way round, a deadlock aborted here would be waited for again on the per-request path, and the other
  -- write would then be the one the deadlock detector aborts. A lock wait that ends here in lock_timeout (55P03)
  -- falls back like any other error: the per-request path waits again and answers as it always does, so such a
  -- batch takes up to one lock_timeout longer, never answers otherwise.
  if v_count > 0 then
    begin
      select pg_catalog.bool_and(pg_catalog.jsonb_typeof(e.r) = 'object'),
             pg_catalog.array_agg((e.r->>'client_id')::uuid order by e.ordinal),
             pg_catalog.array_agg((e.r->>'user_id')::uuid order by e.ordinal),
             pg_catalog.array_agg(e.r->>'key' order by e.ordinal),
             pg_catalog.array_agg(e.r->>'fingerprint' order by e.ordinal),
             pg_catalog.array_agg(e.r->>'kind' order by e.ordinal),
             pg_catalog.array_agg((e.r->>'amount')::bigint order by e.ordinal),
             pg_catalog.array_agg(e.r->>'currency' order by e.ordinal),
             pg_catalog.array_agg((e.r->>'to_user_id')::uuid order by e.ordinal),
             pg_catalog.array_agg(e.r->>'description' order by e.ordinal),
             pg_catalog.array_agg(e.r->>'reference' order by e.ordinal)
        into v_plain, v_client_ids, v_user_ids, v_keys, v_fingerprints, v_kinds, v_amounts, v_currency_codes,
             v_to_ids, v_descriptions, v_references
        from pg_catalog.jsonb_array_elements(p_requests) with ordinality as e (r, ordinal);
      if v_plain is not true or exists (
        select 1 from unnest(v_client_ids) as c (id) where c.id is not null and not public.client_may_move_funds(c.id)
      ) then
        raise exception 'not plain';
      end if;

      -- Who pays and who is paid, as post_transaction() decides it from the kind.
      select pg_catalog.array_agg(case when r.kind = 'deposit' then null else r.user_id end order by r.ordinal),
             pg_catalog.array_agg(case r.kind when 'deposit' then r.user_id when 'withdrawal' then null else r.to_user_id end
                                  order by r.ordinal)
        into v_from_ids, v_to_ids
        from unnest(v_kinds, v_user_ids, v_to_ids) with ordinality as r (kind, user_id, to_user_id, ordinal);

      -- Ids in input order, as the per-request path takes them.
      v_ids := array(
        select pg_catalog.nextval(pg_catalog.pg_get_serial_sequence('public.transactions', 'id'))
          from pg_catalog.generate_series(1, v_count)
      );

      insert into public.idempotency_keys (principal_id, key, fingerprint, transaction_id)
      select coalesce(r.client_id, r.user_id), r.key, r.fingerprint, r.id
        from unnest(v_ids, v_client_ids, v_user_ids, v_keys, v_fingerprints)
             with ordinality as r (id, client_id, user_id, key, fingerprint, ordinal)
       order by r.ordinal;

      perform public.lock_batch_balances(v_users, v_currencies);

      with sides as (
        select r.ordinal, r.from_user_id as user_id, r.currency, -r.amount as delta
          from unnest(v_from_ids, v_currency_codes, v_amounts) with ordinality as r (from_user_id, currency, amount, ordinal)
         where r.from_user_id is not null
        union all
        select r.ordinal, r.to_user_id, r.currency, r.amount
          from unnest(v_to_ids, v_currency_codes, v_amounts) with ordinality as r (to_user_id, currency, amount, ordinal)
         where r.to_user_id is not null
      ), running as (
        select s.user_id, s.currency, b.balance is not null as locked,
               b.balance + pg_catalog.sum(s.delta) over (partition by s.user_id, s.currency order by s.ordinal) as balance
          from sides s
          left join unnest(v_users, v_currencies) as w (user_id, currency)
            on w.user_id = s.user_id and w.currency = s.currency
          left join public.balances b
            on b.user_id = w.user_id and b.currency = w.currency::char(3)
      )
      select pg_catalog.bool_and(r.locked), pg_catalog.min(r.balance), pg_catalog.max(r.balance),
             pg_catalog.count(distinct (r.user_id, r.currency))
        into v_plain, v_lowest, v_highest, v_sides
        from running r;
      if v_plain is not true then
        raise exception 'not plain';
      end if;
      -- Raises check_violation past either bound of money_minor.
      v_bound := v_lowest;
      v_bound := v_highest;

      with requests as (
        select r.*
          from unnest(v_ids, v_client_ids, v_kinds, v_amounts, v_currency_codes, v_from_ids, v_to_ids, v_descriptions,
                      v_references)
               with ordinality as r (id, client_id, kind, amount, currency, from_user_id, to_user_id, description,
                                     reference, ordinal)
      ), written as (
        insert into public.transactions (id, kind, amount, currency, from_user_id, to_user_id, description, client_id, reference)
        overriding system value
        -- bpchar into the char(3) column, as post_transaction() passes it: a longer code is refused, not cut.
        select r.id, r.kind, r.amount, r.currency::bpchar, r.from_user_id, r.to_user_id, r.description, r.client_id, r.reference
          from requests r order by r.ordinal
      ), sides as (
        select r.ordinal, r.id, s.user_id, r.currency, s.delta
          from requests r
         cross join lateral (values (r.from_user_id, -r.amount), (r.to_user_id, r.amount)) as s (user_id, delta)
         where s.user_id is not null
      ), moved as (
        insert into public.entries (user_id, transaction_id, delta)
        select s.user_id, s.id, s.delta from sides s order by s.ordinal, s.delta
      ), rebalanced as (
        update public.balances b set balance = b.balance + n.delta
          from (
            select s.user_id, s.currency, pg_catalog.sum(s.delta)::bigint as delta from sides s group by s.user_id, s.currency
          ) n
         where b.user_id = n.user_id and b.currency = n.currency::char(3)
        returning 1
      )
      select pg_catalog.count(*) into v_updated from rebalanced;
      if v_updated <> v_sides then
        raise exception 'balances moved: %, expected %', v_updated, v_sides;
      end if;

      -- The outbox, in input order, with the same probe and call as post_transaction().
      v_queued := pg_catalog.array_fill(0, array[v_count]);
      for v_ordinal in
        select r.ordinal
          from unnest(v_from_ids, v_to_ids, v_client_ids) with ordinality as r (from_user_id, to_user_id, client_id, ordinal)
         where exists (
           select 1 from public.webhook_endpoints e where e.principal_id in (r.from_user_id, r.to_user_id, r.client_id)
         )
         order by r.ordinal
      loop
        v_queued[v_ordinal] := public.queue_transaction_webhooks(
          v_ids[v_ordinal], v_from_ids[v_ordinal], v_to_ids[v_ordinal], v_client_ids[v_ordinal]);
      end loop;
    exception when others then
      -- Not plain, or refused somewhere: nothing above is kept, the per-request path decides.
      v_ids := null;
    end;

    if v_ids is not null then
      -- Every balance row made here is a side of some request, all of which were created: none is left to delete.
      return query
        select r.ordinal::integer, 'created'::text, t.id, t.kind, t.amount::bigint, t.currency, t.from_user_id,
               t.to_user_id, t.description, t.reference, t.created_at, v_queued[r.ordinal], null::text, null::text
          from unnest(v_ids) with ordinality as r (id, ordinal)
          join public.transactions t on t.id = r.id
         order by r.ordinal;
      return;
    end if;
  end if;

  -- The per-request path. Missing balance rows first, in the global order, remembered so the ones no request ends
  -- up using can go again; then all of them locked.
  select l.created_users, l.created_currencies
    into v_created_users, v_created_currencies
    from public.lock_batch_balances(v_users, v_currencies) as l;

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
