-- Follows and a fan-out-on-write feed.
--
-- Until now `posts` held one row per feed entry (user_id = whose feed, author_id = who wrote it), so any user could
-- write on any feed. A post is now written once (posts: author, body) and placed on feeds by reference
-- (feed_items: whose feed, which post). Why this shape rather than a copy of the post per feed: a body of up to
-- 5,000 characters is stored once instead of once per follower (10,000 followers = 10,000 copies), deleting a post
-- is one row to mark however many feeds it is on, and a feed page is still one index range scan (feed_items carries
-- the post's created_at, so the keyset order lives in one index) joined to posts and users by primary key.

create table follows (
  follower_id uuid not null references users (id),
  followee_id uuid not null references users (id),
  created_at timestamptz not null default now(),
  primary key (follower_id, followee_id),
  check (follower_id <> followee_id)
);

-- GET /users/me/following and /users/me/followers: newest follow first, keyset pages.
create index follows_following_idx on follows (follower_id, created_at desc, followee_id desc);
create index follows_followers_idx on follows (followee_id, created_at desc, follower_id desc);
-- The fan-out walks one author's followers in follower-id order (its resumable cursor).
create index follows_fan_out_idx on follows (followee_id, follower_id);

-- Soft delete: DELETE /posts/:id marks the post (gone from every feed page at once: the page query skips marked
-- posts) and a job removes its feed rows in batches, then the row itself.
alter table posts add column deleted_at timestamptz;

create table feed_items (
  feed_user_id uuid not null references users (id),
  post_id bigint not null references posts (id) on delete cascade,
  -- The post's created_at, copied: the page's keyset (created_at, post_id) must live in one index.
  created_at timestamptz not null,
  -- A post is on a feed at most once, whatever retries, backfills and fan-outs overlap (ON CONFLICT DO NOTHING).
  primary key (feed_user_id, post_id)
);

-- Today's posts stay on the feeds they are on (a post on someone else's feed, written before this release,
-- stays there and only there).
insert into feed_items (feed_user_id, post_id, created_at)
select user_id, id, created_at from posts;

-- The feed page: WHERE feed_user_id = $1 AND (created_at, post_id) < cursor, one backward range scan.
create index feed_items_page_idx on feed_items (feed_user_id, created_at desc, post_id desc);
-- Removing one post from every feed it is on, in batches.
create index feed_items_post_idx on feed_items (post_id);

-- The feed owner is feed_items' business now (dropping the column drops posts_feed_idx with it).
alter table posts drop column user_id;

-- Backfill (an author's 20 most recent posts) and unfollow (all of an author's posts on one feed).
create index posts_author_idx on posts (author_id, created_at desc, id desc);

-- The API writes follows and feed rows; it marks posts deleted (that one column) and removes them once off every feed.
grant select, insert, delete on follows to ledger_api;
-- Feed jobs lock the follows rows they deliver through (FOR KEY SHARE, see routes/feed/jobs.ts), and PostgreSQL asks
-- UPDATE on some column of a table for any row lock: one column, which nothing in the API updates.
grant update (created_at) on follows to ledger_api;
grant select, insert, delete on feed_items to ledger_api;
grant update (deleted_at), delete on posts to ledger_api;
