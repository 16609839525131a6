-- authenticate_client(): the token endpoint's client check, inside the database, so the API role never reads a
-- secret hash (sql/013 revokes its SELECT on service_clients). Returns the client's id and scopes when the client
-- exists, is not revoked and p_secret_hash is the SHA-256 of its secret; no row otherwise. Unknown, revoked and
-- wrong secret are one answer. The comparison is of SHA-256 digests of 256-bit random secrets: how long it takes
-- can at most tell a caller a prefix of a digest, which gives nothing towards a secret.
-- SECURITY DEFINER, search_path pinned with pg_temp last and every relation named with its schema (scripts/migrate.ts
-- enforces both).
drop function if exists public.authenticate_client;

create function public.authenticate_client(p_client_id uuid, p_secret_hash bytea)
returns table (id uuid, scopes text)
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
  select c.id, c.scopes::text
    from public.service_clients c
   where c.id = p_client_id and c.revoked_at is null and c.secret_hash = p_secret_hash
$$;

revoke all on function public.authenticate_client from public;
grant execute on function public.authenticate_client to ledger_api;
