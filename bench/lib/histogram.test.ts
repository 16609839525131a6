// `node --test bench/lib/histogram.test.ts`: the batch-size histogram read from two /metrics scrapes, as the
// post-transactions scenario reads it (test/ may not import bench/, so this test lives here).
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { formatHistogram, summarizeHistogram } from './histogram.ts'
import { deltasOf, parseMetrics, WRITE_BATCH_SIZE } from './samplers.ts'

const scrape = (buckets: number[], sum: number, labels = '') => [
  `# HELP ${WRITE_BATCH_SIZE} Money writes per batch`,
  `# TYPE ${WRITE_BATCH_SIZE} histogram`,
  ...['1', '2', '4', '8', '16', '32', '+Inf'].map((le, i) => `${WRITE_BATCH_SIZE}_bucket{${labels}le="${le}"} ${buckets[i]}`),
  `${WRITE_BATCH_SIZE}_sum${labels === '' ? '' : `{${labels.slice(0, -1)}}`} ${sum}`,
  `${WRITE_BATCH_SIZE}_count${labels === '' ? '' : `{${labels.slice(0, -1)}}`} ${buckets[6]}`,
  'ledger_http_requests_in_flight 1'
].join('\n')

const summaryOf = (before: string, after: string) => {
  const first = parseMetrics(before)
  const last = parseMetrics(after)
  const deltas = (name: string) => deltasOf(first, last, name)
  return summarizeHistogram(deltas(`${WRITE_BATCH_SIZE}_bucket`), deltas(`${WRITE_BATCH_SIZE}_sum`), deltas(`${WRITE_BATCH_SIZE}_count`))
}

test('the increase between two scrapes: count, mean and the buckets of p50 and p99', () => {
  // Before: 10 batches of 1. During the run: 100 batches: 40 of 1-2, 50 of 3-4, 9 of 5-8, 1 of 20; 330 writes.
  const before = scrape([10, 10, 10, 10, 10, 10, 10], 10)
  const after = scrape([10, 50, 100, 109, 109, 110, 110], 340)
  const h = summaryOf(before, after)
  assert.deepEqual(h, { count: 100, mean: 3.3, p50: 4, p99: 8, topBound: 32 })
  assert.deepEqual(formatHistogram(h), { count: '100', mean: '3.30', p50: '<= 4', p99: '<= 8' })
})

test('series with labels are summed by bucket', () => {
  const before = [scrape([0, 0, 0, 0, 0, 0, 0], 0, 'pool="a",'), scrape([0, 0, 0, 0, 0, 0, 0], 0, 'pool="b",')].join('\n')
  const after = [scrape([1, 1, 1, 1, 1, 1, 1], 1, 'pool="a",'), scrape([0, 0, 0, 0, 0, 0, 1], 40, 'pool="b",')].join('\n')
  const h = summaryOf(before, after)
  assert.equal(h?.count, 2)
  assert.equal(h?.mean, 20.5)
  assert.equal(h?.p50, 1)
  assert.equal(h?.p99, Infinity, 'the 40-write batch is above the last bound')
  assert.equal(formatHistogram(h).p99, '> 32')
})

test('absent: no bucket series at all gives undefined and "-"; present but idle gives 0 batches', () => {
  const without = 'ledger_http_requests_in_flight 1\nledger_db_pool_max 10'
  assert.equal(summaryOf(without, without), undefined)
  assert.deepEqual(formatHistogram(undefined), { count: '-', mean: '-', p50: '-', p99: '-' })
  const idle = scrape([5, 5, 5, 5, 5, 5, 5], 5)
  assert.deepEqual(formatHistogram(summaryOf(idle, idle)), { count: '0', mean: '-', p50: '-', p99: '-' })
})
