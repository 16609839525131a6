// deploy/observability checked with Prometheus's own promtool (installed with apt-get when missing, see
// scripts/prometheus-tools.ts): the rule files are valid, every alert has its unit test and passes it, every alert
// carries a severity, a summary and a runbook section that exists in docs/operations.md, every dashboard query
// parses and names only metrics the service exports or the rules record, and the Kubernetes config carries the
// same files. test/faults/prometheus.test.ts runs them in a live Prometheus.
import { execFile } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { parse, stringify } from 'yaml'
import { createMetrics } from '../../plugins/metrics/index.ts'
import { prometheusBinaries } from '../../scripts/prometheus-tools.ts'
import {
  alertRules, dashboardFile, dashboardPanels, fromJobLanes, loadDashboard, loadRules, observabilityDir, panelQuery, readText, ruleFiles, ruleTestFile
} from './observability-files.ts'

const { promtool } = prometheusBinaries()

function run (args: string[]): Promise<{ code: number, output: string }> {
  return new Promise((resolve) => {
    execFile(promtool, args, { cwd: observabilityDir, timeout: 60_000 }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : Number((error as { code?: number }).code ?? 1), output: stdout + stderr })
    })
  })
}

const scratch = mkdtempSync(join(tmpdir(), 'ledger-observability-'))
t.teardown(() => rmSync(scratch, { recursive: true, force: true }))

t.test('promtool check rules: both rule files are valid', async (t) => {
  const { code, output } = await run(['check', 'rules', ...ruleFiles])
  t.equal(code, 0, output)
  t.match(output, /slo\.rules\.yaml\s+SUCCESS: \d+ rules found/)
  t.match(output, /alerts\.rules\.yaml\s+SUCCESS: \d+ rules found/)
})

t.test('promtool check rules refuses a broken expression (the check can fail)', async (t) => {
  const broken = loadRules('prometheus/alerts.rules.yaml')
  const first = broken.groups[0]?.rules[0]
  if (first === undefined) throw new Error('no rule')
  first.expr = 'sum by (job) (rate(ledger_http_request_duration_seconds_count[5m]'
  const file = join(scratch, 'broken.rules.yaml')
  writeFileSync(file, stringify(broken))
  const { code, output } = await run(['check', 'rules', file])
  t.not(code, 0)
  t.match(output, /FAILED/)
})

t.test('promtool test rules: every alert is unit-tested and every test passes', async (t) => {
  const { code, output } = await run(['test', 'rules', ruleTestFile])
  t.equal(code, 0, output)
  t.match(output, /SUCCESS/)
  const tests = parse(readText(ruleTestFile)) as { tests: Array<{ alert_rule_test?: Array<{ alertname: string, exp_alerts: unknown[] }> }> }
  const firing = new Set(tests.tests.flatMap((test) => (test.alert_rule_test ?? []).filter((check) => check.exp_alerts.length > 0).map((check) => check.alertname)))
  const silent = new Set(tests.tests.flatMap((test) => (test.alert_rule_test ?? []).filter((check) => check.exp_alerts.length === 0).map((check) => check.alertname)))
  for (const rule of alertRules()) {
    t.ok(firing.has(rule.alert as string), `${rule.alert}: a test where it fires`)
    t.ok(silent.has(rule.alert as string), `${rule.alert}: a test where it stays silent`)
  }
})

t.test('promtool test rules fails when an alert does not fire as expected (the test can fail)', async (t) => {
  // The breaker alert with a `for` longer than the test allows: its firing case must now fail.
  const alerts = loadRules('prometheus/alerts.rules.yaml')
  for (const group of alerts.groups) for (const rule of group.rules) if (rule.alert === 'LedgerDatabaseCircuitOpen') rule.for = '10m'
  writeFileSync(join(scratch, 'alerts.rules.yaml'), stringify(alerts))
  writeFileSync(join(scratch, 'slo.rules.yaml'), readText('prometheus/slo.rules.yaml'))
  writeFileSync(join(scratch, 'alerts.rules.test.yaml'), readText(ruleTestFile))
  const { code, output } = await run(['test', 'rules', join(scratch, 'alerts.rules.test.yaml')])
  t.not(code, 0)
  t.match(output, /LedgerDatabaseCircuitOpen/)
})

t.test('every alert has a severity, a summary, a description and a runbook section in docs/operations.md', async (t) => {
  const docs = readFileSync(new URL('../../docs/operations.md', import.meta.url), 'utf8')
  // GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens.
  const anchors = new Set([...docs.matchAll(/^#{1,6} (.+)$/gm)].map((match) => (match[1] as string).trim().toLowerCase().replace(/[^\w\- ]/g, '').replace(/ /g, '-')))
  const names = new Set<string>()
  for (const rule of alertRules()) {
    const name = rule.alert as string
    t.notOk(names.has(name), `${name} is defined once`)
    names.add(name)
    t.match(rule.labels?.severity, /^(critical|warning)$/, `${name}: severity`)
    t.ok((rule.annotations?.summary ?? '').length > 10, `${name}: summary`)
    t.ok((rule.annotations?.description ?? '').length > 10, `${name}: description`)
    const runbook = /^docs\/operations\.md#([a-z0-9-]+)$/.exec(rule.annotations?.runbook_url ?? '')
    t.ok(runbook !== null && anchors.has(runbook[1] as string), `${name}: runbook ${rule.annotations?.runbook_url} is a section of docs/operations.md`)
  }
  t.ok(names.size >= 15, `${names.size} alerts`)
})

// Metrics a dashboard panel or an alert may name: what the service registers (histograms with their series), what
// the rules record, and Prometheus's own `up`.
const exported = new Set(createMetrics().registry.getMetricsAsArray().flatMap((metric) => {
  const { name, type } = metric as unknown as { name: string, type: string }
  return type === 'histogram' ? [`${name}_bucket`, `${name}_count`, `${name}_sum`] : [name]
}))
const recorded = new Set(ruleFiles.flatMap((file) => loadRules(file).groups.flatMap((group) => group.rules.flatMap((rule) => rule.record ?? []))))
const metricNames = (expr: string) => [...new Set([...expr.replace(/"[^"]*"/g, '""').matchAll(/\b(ledger[a-z0-9_:]*|up)\b(?=\s*[{[)\s]|$)/g)].map((match) => match[1] as string))]

t.test('every metric the rules and the dashboard name is exported, recorded, or expected from the job lanes', async (t) => {
  const exprs = [
    ...ruleFiles.flatMap((file) => loadRules(file).groups.flatMap((group) => group.rules.map((rule) => ({ where: rule.alert ?? rule.record, expr: rule.expr })))),
    ...dashboardPanels().flatMap((panel) => (panel.targets ?? []).map((target) => ({ where: `panel "${panel.title}"`, expr: target.expr })))
  ]
  for (const { where, expr } of exprs) {
    for (const name of metricNames(expr)) {
      t.ok(exported.has(name) || recorded.has(name) || fromJobLanes.has(name) || name === 'up', `${where}: ${name}`)
    }
  }
  t.notOk(exported.has('ledger_money_writes_totl'), 'a misspelt name is not exported (the check can fail)')
})

t.test('every dashboard query parses (promtool) and the dashboard is ready for file provisioning', async (t) => {
  const dashboard = loadDashboard()
  t.equal(dashboard.uid, 'ledger-api', 'a fixed uid: provisioning updates it in place')
  t.ok(dashboard.templating.list.some((variable) => variable.name === 'datasource' && variable.type === 'datasource'), 'the data source is a variable, not a name baked in')
  const panels = dashboardPanels(dashboard)
  t.ok(panels.length >= 25, `${panels.length} panels`)
  for (const panel of panels) {
    t.ok((panel.targets ?? []).length > 0 && panel.targets?.every((target) => target.expr.trim() !== ''), `panel "${panel.title}" has a query`)
    t.ok(panel.targets?.every((target) => target.expr.includes('ledger')), `panel "${panel.title}" reads ledger-api's metrics`)
  }
  // Each query as a recording rule: promtool parses it as Prometheus will.
  const asRules = {
    groups: [{
      name: 'dashboard',
      rules: panels.flatMap((panel) => (panel.targets ?? []).map((target) => ({ record: `dashboard:panel_${panel.id}_${target.refId.toLowerCase()}`, expr: panelQuery(target.expr, '1m') })))
    }]
  }
  const file = join(scratch, 'dashboard.rules.yaml')
  writeFileSync(file, stringify(asRules))
  const { code, output } = await run(['check', 'rules', file])
  t.equal(code, 0, output)
  const sections = dashboard.panels.filter((panel) => panel.type === 'row').map((panel) => panel.title)
  t.match(sections.join(' | '), /Requests.*Ledger.*Dependencies.*Jobs/, 'requests, the ledger, dependencies and jobs')
})

t.test('promtool check config: the scrape job and rule files make a valid Prometheus configuration', async (t) => {
  const scrape = parse(readText('prometheus/scrape-config.yaml')) as { scrape_configs: Array<Record<string, any>> }
  const token = join(scratch, 'metrics-token')
  writeFileSync(token, 'a-token-of-at-least-sixteen-characters', { mode: 0o600 })
  const job = scrape.scrape_configs[0] as Record<string, any>
  t.equal(job.job_name, 'ledger-api', 'the job name LedgerApiDown watches')
  job.authorization.credentials_file = token
  // Debian's Prometheus is built without Kubernetes service discovery (promtool refuses the field), so the pods
  // are stood in for by a static target; everything else of the job, its relabelling included, is checked as is.
  t.same(job.kubernetes_sd_configs, [{ role: 'pod', namespaces: { names: ['ledger'] } }], 'discovers the pods of the ledger namespace')
  delete job.kubernetes_sd_configs
  job.static_configs = [{ targets: ['127.0.0.1:9090'] }]
  const config = { global: { scrape_interval: '15s', evaluation_interval: '15s' }, rule_files: ruleFiles.map((file) => join(observabilityDir, file)), scrape_configs: [job] }
  const file = join(scratch, 'prometheus.yml')
  writeFileSync(file, stringify(config))
  const { code, output } = await run(['check', 'config', file])
  t.equal(code, 0, output)
  t.match(output, /SUCCESS/)
})

t.test('the Kubernetes config carries the rule files, the scrape job and the dashboard from this folder', async (t) => {
  const kustomization = parse(readText('kustomization.yaml')) as { configMapGenerator: Array<{ name: string, files: string[], options?: { labels?: Record<string, string> } }> }
  const generated = Object.fromEntries(kustomization.configMapGenerator.map((generator) => [generator.name, generator]))
  t.same(generated['ledger-api-prometheus-rules']?.files, ruleFiles, 'both rule files')
  t.same(generated['ledger-api-prometheus-scrape']?.files, ['prometheus/scrape-config.yaml'])
  t.same(generated['ledger-api-grafana-dashboard']?.files, [dashboardFile])
  t.equal(generated['ledger-api-grafana-dashboard']?.options?.labels?.grafana_dashboard, '1', 'found by Grafana\'s dashboard sidecar')
  const k8s = parse(readFileSync(new URL('../../deploy/k8s/kustomization.yaml', import.meta.url), 'utf8')) as { resources: string[] }
  t.ok(k8s.resources.includes('../observability'), 'kubectl apply -k deploy/k8s creates them')
  // The scrape job keeps the API pods' port named ops, which the Deployment gives OPS_PORT.
  const deployment = parse(readFileSync(new URL('../../deploy/k8s/api-deployment.yaml', import.meta.url), 'utf8'))
  const ports = deployment.spec.template.spec.containers[0].ports as Array<{ name: string }>
  t.ok(ports.some((port) => port.name === 'ops'), 'the API container has a port named ops')
  const job = (parse(readText('prometheus/scrape-config.yaml')) as { scrape_configs: Array<{ relabel_configs: Array<{ source_labels: string[], regex: string, action?: string }> }> }).scrape_configs[0]
  const keeps = job?.relabel_configs.filter((relabel) => relabel.action === 'keep').map((relabel) => `${relabel.source_labels.join(',')}=${relabel.regex}`)
  t.ok(keeps?.includes('__meta_kubernetes_pod_container_port_name=ops'), 'scrapes the ops port only')
  t.ok(keeps?.includes(`__meta_kubernetes_pod_label_app_kubernetes_io_name=${deployment.spec.template.metadata.labels['app.kubernetes.io/name']}`), 'of the API pods')
})
