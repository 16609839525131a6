create table users (
  id uuid primary key default gen_random_uuid(),
  -- Stored lower-cased by the API; the check makes "unique" mean "unique case-insensitively" for every writer.
  email text not null unique check (email = lower(email) and length(email) between 3 and 254),
  name text not null check (length(name) between 1 and 100),
  avatar_url text check (length(avatar_url) <= 2048),
  password_hash text not null,
  tier text not null default 'standard' check (tier in ('standard', 'pro')),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
