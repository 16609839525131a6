-- The database boundary, assuming whoever holds ledger_api's credentials is hostile (an SQL injection, a leaked
-- DATABASE_URL, a compromised pod or dependency): the role may do exactly what the API and its workers do, and
-- nothing it does can make a SECURITY DEFINER function act on anything but the real tables.

-- No temporary tables (they would be searched before the schema in any function that does not pin pg_temp last,
-- and they live on in PgBouncer's pooled server connections for the next client) and no schemas of anyone's own.
do $$
begin
  execute format('revoke temporary, create on database %I from public', current_database());
end
$$;
revoke create on schema public from public;

-- Nothing is readable just because it exists: each migration grants what the API uses on the tables it makes.
alter default privileges in schema public revoke select on tables from ledger_api;
-- Nor callable: a function is executable by the roles its file grants it to.
alter default privileges revoke execute on functions from public;

-- Service clients: the API authenticates them through authenticate_client() (sql/functions/), so no plain
-- SELECT ever returns a secret hash. Creating and revoking clients is the operator's (npm run clients).
revoke all on service_clients from ledger_api;

-- Jobs: the API queues feed work; only post_transaction() (as the owner) queues webhook deliveries, so the role
-- cannot send a forged delivery, nor queue a kind no handler expects. Workers (the same role) claim, reschedule
-- and finish any job, but never change what a job is or when it was made.
revoke all on jobs from ledger_api;
grant select, delete on jobs to ledger_api;
grant insert (kind, payload, run_at) on jobs to ledger_api;
grant update (payload, run_at, attempts, failed_at, last_error) on jobs to ledger_api;
alter table jobs enable row level security;
create policy jobs_queued_by_the_api on jobs for insert to ledger_api
  with check (kind in ('feed.fan_out', 'feed.remove_post', 'feed.backfill', 'feed.remove_followee'));
create policy jobs_claimed_by_workers on jobs for select to ledger_api using (true);
create policy jobs_rescheduled_by_workers on jobs for update to ledger_api using (true) with check (true);
create policy jobs_finished_by_workers on jobs for delete to ledger_api using (true);
