-- The ledger's invariants, the one definition that `npm run reconcile`, the fault suite and the route tests run.
-- One row per invariant: its name, what was compared (counts and totals, for the operator), and up to p_sample
-- offending rows naming their ids (an empty array: it holds). STABLE, so every statement reads the caller's one
-- snapshot: a write landing meanwhile cannot make a correct ledger look broken. SECURITY INVOKER: the caller needs
-- SELECT on what it reads (the API role has it on balances, entries and transactions, which is all the whole-ledger
-- check reads; the per-user check also reads idempotency_keys, which only the owner may).
--
-- p_users null: the whole ledger, four invariants:
--   1 per currency, the sum of balances equals deposits minus withdrawals
--   2 every balance equals the sum of its entries (and no entries exist without a balance row)
--   3 every transaction's entries match it: a transfer's two entries are -amount and +amount on its two users, a
--     deposit's or withdrawal's single entry is +amount or -amount on its user. With 2, every balance is also the
--     sum of the transactions that touch it.
--   4 no client's settlement reference is held by two transactions
-- p_users a set of users who trade only among themselves (a test's users): 1 to 3 over their rows (3 over every
-- transaction that names them or holds an entry of theirs), 4 over their references, and three more that hold for
-- such a set's rows but not for every row of a live ledger:
--   5 transfers stay inside the set (1 counts only deposits and withdrawals)
--   6 every transaction has exactly one idempotency key, owned by whoever posted it (the client for deposits and
--     withdrawals, the sender for transfers): keys are purged after their window
--   7 every deposit and withdrawal names its client and reference: transactions_funding_by_client is NOT VALID, so
--     rows older than sql/006 may lack them
create or replace function ledger_invariants(p_users uuid[] default null, p_sample integer default 20)
returns table (invariant text, checked text, offending json)
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_all boolean := p_users is null;
  -- For a set of users, the ids of every transaction naming them or holding an entry of theirs, found once: only
  -- entries are indexed by user, so this is the one scan of transactions; every check below looks rows up by id.
  v_ids bigint[];
  -- The users those transactions name: entries are indexed by (user_id, transaction_id), so a transaction's entries
  -- are looked up among its own users' (an entry on a user outside them shows in that user's balance check).
  v_members uuid[];
begin
  if not v_all then
    select coalesce(array_agg(x.id), '{}') into v_ids from (
      select t.id from public.transactions t where t.from_user_id = any(p_users) or t.to_user_id = any(p_users)
      union
      select e.transaction_id from public.entries e where e.user_id = any(p_users)
    ) x;
    select array_agg(distinct u) into v_members from (
      select unnest(p_users) as u
      union all
      select unnest(array[t.from_user_id, t.to_user_id]) from public.transactions t where t.id = any(v_ids)
    ) m where u is not null;
  end if;

  return query
  with b as (
    select currency::text as currency, sum(balance) as balances
      from public.balances where v_all or user_id = any(p_users) group by 1
  ), t as (
    select currency::text as currency, sum(case kind when 'deposit' then amount when 'withdrawal' then -amount else 0 end) as net
      from public.transactions where v_all or (id = any(v_ids) and (to_user_id = any(p_users) or from_user_id = any(p_users))) group by 1
  ), totals as (
    select coalesce(b.currency, t.currency) as currency, coalesce(b.balances, 0)::text as balances, coalesce(t.net, 0)::text as net
      from b full join t on t.currency = b.currency
  )
  select 'balances per currency = deposits - withdrawals',
         coalesce(string_agg(format('%s %s = %s', x.currency, x.balances, x.net), ', ' order by x.currency), 'no money yet'),
         coalesce(json_agg(json_build_object('currency', x.currency, 'balances', x.balances, 'depositsMinusWithdrawals', x.net)
                    order by x.currency) filter (where x.balances <> x.net), '[]')
    from totals x;

  return query
  with sums as (
    select e.user_id, t.currency, sum(e.delta) as entries
      from public.entries e join public.transactions t on t.id = e.transaction_id
     where v_all or e.user_id = any(p_users)
     group by 1, 2
  ), pairs as (
    select coalesce(b.user_id, s.user_id) as user_id, coalesce(b.currency, s.currency)::text as currency, b.balance, s.entries
      from (select * from public.balances where v_all or user_id = any(p_users)) b
      full join sums s on s.user_id = b.user_id and s.currency = b.currency
  ), bad as (
    select * from pairs where coalesce(balance, 0) <> coalesce(entries, 0)
     order by user_id, currency limit p_sample
  )
  select 'every balance = sum of its entries',
         format('%s balances', (select count(*) from pairs where balance is not null)),
         coalesce((select json_agg(json_build_object('user_id', user_id, 'currency', currency, 'balance', balance::text,
                                                     'entries', entries::text)) from bad), '[]');

  return query
  with mine as (
    select * from public.transactions t
     where v_all or t.id = any(v_ids)
  ), bad as (
    select t.id::text as id, t.kind, t.amount::text as amount, count(e.user_id)::int as entries, coalesce(sum(e.delta), 0)::text as delta_sum
      from mine t left join public.entries e on e.transaction_id = t.id and (v_all or e.user_id = any(v_members))
     group by t.id, t.kind, t.amount, t.from_user_id, t.to_user_id
    having case t.kind
      when 'transfer' then count(e.user_id) <> 2 or coalesce(sum(e.delta), 0) <> 0
        or count(*) filter (where e.user_id = t.from_user_id and e.delta = -t.amount) <> 1
        or count(*) filter (where e.user_id = t.to_user_id and e.delta = t.amount) <> 1
      when 'deposit' then count(e.user_id) <> 1 or count(*) filter (where e.user_id = t.to_user_id and e.delta = t.amount) <> 1
      else count(e.user_id) <> 1 or count(*) filter (where e.user_id = t.from_user_id and e.delta = -t.amount) <> 1
    end
     order by t.id limit p_sample
  )
  select 'every transaction''s entries match it', format('%s transactions', (select count(*) from mine)),
         coalesce((select json_agg(json_build_object('id', id, 'kind', kind, 'amount', amount, 'entries', entries, 'delta_sum', delta_sum)) from bad), '[]');

  if v_all then
    return query
    with reused as (
      select client_id, reference, count(*)::int as transactions
        from public.transactions where reference is not null
       group by client_id, reference having count(*) > 1
       order by client_id, reference limit p_sample
    )
    select 'no reference used twice',
           format('%s references', (select count(*) from public.transactions where reference is not null)),
           coalesce((select json_agg(json_build_object('client_id', client_id, 'reference', reference, 'transactions', transactions)) from reused), '[]');
    return;
  end if;

  -- The set's references, each looked up by (client_id, reference): the unique index, not a scan of every reference.
  return query
  with refs as (
    select client_id, reference from public.transactions where id = any(v_ids) and reference is not null
  ), reused as (
    select r.client_id, r.reference, n.transactions
      from refs r cross join lateral (
        select count(*)::int as transactions from public.transactions t where t.client_id = r.client_id and t.reference = r.reference
      ) n
     where n.transactions > 1
     order by r.client_id, r.reference limit p_sample
  )
  select 'no reference used twice',
         format('%s references', (select count(*) from refs)),
         coalesce((select json_agg(json_build_object('client_id', client_id, 'reference', reference, 'transactions', transactions)) from reused), '[]');

  return query
  with across as (
    select t.id::text as id, t.currency::text as currency, t.amount::text as amount
      from public.transactions t
     where t.id = any(v_ids) and t.kind = 'transfer' and (t.from_user_id = any(p_users)) <> (t.to_user_id = any(p_users))
     order by t.id limit p_sample
  )
  select 'transfers stay between these users', format('%s users', cardinality(p_users)),
         coalesce((select json_agg(json_build_object('id', id, 'currency', currency, 'amount', amount)) from across), '[]');

  return query
  with mine as (
    select * from public.transactions where id = any(v_ids) and (from_user_id = any(p_users) or to_user_id = any(p_users))
  ), bad as (
    select t.id::text as id, t.kind, count(k.key)::int as keys,
           count(*) filter (where k.principal_id = coalesce(t.client_id, t.from_user_id))::int as keys_of_poster
      from mine t left join public.idempotency_keys k on k.transaction_id = t.id
     group by t.id, t.kind, t.client_id, t.from_user_id
    having count(k.key) <> 1 or count(*) filter (where k.principal_id = coalesce(t.client_id, t.from_user_id)) <> 1
     order by t.id limit p_sample
  )
  select 'every transaction has its own idempotency key, owned by whoever posted it',
         format('%s transactions, %s keys', (select count(*) from mine),
                (select count(*) from public.idempotency_keys k join mine t on t.id = k.transaction_id)),
         coalesce((select json_agg(json_build_object('id', id, 'kind', kind, 'keys', keys, 'keys_of_poster', keys_of_poster)) from bad), '[]');

  return query
  with bad as (
    select t.id::text as id, t.kind, t.client_id, t.reference
      from public.transactions t
     where t.kind <> 'transfer' and (t.client_id is null or t.reference is null)
       and t.id = any(v_ids) and (t.from_user_id = any(p_users) or t.to_user_id = any(p_users))
     order by t.id limit p_sample
  )
  select 'every deposit and withdrawal names its client and reference', 'deposits and withdrawals of these users',
         coalesce((select json_agg(json_build_object('id', id, 'kind', kind, 'client_id', client_id, 'reference', reference)) from bad), '[]');
end
$$;

revoke all on function ledger_invariants(uuid[], integer) from public;
grant execute on function ledger_invariants(uuid[], integer) to ledger_api;
