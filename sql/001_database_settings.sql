-- Through PgBouncer in transaction mode no session SET survives, so the guard rails are set on the
-- database itself; every new server connection picks them up. A runaway query is cancelled instead of
-- holding one of the pool's few server connections. Scripts that legitimately run longer (seed) use SET LOCAL.
do $$
begin
  execute format('alter database %I set statement_timeout = %L', current_database(), '5s');
  execute format('alter database %I set idle_in_transaction_session_timeout = %L', current_database(), '10s');
  execute format('alter database %I set lock_timeout = %L', current_database(), '3s');
end
$$;
