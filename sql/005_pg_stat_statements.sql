-- Diagnostics read pg_stat_statements. Creating the extension needs privileges a managed database may not
-- grant, and the library must be preloaded to be useful, so this is best effort and never fails the migration.
do $$
begin
  create extension if not exists pg_stat_statements;
exception when others then
  raise notice 'pg_stat_statements not available: %', sqlerrm;
end
$$;
