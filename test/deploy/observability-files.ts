// The files of deploy/observability read the way Prometheus and Grafana read them, for the tests that check them
// offline (test/deploy/observability.test.ts) and against a live Prometheus (test/faults/prometheus.test.ts).
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { parse, stringify } from 'yaml'

export const observabilityDir = fileURLToPath(new URL('../../deploy/observability/', import.meta.url))
export const ruleFiles = ['prometheus/slo.rules.yaml', 'prometheus/alerts.rules.yaml'] as const
export const ruleTestFile = 'prometheus/alerts.rules.test.yaml'
export const dashboardFile = 'grafana/ledger-api.json'

export interface Rule {
  record?: string
  alert?: string
  expr: string
  for?: string
  labels?: Record<string, string>
  annotations?: Record<string, string>
}
export interface RuleFile { groups: Array<{ name: string, interval?: string, rules: Rule[] }> }

export const readText = (file: string) => readFileSync(`${observabilityDir}${file}`, 'utf8')
export const loadRules = (file: string) => parse(readText(file)) as RuleFile
export const alertRules = (): Rule[] => ruleFiles.flatMap((file) => loadRules(file).groups.flatMap((group) => group.rules.filter((rule) => rule.alert !== undefined)))

export interface Panel {
  id: number
  type: string
  title: string
  targets?: Array<{ refId: string, expr: string }>
}
export interface Dashboard { uid: string, title: string, panels: Panel[], templating: { list: Array<{ name: string, type: string, allValue?: string }> } }

/**
 * Metrics of the worker's job lanes (a `lane` label on the queue gauges, the first-attempt lag histogram, disabled
 * endpoints), which the rules and the dashboard use and the worker exports once its lanes are merged. Until the
 * service exports one, a panel reading it is reported as pending by the live test, not passed.
 */
export const fromJobLanes = new Set(['ledger_job_first_attempt_lag_seconds_bucket', 'ledger_webhook_endpoints_disabled_total'])

export const loadDashboard = () => JSON.parse(readText(dashboardFile)) as Dashboard
export const dashboardPanels = (dashboard: Dashboard = loadDashboard()) => dashboard.panels.filter((panel) => panel.type !== 'row')

/**
 * A panel query as Grafana sends it: the dashboard's variables replaced (all instances, the "All" value) and the
 * rate window Grafana would pick (`rateInterval`, for example four scrape intervals).
 */
export function panelQuery (expr: string, rateInterval: string): string {
  return expr.replaceAll('$__rate_interval', rateInterval).replaceAll('$instance', '.*')
}

const units: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000, y: 31_536_000_000 }
const durationPart = /(\d+)(ms|s|m|h|d|w|y)/g

/** A Prometheus duration (`1h30m`, `5m`, `250ms`) in milliseconds. */
export function durationMs (text: string): number {
  let ms = 0
  let matched = ''
  for (const match of text.matchAll(durationPart)) {
    ms += Number(match[1]) * (units[match[2] as string] as number)
    matched += match[0]
  }
  if (matched !== text || text === '') throw new Error(`not a Prometheus duration: ${text}`)
  return ms
}

/**
 * The rule files with every range and `for` divided by `factor` (whole milliseconds, at least `floorMs`): the same
 * expressions, windows sized for a test that lasts a minute instead of days.
 */
export function scaledRules (file: string, factor: number, floorMs: number): string {
  const scale = (duration: string) => `${Math.max(floorMs, Math.round(durationMs(duration) / factor))}ms`
  const rules = loadRules(file)
  for (const group of rules.groups) {
    for (const rule of group.rules) {
      rule.expr = rule.expr.replace(/\[([0-9a-z]+)\]/g, (_, duration: string) => `[${scale(duration)}]`)
      if (rule.for !== undefined) rule.for = scale(rule.for)
    }
  }
  return stringify(rules)
}
