// A Prometheus histogram's increase between two scrapes, summed over its labels, as what a report shows: how many
// observations, their mean, and the bucket each percentile falls in (a histogram knows no finer).

export interface Series { labels: Record<string, string>, value: number }

export interface HistogramSummary {
  count: number
  mean: number
  /** Upper bound of the bucket that holds the percentile; Infinity when it is the +Inf bucket. */
  p50: number
  p99: number
  /** The largest finite bucket bound, for "above it" when a percentile is in +Inf. */
  topBound: number
}

/**
 * From the `_bucket` (cumulative, by `le`), `_sum` and `_count` increases; undefined when the histogram is not
 * exported at all (no bucket series), so a report can tell "absent" from "no observations".
 */
export function summarizeHistogram (buckets: Series[], sums: Series[], counts: Series[]): HistogramSummary | undefined {
  if (buckets.length === 0) return undefined
  const byBound = new Map<number, number>()
  for (const { labels, value } of buckets) {
    const bound = labels.le === '+Inf' ? Infinity : Number(labels.le)
    if (Number.isNaN(bound)) continue
    byBound.set(bound, (byBound.get(bound) ?? 0) + value)
  }
  const cumulative = [...byBound].sort(([a], [b]) => a - b)
  const count = counts.reduce((s, c) => s + c.value, 0) || (cumulative.at(-1)?.[1] ?? 0)
  const sum = sums.reduce((s, c) => s + c.value, 0)
  const finite = cumulative.filter(([bound]) => Number.isFinite(bound))
  const at = (q: number) => {
    if (count <= 0) return Number.NaN
    const rank = q * count
    return cumulative.find(([, seen]) => seen >= rank)?.[0] ?? Infinity
  }
  return { count, mean: count > 0 ? sum / count : Number.NaN, p50: at(0.5), p99: at(0.99), topBound: finite.at(-1)?.[0] ?? Number.NaN }
}

/** "mean 3.1, p50 <= 4, p99 <= 16 (1,234)", or '-' when the histogram is absent or saw nothing. */
export function formatHistogram (h: HistogramSummary | undefined | null): { count: string, mean: string, p50: string, p99: string } {
  if (h === undefined || h === null || !(h.count > 0)) return { count: h === undefined || h === null ? '-' : '0', mean: '-', p50: '-', p99: '-' }
  // Saved JSON turns Infinity into null.
  const bound = (v: number | null) => v === null || !Number.isFinite(v) ? `> ${h.topBound}` : `<= ${v}`
  return { count: Math.round(h.count).toLocaleString('en-US'), mean: h.mean.toFixed(2), p50: bound(h.p50), p99: bound(h.p99) }
}
