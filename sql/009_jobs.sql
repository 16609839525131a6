-- Work that must happen after a commit and off the request path (webhook deliveries, feed fan-out). A job is written
-- in the same transaction as the data it is about, so a commit always carries its follow-up work and a rollback none.
-- Workers claim due rows with FOR UPDATE SKIP LOCKED (which works through PgBouncer's transaction pooling) and delete
-- them when done: the table is a queue that stays near empty while consumers keep up, not a history.
create table jobs (
  id bigint generated always as identity primary key,
  -- Which handler runs it ('webhook.deliver', 'feed.fan_out', ...); the payload is that handler's to define.
  kind text not null check (kind ~ '^[a-z][a-z0-9_.]{0,63}$'),
  payload jsonb not null,
  run_at timestamptz not null default now(),
  attempts integer not null default 0,
  created_at timestamptz not null default now()
);

-- The claim query: the oldest due jobs first.
create index jobs_due_idx on jobs (run_at, id);

-- The API process enqueues; workers (the API role too, inside `npm start` or as `npm run worker`) claim and finish.
grant select, insert, update, delete on jobs to ledger_api;
