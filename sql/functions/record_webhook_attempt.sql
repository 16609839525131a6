-- record_webhook_attempt(): the outcome of one delivery attempt, in one statement from the worker
-- (routes/webhook-endpoints/queries.ts recordAttempt, which sends a success's writes as a plain statement of the same
-- shape as the delivered branch here, so keep the two alike): the delivery's status, attempts, last status code and next attempt, and its
-- endpoint's health. A 2xx resets the endpoint's run of failures; a failure extends it, and a failure when the run
-- has lasted p_disable_after_s (every attempt failed since failing_since) disables the endpoint
-- (disable_webhook_endpoint()), which also fails this delivery. When the delivery is no longer pending (its endpoint
-- was deleted or disabled meanwhile, or a late attempt of a job another worker took over), only the attempt is
-- counted. When the outcome is final (not a retry), the attempt's job row (p_job_id, leased for this attempt:
-- attempts = p_attempts) is removed in the same transaction, so a delivered event costs one commit, not two.
-- Returns the delivery's new status (null when nothing but the attempt was recorded), whether this attempt disabled
-- the endpoint, and whether the job row was removed (false: a retry, the lease was lost, or no p_job_id).
--
-- SECURITY INVOKER, search_path pinned: as disable_webhook_endpoint().
-- The earlier signature (no job id, two result columns) is replaced: a worker of the previous release still
-- calls it with six arguments, which the default of p_job_id keeps working.
drop function if exists public.record_webhook_attempt(bigint, integer, integer, boolean, timestamptz, integer);

create or replace function public.record_webhook_attempt(
  p_delivery_id bigint,
  p_attempts integer,
  p_status_code integer,
  p_delivered boolean,
  p_next_attempt_at timestamptz,
  p_disable_after_s integer,
  p_job_id bigint default null
) returns table (status text, endpoint_disabled boolean, job_finished boolean)
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_endpoint uuid;
  v_status text;
  v_expired boolean := false;
  v_finished boolean := false;
begin
  -- Planned once per connection, not at every call (its statements look rows up by primary key); for this
  -- transaction only.
  perform pg_catalog.set_config('plan_cache_mode', 'force_generic_plan', true);
  if p_delivered then
    -- The healthy path, one statement: the delivery, the endpoint's run of failures (written only when there is
    -- one), the job.
    with delivered as (
      update public.webhook_deliveries d
         set status = 'delivered', attempts = greatest(d.attempts, p_attempts), last_status_code = p_status_code,
             next_attempt_at = null
       where d.id = p_delivery_id and d.status = 'pending'
      returning d.endpoint_id
    ), healthy as (
      update public.webhook_endpoints e set consecutive_failures = 0, failing_since = null
       where e.id = (select x.endpoint_id from delivered x) and e.consecutive_failures > 0
    ), finished as (
      delete from public.jobs j where j.id = p_job_id and j.attempts = p_attempts
      returning 1
    )
    select (select 'delivered' from delivered), exists (select 1 from finished) into v_status, v_finished;
  else
    select d.endpoint_id into v_endpoint
      from public.webhook_deliveries d
     where d.id = p_delivery_id and d.status = 'pending';
    if found then
      -- The row lock taken here orders concurrent attempts of this endpoint: one of them disables it, once.
      update public.webhook_endpoints e
         set consecutive_failures = e.consecutive_failures + 1,
             failing_since = coalesce(e.failing_since, pg_catalog.now())
       where e.id = v_endpoint
      returning e.disabled_at is null and e.failing_since <= pg_catalog.now() - pg_catalog.make_interval(secs => p_disable_after_s)
        into v_expired;
      v_status := case when p_next_attempt_at is null or coalesce(v_expired, false) then 'failed' else 'pending' end;
      -- A retry's record commits without waiting for its WAL flush. Every failure of an endpoint updates that
      -- endpoint's row (its run of failures), so the failures of a down endpoint hold its row lock one after the
      -- other; a synchronous commit holds it through its own flush, one flush per failure, while deliveries, which
      -- share no row, are flushed in groups. A database crash may lose the newest of these records (the run's
      -- count, the delivery's attempts and next time): the worker's own record of the retry, and any later
      -- synchronous commit, make them durable, and a lost one is an attempt counted once less. Final outcomes
      -- (failed, disabled) wait for their flush as before.
      if v_status = 'pending' then
        perform pg_catalog.set_config('synchronous_commit', 'off', true);
      end if;

      update public.webhook_deliveries d
         set status = v_status,
             attempts = greatest(d.attempts, p_attempts),
             last_status_code = p_status_code,
             next_attempt_at = case when v_status = 'pending' then p_next_attempt_at end
       where d.id = p_delivery_id and d.status = 'pending';
    end if;
    if v_status is distinct from 'pending' then
      delete from public.jobs j where j.id = p_job_id and j.attempts = p_attempts;
      v_finished := found;
    end if;
  end if;

  if v_status is null then
    -- Final already: the attempt still happened (the deliveries list showed it while it ran).
    update public.webhook_deliveries d set attempts = p_attempts
     where d.id = p_delivery_id and d.attempts < p_attempts;
  end if;

  if coalesce(v_expired, false) then
    return query select v_status, public.disable_webhook_endpoint(v_endpoint), v_finished;
  else
    return query select v_status, false, v_finished;
  end if;
end
$$;

revoke all on function public.record_webhook_attempt from public;
grant execute on function public.record_webhook_attempt to ledger_api;
