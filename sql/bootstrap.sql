-- The one part of the schema that needs a superuser, run once per database as one (the local stack and the test
-- runner do it when they create a database; compose from its init script; a managed database from the platform's
-- admin account) before `npm run migrate`. Safe to run again. Everything else, the migrations included, runs as
-- the `ledger` login, which may act as `ledger_owner` and is no superuser.
--
--   ledger_owner  NOLOGIN. Owns the database, every table and every function. Not a superuser, cannot create roles
--                 or databases, no BYPASSRLS: a SECURITY DEFINER function runs with exactly this.
--   ledger        LOGIN (DATABASE_DIRECT_URL). The migrator and operator tools; a member of ledger_owner (and of
--                 pg_read_all_stats, to see every session's activity).
--   ledger_api    LOGIN (DATABASE_URL, through PgBouncer). The API and the workers: only the grants the
--                 migrations give it, no temporary tables, no CREATE anywhere.
-- Passwords are the platform's to set (ALTER ROLE ... PASSWORD); this file never holds one.
set client_min_messages = warning;

do $bootstrap$
declare
  v_role text;
begin
  if not exists (select 1 from pg_catalog.pg_roles where rolname = 'ledger_owner') then
    create role ledger_owner nologin;
  end if;
  if not exists (select 1 from pg_catalog.pg_roles where rolname = 'ledger') then
    create role ledger login;
  end if;
  if not exists (select 1 from pg_catalog.pg_roles where rolname = 'ledger_api') then
    create role ledger_api login;
  end if;
  if (select rolname from pg_catalog.pg_roles where oid = 10) in ('ledger', 'ledger_owner', 'ledger_api') then
    -- The cluster's bootstrap superuser owns the system catalogs and cannot hand them over.
    raise exception 'this cluster was initialised with % as its bootstrap superuser; create it anew with another (initdb -U postgres)',
      (select rolname from pg_catalog.pg_roles where oid = 10);
  end if;
  foreach v_role in array array['ledger_owner', 'ledger', 'ledger_api'] loop
    execute format('alter role %I nosuperuser nocreatedb nocreaterole nobypassrls noreplication', v_role);
  end loop;
  alter role ledger_owner nologin;
  alter role ledger login;
  alter role ledger_api login;
  grant ledger_owner to ledger;
  -- The operator's tools (npm run diagnose, the tests' lock-wait probes) read every session's activity and
  -- statement statistics, which PostgreSQL otherwise shows only to superusers and the session's own role.
  grant pg_read_all_stats to ledger;

  -- A database whose objects the migrator created before this role split: its objects go to the owner role.
  reassign owned by ledger to ledger_owner;
  execute format('alter database %I owner to ledger_owner', current_database());
  execute format('grant connect on database %I to ledger, ledger_api', current_database());
  -- Default privileges the migrator's login gave before the split (sql/013 clears the owner's own).
  alter default privileges for role ledger in schema public revoke all on tables from ledger_api;
end
$bootstrap$;

-- public belongs to the database owner (as on PostgreSQL 15 and later); the migrations take the rest from there
-- (sql/013: no temporary tables, no CREATE for anyone else).
alter schema public owner to ledger_owner;

-- Diagnostics read pg_stat_statements, an extension only a superuser may create (best effort: the library must
-- also be preloaded).
do $extensions$
begin
  create extension if not exists pg_stat_statements;
exception when others then
  raise notice 'pg_stat_statements not available: %', sqlerrm;
end
$extensions$;
