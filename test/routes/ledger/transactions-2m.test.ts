// The ledger at scale: one user with 2,000,000 transactions. A page must cost the same as on a small account:
// one statement, an index range scan, and no memory that grows with the table.
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import t from 'tap'
import { buildTestApp, createUser, dbSpans, injectTraced, spanExporter, testSql } from '../../helper.ts'
import { seedClient, seedUserTransactions } from '../../../scripts/seed.ts'
import { transactionsPageQuery } from '../../../routes/ledger/repository.ts'

const ROWS = Number(process.env.LEDGER_TEST_BIG_ROWS ?? 2_000_000)

// A full collection before each reading, so the comparison is of live memory, not of garbage not yet collected.
setFlagsFromString('--expose-gc')
const gc = runInNewContext('gc') as () => void

t.test(`a page of a ${ROWS}-transaction account is one index range scan`, { timeout: 600_000 }, async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const whale = await createUser(app, { name: 'Whale' })
  const started = performance.now()
  await seedUserTransactions(sql, await seedClient(sql), whale.id, ROWS)
  t.comment(`seeded ${ROWS} transactions in ${((performance.now() - started) / 1000).toFixed(1)} s`)

  const first = await injectTraced(app, { method: 'GET', url: '/transactions?limit=100', headers: { authorization: whale.authorization } })
  t.equal(first.response.statusCode, 200)
  t.equal(first.response.json().data.length, 100)
  t.equal(dbSpans(first.spans).length, 1, 'one statement per page')

  const [middle] = await sql`select transaction_id::text as id from entries where user_id = ${whale.id} order by transaction_id offset ${Math.floor(ROWS / 2)} limit 1`
  for (const [name, before] of [['first page', undefined], ['deep page', middle?.id as string]] as const) {
    const plan = (await sql`explain (analyze, costs off) ${transactionsPageQuery(sql, whale.id, 50, before)}`)
      .map((row) => String(row['QUERY PLAN'])).join('\n')
    t.match(plan, /Index (Only )?Scan Backward using entries_pkey on entries/, `${name}: backward range scan of entries`)
    t.match(plan, /Nested Loop[\s\S]*Index Scan using transactions_pkey on transactions t[\s\S]*loops=51/, `${name}: one primary-key lookup per row`)
    t.notMatch(plan, /Seq Scan|Sort|Merge Join|Hash Join/, `${name}: no sequential scan, sort or table-wide join`)
  }

  // Walk deep into the table: after a warm-up, memory must stay flat however many pages are read.
  let cursor = first.response.json().nextCursor as string
  let failures = 0
  const walk = async (pages: number) => {
    for (let page = 0; page < pages; page++) {
      const response = await app.inject({ method: 'GET', url: `/transactions?limit=100&cursor=${cursor}`, headers: { authorization: whale.authorization } })
      if (response.statusCode !== 200) failures++
      cursor = response.json().nextCursor
    }
    spanExporter.reset()
    gc()
    return process.memoryUsage()
  }
  // RSS settles only after the allocator has grown its arenas (and postgres.js its off-heap read buffers), which
  // takes longer on a loaded machine: two warm-up windows, then compare two equal windows after that.
  await walk(100)
  await walk(300)
  const warm = await walk(300)
  const after = await walk(300)
  t.equal(failures, 0, 'every page answered 200')
  const heapGrownMb = (after.heapUsed - warm.heapUsed) / 1024 / 1024
  const rssGrownMb = (after.rss - warm.rss) / 1024 / 1024
  t.ok(heapGrownMb < 8, `heap grew ${heapGrownMb.toFixed(1)} MiB over 300 more pages`)
  t.ok(rssGrownMb < 64, `RSS grew ${rssGrownMb.toFixed(1)} MiB over 300 more pages`)
})
