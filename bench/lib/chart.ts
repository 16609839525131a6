// The results chart, drawn by Vega-Lite and rendered to SVG by Vega in pure JS (no canvas, no browser).
// Linear and square-root scales only: Vega's log scale renders no marks in this headless setup.
import * as vega from 'vega'
import { compile, type TopLevelSpec } from 'vega-lite'

export interface ThroughputPair {
  check: string
  measuredName: string
  measured: number
  referenceName: string
  reference: number
  /** Minimum acceptable measured/reference ratio, when the issue sets one. */
  target?: number | undefined
}

export interface LatencyBar {
  name: string
  kind: 'scenario' | 'baseline'
  p50: number
  p99: number
}

export async function renderChart (title: string, pairs: ThroughputPair[], latencies: LatencyBar[]): Promise<string> {
  const ratios = pairs.map((p) => ({
    check: p.check,
    ratio: p.reference > 0 ? p.measured / p.reference : 0,
    label: `${(p.reference > 0 ? p.measured / p.reference : 0).toFixed(2)}x  (${Math.round(p.measured).toLocaleString('en-US')} / ${Math.round(p.reference).toLocaleString('en-US')} req/s)`,
    target: p.target ?? null,
    met: p.target === undefined ? 'no target' : p.measured / p.reference >= p.target ? 'target met' : 'target missed'
  }))
  const sides = pairs.flatMap((p) => [
    { check: p.check, side: '1 measured', name: p.measuredName, rps: p.measured },
    { check: p.check, side: '2 ceiling / reference', name: p.referenceName, rps: p.reference }
  ])
  const latency = latencies.flatMap((l) => {
    const name = l.kind === 'baseline' ? `[baseline] ${l.name}` : l.name
    return [{ name, stat: 'p50', ms: l.p50 }, { name, stat: 'p99', ms: l.p99 }]
  })
  const checkAxis = { field: 'check', type: 'nominal', sort: null, title: null, axis: { labelLimit: 400 } } as const
  const spec: TopLevelSpec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: title, fontSize: 16, anchor: 'start' },
    config: { font: 'sans-serif', axis: { labelLimit: 320 }, legend: { orient: 'top' } },
    resolve: { scale: { color: 'independent', x: 'independent', y: 'independent' } },
    vconcat: [
      {
        title: 'Throughput as a multiple of its ceiling or reference (1.0 = equal; black tick = target)',
        data: { values: ratios },
        width: 520,
        height: { step: 22 },
        layer: [
          {
            mark: { type: 'bar' },
            encoding: {
              y: checkAxis,
              x: { field: 'ratio', type: 'quantitative', title: 'measured / reference (req/s)' },
              color: { field: 'met', type: 'nominal', title: null, scale: { domain: ['target met', 'target missed', 'no target'], range: ['#3b8f4a', '#c0392b', '#7f8fa6'] } }
            }
          },
          { mark: { type: 'rule', color: '#444', strokeDash: [4, 3] }, data: { values: [{ one: 1 }] }, encoding: { x: { field: 'one', type: 'quantitative' } } },
          { mark: { type: 'tick', color: 'black', thickness: 3 }, encoding: { y: checkAxis, x: { field: 'target', type: 'quantitative' } } },
          { mark: { type: 'text', align: 'left', dx: 4, fontSize: 10 }, encoding: { y: checkAxis, x: { field: 'ratio', type: 'quantitative' }, text: { field: 'label' } } }
        ]
      },
      {
        title: 'Throughput (req/s): measured side and its ceiling or reference, one panel per check',
        data: { values: sides },
        facet: { field: 'check', type: 'nominal', sort: null, title: null },
        columns: 5,
        spec: {
          width: 120,
          height: 120,
          mark: { type: 'bar' },
          encoding: {
            x: { field: 'side', type: 'nominal', title: null, axis: { labels: false, ticks: false } },
            y: { field: 'rps', type: 'quantitative', title: 'req/s' },
            color: { field: 'side', type: 'nominal', title: null, scale: { range: ['#2f6fb0', '#b8b8b8'] }, legend: { labelExpr: 'slice(datum.label, 2)' } },
            tooltip: [{ field: 'name' }, { field: 'rps', format: ',.0f' }]
          }
        },
        resolve: { scale: { y: 'independent' } }
      },
      {
        title: 'Latency p50 and p99 per scenario and baseline (ms, square-root scale)',
        data: { values: latency },
        width: 520,
        height: { step: 9 },
        mark: { type: 'bar' },
        encoding: {
          y: { field: 'name', type: 'nominal', sort: null, title: null, axis: { labelLimit: 400 } },
          yOffset: { field: 'stat', type: 'nominal' },
          x: { field: 'ms', type: 'quantitative', scale: { type: 'sqrt' }, title: 'milliseconds' },
          color: { field: 'stat', type: 'nominal', title: null, scale: { range: ['#6aa84f', '#cc4125'] } },
          tooltip: [{ field: 'name' }, { field: 'stat' }, { field: 'ms', format: '.2f' }]
        }
      }
    ]
  }
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' })
  const svg = await view.toSVG()
  view.finalize()
  return svg
}
