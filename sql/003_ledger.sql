-- Money is integer minor units. The upper bound keeps every amount and balance exactly representable as a
-- JSON number (2^53 - 1), so no layer ever rounds.
create domain money_minor as bigint check (value >= 0 and value <= 9007199254740991);

create table transactions (
  id bigint generated always as identity primary key,
  kind text not null check (kind in ('deposit', 'withdrawal', 'transfer')),
  amount money_minor not null check (amount > 0),
  currency char(3) not null check (currency ~ '^[A-Z]{3}$'),
  from_user_id uuid references users (id),
  to_user_id uuid references users (id),
  description text check (length(description) <= 500),
  created_at timestamptz not null default now(),
  -- Which side a kind touches is a rule of the ledger, not only of the API.
  check (
    (kind = 'deposit' and from_user_id is null and to_user_id is not null) or
    (kind = 'withdrawal' and from_user_id is not null and to_user_id is null) or
    (kind = 'transfer' and from_user_id is not null and to_user_id is not null and from_user_id <> to_user_id)
  )
);

-- One row per user a transaction touches, keyed so that "newest transactions of user U" is one backward range
-- scan of this primary key, whatever the table size.
create table entries (
  user_id uuid not null references users (id),
  transaction_id bigint not null references transactions (id),
  delta bigint not null check (delta <> 0),
  primary key (user_id, transaction_id)
);

create table balances (
  user_id uuid not null references users (id),
  currency char(3) not null check (currency ~ '^[A-Z]{3}$'),
  balance money_minor not null default 0,
  primary key (user_id, currency)
);

create table idempotency_keys (
  user_id uuid not null references users (id),
  key text not null check (length(key) between 1 and 255),
  fingerprint text not null,
  transaction_id bigint not null references transactions (id) deferrable initially deferred,
  created_at timestamptz not null default now(),
  primary key (user_id, key)
);

-- post_transaction(), the only writer of these tables, lives in sql/functions/post_transaction.sql.
