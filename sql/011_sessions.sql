-- Sessions: a login opens one; refresh tokens rotate within it; logout, a password change or a replayed refresh
-- token ends it. Access tokens carry the session id (`sid`), and ending a session writes `session:<id>` to the
-- revocations table (006), which every API process polls, so its access tokens stop within a poll too.
create table sessions (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null references users (id) on delete cascade,
  created_at timestamptz not null default now(),
  -- When the current refresh token expires (REFRESH_TOKEN_TTL_S after it was issued): each rotation moves it on.
  expires_at timestamptz not null,
  ended_at timestamptz,
  -- Why it ended: logout, password change, a refresh token presented twice.
  end_reason text check (end_reason in ('logout', 'password_changed', 'refresh_token_reused')),
  check ((ended_at is null) = (end_reason is null))
);
create index sessions_user_idx on sessions (user_id) where ended_at is null;
-- The purge finds what is over without scanning live sessions.
create index sessions_expires_at_idx on sessions (expires_at);
create index sessions_ended_at_idx on sessions (ended_at) where ended_at is not null;

-- Every refresh token a session was given, stored only as SHA-256 of its 256 random bits (as client secrets are).
-- Used ones stay while their session lives: presenting one again is how a stolen token is recognised.
create table refresh_tokens (
  token_hash bytea primary key check (length(token_hash) = 32),
  session_id uuid not null references sessions (id) on delete cascade,
  created_at timestamptz not null default now(),
  used_at timestamptz
);
create index refresh_tokens_session_idx on refresh_tokens (session_id);
create index refresh_tokens_used_at_idx on refresh_tokens (used_at) where used_at is not null;

-- A password change bumps this; a login opens its session only if the version it verified is still current, so a
-- login racing a password change cannot leave a session with the old password behind.
alter table users add column password_version integer not null default 0;

-- A user row removed (there is no delete route; the owner may remove a user without money or posts) takes its
-- sessions with it (cascade) and revokes its live access tokens everywhere within a poll, in the same transaction.
create function users_revoke_deleted() returns trigger
language plpgsql
as $$
begin
  insert into revocations (subject) values ('user:' || old.id)
  on conflict (subject) do update set revoked_at = now();
  return old;
end
$$;
create trigger users_revoke_deleted after delete on users
  for each row execute function users_revoke_deleted();

grant select, insert, update, delete on sessions, refresh_tokens to ledger_api;
-- Revocations older than the longest access token lifetime concern only expired tokens: the housekeeping purges them.
grant delete on revocations to ledger_api;
