-- Lanes, fairness and endpoint health for the job queue (plugins/worker.ts, routes/webhook-endpoints/jobs.ts).
--
-- Feed jobs and webhook deliveries are claimed by lanes of their own, each with its own concurrency: the feed lane
-- takes its kinds in run_at order (jobs_due_idx, now led by kind so that it never walks past due webhook rows); the
-- webhook lane claims through claim_webhook_jobs() (sql/functions), round-robin across endpoints, first attempts
-- ahead of retries, and never more attempts in flight per endpoint than the limit, counted here, across every
-- worker process, from the job rows themselves.

-- endpoint_id: the webhook endpoint a delivery job is for (null for every other kind); the webhook lane groups and
-- limits by it. No foreign key: post_transaction() writes these rows on the money path, and a job whose endpoint is
-- gone is claimed and finished like any other (its delivery went with the endpoint).
-- claimed_at: when the attempt in flight was claimed, null when none is. An attempt is in flight while its lease
-- (run_at, set to the lease's end at the claim) has not run out, so a worker that died frees its slot by itself.
-- started_at: when the first attempt started (the first-attempt lag metric counts from created_at to it).
alter table jobs
  add column endpoint_id uuid,
  add column claimed_at timestamptz,
  add column started_at timestamptz;

-- Deliveries queued before this migration learn their endpoint (compared as text: a payload is never cast).
update jobs j
   set endpoint_id = d.endpoint_id
  from webhook_deliveries d
 where j.kind = 'webhook.deliver' and j.payload->>'deliveryId' = d.id::text;

drop index jobs_due_idx;
-- The feed lane's claim (kind in its kinds, oldest due first) and the queue gauges per kind.
create index jobs_due_idx on jobs (kind, run_at, id) where failed_at is null;
-- The webhook lane: which endpoints have pending work (a skip scan over the leading column), and each endpoint's due
-- jobs, first attempts ahead of retries, oldest first.
create index jobs_endpoint_idx on jobs (endpoint_id, (attempts > 0), run_at, id) where failed_at is null and endpoint_id is not null;
-- Attempts in flight per endpoint (a handful of rows at any time).
create index jobs_in_flight_idx on jobs (endpoint_id) where claimed_at is not null;

-- Endpoint health, shown in the endpoint list: failed attempts in a row, since when (null after a success), and
-- when the endpoint was disabled (after WEBHOOK_DISABLE_AFTER_H of failures only, or by its owner). last_claimed_at
-- is the webhook lane's round-robin position: the endpoint served longest ago goes first.
alter table webhook_endpoints
  add column consecutive_failures integer not null default 0 check (consecutive_failures >= 0),
  add column failing_since timestamptz,
  add column disabled_at timestamptz,
  add column last_claimed_at timestamptz;

-- The API role (which the worker uses), explicitly: on jobs it marks the attempt in flight and the first start
-- (claims, results); endpoint_id is written only by post_transaction(), never by the API. On endpoints it may
-- change the health and scheduling columns (the worker records attempts, the owner re-enables), never the URL, the
-- secret or the owner.
grant update (claimed_at, started_at) on jobs to ledger_api;
grant update (consecutive_failures, failing_since, disabled_at, last_claimed_at) on webhook_endpoints to ledger_api;
