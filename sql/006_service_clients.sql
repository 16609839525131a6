-- Money enters and leaves the ledger only through service clients (OAuth 2.0 client credentials): back-office
-- systems that settle real money. Users only transfer between themselves.
create table service_clients (
  id uuid primary key default gen_random_uuid(),
  name text not null check (length(name) between 1 and 100),
  -- SHA-256 of a 256-bit random secret (scripts/ops/clients.ts says why no KDF).
  secret_hash bytea not null check (length(secret_hash) = 32),
  scopes text[] not null check (scopes <@ array['funds:write', 'events:read']::text[] and cardinality(scopes) > 0),
  created_at timestamptz not null default now(),
  revoked_at timestamptz
);

-- Ends tokens before they expire: a revoked client (`client:<id>`), later a session or all of a user's sessions.
-- Every API process polls the recent rows (plugins/revocations.ts), so a check costs no round trip per request.
create table revocations (
  subject text primary key check (length(subject) between 1 and 100),
  revoked_at timestamptz not null default now()
);
create index revocations_revoked_at_idx on revocations (revoked_at);

-- A deposit or withdrawal names the client that posted it and that client's settlement reference; the pair is
-- unique, so a reference is used once however many requests race for it. Rows written before this migration
-- (deposits users could post themselves) keep their shape: the rule holds for every new row (NOT VALID skips
-- the check of old rows only).
alter table transactions
  add column client_id uuid references service_clients (id),
  add column reference text check (length(reference) between 1 and 255 and reference ~ '^[\x21-\x7e]+$');
alter table transactions add constraint transactions_funding_by_client check (
  (kind = 'transfer' and client_id is null and reference is null) or
  (kind <> 'transfer' and client_id is not null and reference is not null)
) not valid;
alter table transactions add constraint transactions_client_reference_key unique (client_id, reference);
-- A client's own list: newest first by id, one range scan.
create index transactions_client_idx on transactions (client_id, id desc) where client_id is not null;

-- Idempotency keys belong to whoever posted: a user (transfers) or a client (deposits and withdrawals).
alter table idempotency_keys drop constraint idempotency_keys_user_id_fkey;
alter table idempotency_keys rename column user_id to principal_id;
