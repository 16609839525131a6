// Writes a run's results next to each other: <stamp>.json (all numbers), <stamp>.md (the tables) and <stamp>.svg
// (the chart). bench/render.ts calls it again on a saved JSON to redraw the tables and chart.
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { renderChart, type LatencyBar, type ThroughputPair } from './chart.ts'
import { markdown, type Report } from './report.ts'

export interface ChartInputs {
  pairs: ThroughputPair[]
  latencies: LatencyBar[]
}

/** The chart's data: what the run stored, or (older files) derived from the throughput comparisons. */
export function chartInputs (report: Report & { chart?: ChartInputs }): ChartInputs {
  if (report.chart !== undefined) return report.chart
  const pairs = report.comparisons
    .filter((c) => c.unit === 'ratio' && c.reference !== '' && !c.id.endsWith('-cpu') && c.id !== 'abuse-others-p99')
    .map((c) => ({
      check: c.label,
      measuredName: c.measured,
      measured: c.measuredValue,
      referenceName: c.reference,
      reference: c.referenceValue,
      target: c.target?.op === '>=' ? c.target.value : undefined
    }))
  const latencies: LatencyBar[] = [
    ...report.runs.map((r) => ({ name: r.label, kind: 'scenario' as const, p50: r.load.latency.p50, p99: r.load.latency.p99 })),
    ...report.baselines.filter((b) => b.latency !== undefined && Number.isFinite(b.latency.p99) && b.latency.p99 !== null)
      .map((b) => ({ name: b.label, kind: 'baseline' as const, p50: b.latency!.p50, p99: b.latency!.p99 }))
  ]
  return { pairs, latencies }
}

export async function writeOutputs (report: Report & { chart?: ChartInputs }, dir: string, stamp: string, options: { json: boolean, log: (line: string) => void }): Promise<string> {
  const md = markdown(report)
  if (options.json) writeFileSync(join(dir, `${stamp}.json`), JSON.stringify(report, null, 1) + '\n')
  writeFileSync(join(dir, `${stamp}.md`), md)
  const meta = report.meta as { date?: string, mode?: string }
  try {
    const { pairs, latencies } = chartInputs(report)
    writeFileSync(join(dir, `${stamp}.svg`), await renderChart(`ledger-api bench ${meta.date ?? stamp} (${meta.mode ?? '?'})`, pairs, latencies))
  } catch (error) {
    options.log(`chart failed: ${error instanceof Error ? error.message : String(error)}`)
  }
  return md
}
