-- Webhooks: endpoints a principal registers, and one delivery row per (event, endpoint) that post_transaction()
-- writes in the money movement's own transaction, with a `jobs` row ('webhook.deliver') per delivery. The job
-- row is the queue (claimed, retried, deleted when done); the delivery row is the history the API lists.

-- Jobs the worker gave up on stay, marked, for an operator to read (never claimed again); the claim index skips them.
alter table jobs
  add column failed_at timestamptz,
  add column last_error text check (length(last_error) <= 500);
drop index jobs_due_idx;
create index jobs_due_idx on jobs (run_at, id) where failed_at is null;

create table webhook_endpoints (
  id uuid primary key default gen_random_uuid(),
  -- A user id or a service client id (both uuids, never equal in practice); the kind says which table it names.
  principal_kind text not null check (principal_kind in ('user', 'client')),
  principal_id uuid not null,
  url text not null check (length(url) between 1 and 2048),
  events text[] not null check (cardinality(events) between 1 and 10 and events <@ array['transaction.created']::text[]),
  -- Needed in clear to sign (HMAC): shown once at creation, never listed.
  secret text not null check (secret ~ '^whsec_[A-Za-z0-9+/]{32,}={0,2}$'),
  created_at timestamptz not null default now()
);
-- Both the caller's list and post_transaction's lookup of the endpoints of the users a transaction touches.
create index webhook_endpoints_principal_idx on webhook_endpoints (principal_id, created_at, id);

create table webhook_deliveries (
  id bigint generated always as identity primary key,
  -- The webhook-id: one per event (a transaction seen by one principal), shared by that principal's endpoints.
  event_id uuid not null,
  endpoint_id uuid not null references webhook_endpoints (id) on delete cascade,
  type text not null,
  -- The payload is the transaction itself, read at delivery time: history is append-only, so it never changes.
  transaction_id bigint not null references transactions (id),
  status text not null default 'pending' check (status in ('pending', 'delivered', 'failed')),
  attempts integer not null default 0,
  last_status_code integer,
  next_attempt_at timestamptz default now(),
  created_at timestamptz not null default now(),
  unique (endpoint_id, event_id)
);
-- The endpoint's history, newest first (the deliveries list: keyset on id).
create index webhook_deliveries_endpoint_idx on webhook_deliveries (endpoint_id, id desc);
-- Retention: finished deliveries older than the window are purged in batches, oldest first (plugins/housekeeping.ts).
create index webhook_deliveries_finished_idx on webhook_deliveries (created_at) where status <> 'pending';

-- Endpoints: the API registers, lists and deletes them (never edits: a new URL is a new endpoint and secret).
grant select, insert, delete on webhook_endpoints to ledger_api;
-- Deliveries are written only by post_transaction(); the worker records attempts and housekeeping purges.
grant select, delete on webhook_deliveries to ledger_api;
grant update (status, attempts, last_status_code, next_attempt_at) on webhook_deliveries to ledger_api;
