// Abuse of the ledger check's bookkeeping and of the observability deploy files. The API role (ledger_api, through
// PgBouncer) reads the runs table and writes it only through claim_ledger_check() and finish_ledger_check(): a
// statement it runs, injected or buggy, cannot claim a slot of its choosing, hide a failed check or rewrite a
// finished one. The deploy files carry no credential and scrape only the private ops port.
import { readdirSync, readFileSync } from 'node:fs'
import t from 'tap'
import { parse } from 'yaml'
import { buildTestApp, testSql } from '../helper.ts'

t.test('the API role cannot write ledger_check_runs directly, nor misuse the functions', async (t) => {
  const app = await buildTestApp(t)
  const owner = testSql(t)
  const api = app.db
  const day = new Date(Math.floor(Date.now() / 86_400_000) * 86_400_000)
  await t.rejects(api`insert into ledger_check_runs (slot_start, interval_s, runner) values (${new Date(Date.now() + 86_400_000)}, 60, 'intruder')`, { code: '42501' }, 'no insert: a future slot cannot be taken to suppress a check')
  await t.rejects(api`update ledger_check_runs set outcome = 'held' where outcome = 'failed'`, { code: '42501' }, 'no update: a failure cannot be turned into a pass')
  await t.rejects(api`delete from ledger_check_runs`, { code: '42501' }, 'no delete: the history stays')
  await t.rejects(api`truncate ledger_check_runs`, { code: '42501' }, 'no truncate')
  await t.rejects(api`select claim_ledger_check(0, 'x')`, { code: '22023' }, 'an interval of 0 is refused')
  await t.rejects(api`select claim_ledger_check(100000, 'x')`, { code: '22023' }, 'an interval over a day is refused')

  // A day-long slot, claimed as the API role: the database picks the slot (today, by its clock), never the caller.
  await owner`delete from ledger_check_runs where slot_start = ${day} and interval_s = 86400`
  const [claim] = await api<Array<{ slot: Date | null }>>`select claim_ledger_check(86400, 'security-test') as slot`
  t.teardown(() => owner`delete from ledger_check_runs where slot_start = ${day} and runner = 'security-test'`)
  t.equal(claim?.slot?.getTime(), day.getTime(), 'the slot is the current one, from the database clock')
  const [again] = await api<Array<{ slot: Date | null }>>`select claim_ledger_check(86400, 'security-test') as slot`
  t.equal(again?.slot, null, 'a claimed slot is not given twice')
  const [first] = await api<Array<{ finished: boolean }>>`select finish_ledger_check(${day}, 'failed', 0.1, ${api.json([{ invariant: 'x', offending: [] }] as never)}) as finished`
  t.equal(first?.finished, true, 'the claimed run is finished once')
  const [second] = await api<Array<{ finished: boolean }>>`select finish_ledger_check(${day}, 'held', 0.1, null) as finished`
  t.equal(second?.finished, false, 'a finished run cannot be rewritten as held')
  const [row] = await owner<Array<{ outcome: string }>>`select outcome from ledger_check_runs where slot_start = ${day}`
  t.equal(row?.outcome, 'failed', 'the recorded failure stands')
})

t.test('the observability deploy files carry no credential and scrape only the ops port', async (t) => {
  const folder = new URL('../../deploy/observability/', import.meta.url)
  const files = readdirSync(folder, { recursive: true, withFileTypes: true }).filter((entry) => entry.isFile()).map((entry) => `${entry.parentPath}/${entry.name}`)
  t.ok(files.length >= 6)
  for (const file of files) {
    const text = readFileSync(file, 'utf8')
    t.notMatch(text, /:\/\/[^/\s"'@]*:[^/\s"'@]*@/, `${file}: no password in a URL`)
    t.notMatch(text, /\b(credentials|password|bearer_token|secret)\s*:\s*['"]?[A-Za-z0-9+/_-]{8,}/i, `${file}: no inline credential`)
  }
  const scrape = parse(readFileSync(new URL('prometheus/scrape-config.yaml', folder), 'utf8')) as { scrape_configs: Array<Record<string, any>> }
  const job = scrape.scrape_configs[0] as Record<string, any>
  t.same(Object.keys(job.authorization).sort(), ['credentials_file', 'type'], 'the token comes from a mounted file, never inline')
  t.equal(job.scheme, 'http', 'the ops port is private to the pod network (TLS terminates at the ingress)')
  t.ok((job.relabel_configs as Array<{ source_labels: string[], regex: string, action?: string }>).some((relabel) => relabel.action === 'keep' && relabel.source_labels[0] === '__meta_kubernetes_pod_container_port_name' && relabel.regex === 'ops'), 'only the port named ops, never the public one')
})
