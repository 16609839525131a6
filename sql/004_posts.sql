create table posts (
  id bigint generated always as identity primary key,
  -- Whose feed the post is on; the author is whoever wrote it (often the same user).
  user_id uuid not null references users (id),
  author_id uuid not null references users (id),
  body text not null check (length(body) between 1 and 5000),
  created_at timestamptz not null default now()
);

-- The feed page query is a backward range scan of this index: WHERE user_id = $1 AND (created_at, id) < cursor.
create index posts_feed_idx on posts (user_id, created_at desc, id desc);
