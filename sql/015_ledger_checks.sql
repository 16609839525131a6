-- The ledger check (plugins/ledger-check.ts): every API process may try; one run per interval slot among all of
-- them. A slot is the interval the check's start falls in by the database's clock (RECONCILE_INTERVAL_S long,
-- counted from the Unix epoch), so the primary key is what makes "one per interval" hold, and the advisory lock
-- taken by claim_ledger_check() and by the check's own transaction keeps two checks from running at once. The
-- rows are the checks' history: who ran each, what it found (the offending rows' ids), how long it took.
create table ledger_check_runs (
  slot_start timestamptz primary key,
  interval_s integer not null check (interval_s between 1 and 86400),
  runner text not null check (length(runner) between 1 and 200),
  started_at timestamptz not null default now(),
  finished_at timestamptz,
  -- held: every invariant held; failed: at least one broke (failures names them and their rows); error: the check
  -- could not finish (failures holds the error message).
  outcome text check (outcome in ('held', 'failed', 'error')),
  duration_s double precision check (duration_s >= 0),
  failures jsonb,
  check ((finished_at is null) = (outcome is null))
);

-- The latest finished run, which every process reads to export it.
create index ledger_check_runs_finished_idx on ledger_check_runs (finished_at desc) where finished_at is not null;

-- The API role reads the history; it writes only through claim_ledger_check() and finish_ledger_check()
-- (sql/functions/ledger_checks.sql), which compute the slot from the database's clock and finish a run once, so
-- a statement run as the API role can neither claim a future slot nor rewrite a past result.
grant select on ledger_check_runs to ledger_api;
