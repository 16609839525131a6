-- claim_webhook_jobs(): the webhook lane's claim (plugins/worker.ts runs it as the lane's claim statement). Leases up
-- to p_limit due delivery jobs, fairly:
--   - round-robin across endpoints: the endpoints with due work are taken in the order they were last served
--     (webhook_endpoints.last_claimed_at, never served first), and within one claim every endpoint gets its first
--     job before any gets a second;
--   - first attempts ahead of retries, across all endpoints;
--   - at most p_endpoint_limit attempts in flight per endpoint, across every worker process: an attempt is in flight
--     while its job is claimed (claimed_at) and its lease (run_at) has not run out.
-- The attempt counts from the claim: the deliveries list reads an attempt in flight from its job row
-- (jobs.claimed_at, jobs.attempts), so a delivery is written once per attempt, when its outcome is recorded.
-- Two workers claiming for the same endpoint at once could both count its attempts before either commits, so each
-- endpoint is claimed for under a transaction-scoped advisory lock (taken in one global order; a claim for the same
-- endpoint waits its milliseconds), and the attempts are counted by a later statement of this VOLATILE function: it
-- takes a fresh snapshot, which sees every claim committed before the lock was granted. One statement from the
-- client, so it works through PgBouncer in transaction mode.
--
-- Each claimed delivery comes with what its attempt sends (context: the delivery's event, its endpoint's URL and
-- secret, its transaction), read in this statement rather than by one more round trip per attempt; null when there
-- is nothing to send (the delivery is gone or final, or its endpoint disabled), which the handler reads for itself.
--
-- SECURITY INVOKER: it does what the API role (the worker's role) may do anyway; every relation is named with its
-- schema and the search_path is pinned as the definer functions' is (pg_catalog, then pg_temp last). p_due_by bounds the due time (runDue's
-- start, so retries coming due meanwhile wait; null: now), p_matching keeps to jobs whose payload contains one of
-- the given JSON fragments (tests, operators), as the other lanes' claim does.
-- The result gained a column (context): a return type is changed by dropping the function first. A worker of the
-- previous release names the columns it reads, so the extra one does not disturb it.
drop function if exists public.claim_webhook_jobs(integer, integer, integer, timestamptz, jsonb);

create or replace function public.claim_webhook_jobs(
  p_limit integer,
  p_lease_ms integer,
  p_endpoint_limit integer,
  p_due_by timestamptz default null,
  p_matching jsonb default null
) returns table (
  id text,
  kind text,
  payload jsonb,
  attempts integer,
  created_at timestamptz,
  due_at timestamptz,
  lag_s double precision,
  first_attempt_lag_s double precision,
  context jsonb
)
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_due_by timestamptz := coalesce(p_due_by, pg_catalog.now());
  v_endpoints uuid[];
begin
  if p_limit <= 0 then
    return;
  end if;
  -- Planned at every claim, for the queue as it is now. A plan cached per connection (a generic plan) is made
  -- for the queue as it was then: made while the jobs table was empty, or analyzed as empty after a drain, it
  -- stayed in use after a burst of 10,000 jobs, each claim took seconds (statement and lock timeouts) and nothing
  -- was delivered until autovacuum's next ANALYZE, up to a minute later (test/faults/webhooks.test.ts after the
  -- fairness file). Planning each claim costs a little CPU; the custom plan reads the table's current size. For
  -- this transaction only (a claim is one statement from the client).
  perform pg_catalog.set_config('plan_cache_mode', 'force_custom_plan', true);

  -- The endpoints with due work, least recently served first. The recursive part is a skip scan of
  -- jobs_endpoint_idx: one probe per endpoint with pending jobs, however many jobs each holds.
  select coalesce(pg_catalog.array_agg(ready.endpoint_id order by ready.served nulls first, ready.endpoint_id), '{}') into v_endpoints
    from (
      with recursive pending (endpoint_id) as (
        (select j.endpoint_id from public.jobs j
          where j.endpoint_id is not null and j.failed_at is null
          order by j.endpoint_id limit 1)
        union all
        select (select j.endpoint_id from public.jobs j
                 where j.endpoint_id > p.endpoint_id and j.failed_at is null
                 order by j.endpoint_id limit 1)
          from pending p
         where p.endpoint_id is not null
      )
      select p.endpoint_id, e.last_claimed_at as served
        from pending p
        left join public.webhook_endpoints e on e.id = p.endpoint_id
       where p.endpoint_id is not null
         and exists (
           select 1 from public.jobs j
            where j.endpoint_id = p.endpoint_id and j.failed_at is null and j.run_at <= v_due_by
              and not (j.claimed_at is not null and j.run_at > pg_catalog.now())
              and (p_matching is null or exists (
                select 1 from pg_catalog.jsonb_array_elements(p_matching) m (fragment) where j.payload @> m.fragment)))
       order by e.last_claimed_at nulls first, p.endpoint_id
       limit p_limit
    ) ready;

  -- One claimer per endpoint at a time: another worker's claim for the same endpoint is waited for (it takes
  -- milliseconds), so every worker gets its share of a busy endpoint. The locks are taken in one global order, so
  -- two claims never wait for each other in a circle.
  perform pg_catalog.pg_advisory_xact_lock(k.key)
     from (select distinct pg_catalog.hashtextextended('webhook_claim:' || x.id::text, 0) as key
             from pg_catalog.unnest(v_endpoints) as x (id)) k
    order by k.key;

  if pg_catalog.cardinality(v_endpoints) = 0 then
    return;
  end if;

  -- A new statement, hence a new snapshot: every claim for these endpoints that committed before their locks were
  -- granted is counted. Job rows are not locked: no other claimer takes these endpoints' jobs while the locks are
  -- held, and a row changed meanwhile (a late result, a deletion) is re-checked by the UPDATE's own condition.
  return query
  with ready as (
    select r.endpoint_id, r.ord,
           greatest(p_endpoint_limit - (
             select count(*) from public.jobs f
              where f.endpoint_id = r.endpoint_id and f.claimed_at is not null and f.run_at > pg_catalog.now()
           ), 0) as free
      from pg_catalog.unnest(v_endpoints) with ordinality as r (endpoint_id, ord)
  ), candidates as (
    select c.id, c.retry, c.run_at, c.started_at, r.ord,
           pg_catalog.row_number() over (partition by r.endpoint_id order by c.retry, c.run_at, c.id) as turn
      from ready r
     cross join lateral (
       select j.id, j.attempts > 0 as retry, j.run_at, j.started_at
         from public.jobs j
        where j.endpoint_id = r.endpoint_id and j.failed_at is null and j.run_at <= v_due_by
          and not (j.claimed_at is not null and j.run_at > pg_catalog.now())
          and (p_matching is null or exists (
            select 1 from pg_catalog.jsonb_array_elements(p_matching) m (fragment) where j.payload @> m.fragment))
        order by j.attempts > 0, j.run_at, j.id
        limit r.free
     ) c
  ), picked as (
    select c.id, c.run_at, c.started_at from candidates c
     order by c.retry, c.turn, c.ord
     limit p_limit
  ), claimed as (
    update public.jobs j
       set run_at = pg_catalog.now() + p_lease_ms * interval '1 millisecond',
           attempts = j.attempts + 1,
           claimed_at = pg_catalog.now(),
           started_at = coalesce(j.started_at, pg_catalog.now())
      from picked p
     where j.id = p.id and j.failed_at is null and j.run_at <= v_due_by
       and not (j.claimed_at is not null and j.run_at > pg_catalog.now())
    returning j.id, j.kind, j.payload, j.attempts, j.created_at, j.endpoint_id, p.run_at as due_at, p.started_at is null as first
  ), served as (
    update public.webhook_endpoints e
       set last_claimed_at = pg_catalog.now()
     where e.id = any (array(select c.endpoint_id from claimed c))
  )
  select c.id::text, c.kind, c.payload, c.attempts, c.created_at, c.due_at,
         extract(epoch from pg_catalog.now() - c.due_at)::double precision,
         case when c.first then extract(epoch from pg_catalog.now() - c.created_at)::double precision end,
         s.context
    from claimed c
    left join lateral (
      select pg_catalog.jsonb_build_object(
               'event_id', d.event_id, 'type', d.type, 'endpoint_id', d.endpoint_id, 'url', e.url, 'secret', e.secret,
               't_id', t.id::text, 'kind', t.kind, 'amount', t.amount::text, 'currency', t.currency,
               'from_user_id', t.from_user_id, 'to_user_id', t.to_user_id, 'description', t.description,
               'reference', t.reference, 'created_at', t.created_at) as context
        from public.webhook_deliveries d
        join public.webhook_endpoints e on e.id = d.endpoint_id
        join public.transactions t on t.id = d.transaction_id
       -- A payload that is not a delivery id (never written so) gets no context rather than failing the claim.
       where c.payload->>'deliveryId' ~ '^[1-9][0-9]{0,17}$'
         and d.id = (c.payload->>'deliveryId')::bigint and d.status = 'pending' and e.disabled_at is null
    ) s on true;
end
$$;

revoke all on function public.claim_webhook_jobs from public;
grant execute on function public.claim_webhook_jobs to ledger_api;
