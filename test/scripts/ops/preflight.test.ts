// scripts/ops/preflight/ run as the operator runs it (its own process) against a test server on a real port: it
// passes on the app as built, and it fails on the right line for two deliberately broken builds, so the checklist
// is shown able to fail.
import { execFile } from 'node:child_process'
import type { AddressInfo } from 'node:net'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { z } from 'zod'
import type { App } from '../../../app.ts'
import { CursorParamSchema } from '../../../plugins/auth/cursors.ts'
import { responses } from '../../../plugins/openapi/index.ts'
import { tamper } from '../../../scripts/ops/preflight/pagination.ts'
import { buildTestApp, createClient, createUser, testSql } from '../../helper.ts'

const script = fileURLToPath(new URL('../../../scripts/ops/preflight/index.ts', import.meta.url))

interface Run { code: number, stdout: string, stderr: string }

/**
 * Lists the app, runs preflight against it with a short load, and returns its exit code and output. It runs as a
 * new user's token unless `auth` says otherwise (--login, or nothing: preflight then signs up a user of its own), and
 * with a service client that funds the user unless `funding` is 'none'.
 */
async function preflight (app: App, extra: string[] = [], auth?: string[], funding: 'client' | 'none' = 'client'): Promise<Run> {
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo
  const client = funding === 'client' ? await createClient(app) : undefined
  const args = [
    script, '--url', `http://127.0.0.1:${port}`, ...(auth ?? ['--token', (await createUser(app)).token]),
    ...(client === undefined ? [] : ['--client', `${client.id}:${client.secret}`]), '--duration', '1', '--connections', '10', ...extra
  ]
  return new Promise((resolve) => {
    execFile(process.execPath, args, { timeout: 100_000, env: process.env }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : -1, stdout, stderr })
    })
  })
}

/** `{ '1': 'PASS', ... }` from the result lines. */
function statuses (stdout: string): Record<string, string> {
  return Object.fromEntries([...stdout.matchAll(/^(PASS|FAIL|SKIP) {2}(\d) /gm)].map((m) => [m[2], m[1]]))
}

t.test('passes against the app as built, every check with evidence', async (t) => {
  const app = await buildTestApp(t)
  const run = await preflight(app, ['--database-url', process.env.DATABASE_DIRECT_URL ?? process.env.DATABASE_URL ?? ''])
  t.equal(run.code, 0, 'exit 0', { stdout: run.stdout, stderr: run.stderr })
  t.same(statuses(run.stdout), { 1: 'PASS', 2: 'PASS', 3: 'PASS', 4: 'PASS', 5: 'PASS' }, 'every check passes', { stdout: run.stdout })
  t.match(run.stdout, /^PASS {2}1 load: 10 conns x 1 s, [\d,]+ requests .*, 0 errors \(0 timeouts\), 0 5xx, [\d,]+ 429s/m)
  t.match(run.stdout, /^PASS {2}2 injection: [\d,]+ requests, 4 payloads .*GET \/users\/me afterwards 200/m)
  t.match(run.stdout, /^PASS {2}4 pagination: 4 of 4 lists paginate \(GET \/users\/me\/following, GET \/users\/me\/followers, GET \/feed, GET \/transactions\)/m)
  t.match(run.stdout, /^PASS {2}5 resources: PostgreSQL client connections max \d+ \(< 20\) over \d+ samples; cache hit ratio during the load: /m)
  t.match(run.stdout, /^preflight: 5 passed, 0 failed, 0 skipped$/m)
})

t.test('without --client the transactions list, which only a service client can fill, is a SKIP', async (t) => {
  const app = await buildTestApp(t)
  const sql = testSql(t)
  const run = await preflight(app, [], undefined, 'none')
  t.equal(run.code, 0, 'a SKIP does not fail the run', { stdout: run.stdout, stderr: run.stderr })
  t.equal(statuses(run.stdout)['4'], 'SKIP')
  t.match(run.stdout, /^SKIP {2}4 pagination: 3 of 4 lists paginate \(GET \/users\/me\/following, GET \/users\/me\/followers, GET \/feed\)/m)
  t.match(run.stdout, /skipped: GET \/transactions: fewer than 2 items and only a service client can create money \(--client id:secret lets one fund the user\)/)
  const userId = /, id ([0-9a-f-]{36});/.exec(run.stdout)?.[1] ?? ''
  const [row] = await sql`select count(*)::int as n from transactions where to_user_id = ${userId} or from_user_id = ${userId}`
  t.equal(row?.n, 0, 'and no money was created for the preflight user')
})

t.test('without --database-url the connection sampling is a SKIP, which does not fail the run', async (t) => {
  const app = await buildTestApp(t)
  const run = await preflight(app, ['--read-only'])
  t.equal(run.code, 0, 'exit 0', { stdout: run.stdout, stderr: run.stderr })
  t.equal(statuses(run.stdout)['5'], 'SKIP')
  t.match(run.stdout, /2 injection: .*\(GETs only: --read-only\)/)
})

t.test('without --token or --login it signs up a user of its own and logs in (through the typed client)', async (t) => {
  const app = await buildTestApp(t)
  const run = await preflight(app, [], [])
  t.equal(run.code, 0, 'exit 0', { stdout: run.stdout, stderr: run.stderr })
  t.match(run.stdout, /^preflight http:\/\/127\.0\.0\.1:\d+: ledger-api \d+\.\d+\.\d+, \d+ operations; user preflight-[0-9a-f]{12}@example\.test signed up for this run, id [0-9a-f-]{36}; writes allowed/m)
})

t.test('a wrong --login stops the run at setup with the API\'s own answer', async (t) => {
  const app = await buildTestApp(t)
  const run = await preflight(app, [], ['--login', 'nobody@example.test:not the password'])
  t.equal(run.code, 1, 'exit 1', { stdout: run.stdout })
  t.match(run.stdout, /^FAIL {2}0 setup: logging in as nobody@example\.test -> 401 invalid_grant "Wrong email or password\."$/m)
})

t.test('fails check 3 when a route documented as private answers without a token', async (t) => {
  const app = await buildTestApp(t)
  // The mistake being caught: `public: true` on a route whose schema (401 and all) says it needs a token.
  app.get('/test/open', {
    config: { public: true },
    schema: { tags: ['test'], ...responses({ 200: { schema: z.object({ ok: z.boolean() }), description: 'OK.' } }) }
  }, async () => ({ ok: true }))
  const run = await preflight(app)
  t.equal(run.code, 1, 'exit 1', { stdout: run.stdout })
  t.same(Object.entries(statuses(run.stdout)).filter(([, s]) => s === 'FAIL').map(([id]) => id), ['3'], 'only check 3 fails', { stdout: run.stdout })
  t.match(run.stdout, /^FAIL {2}3 auth: .*; 1 did not$/m)
  t.match(run.stdout, /^ {6}GET \/test\/open -> 200 without a token \(expected 401\)$/m)
})

t.test('fails check 4 when following a list\'s nextCursor breaks', async (t) => {
  const app = await buildTestApp(t)
  app.get('/test/list', {
    schema: {
      tags: ['test'],
      querystring: z.object({ limit: z.coerce.number().int().min(1).max(10).default(10), cursor: CursorParamSchema.optional() }),
      ...responses({ 200: { schema: z.object({ data: z.array(z.object({ id: z.string() })), nextCursor: z.string().nullable() }), description: 'A page.' } })
    }
  }, async (request) => {
    if (request.query.cursor !== undefined) throw new Error('the second page was never written')
    return { data: [{ id: '1' }], nextCursor: 'cGFnZTI.c2lnbmF0dXJl' }
  })
  const run = await preflight(app)
  t.equal(run.code, 1, 'exit 1', { stdout: run.stdout })
  t.same(Object.entries(statuses(run.stdout)).filter(([, s]) => s === 'FAIL').map(([id]) => id), ['4'], 'only check 4 fails', { stdout: run.stdout })
  t.match(run.stdout, /^FAIL {2}4 pagination: 4 of 5 lists paginate/m)
  t.match(run.stdout, /^ {6}GET \/test\/list: following nextCursor -> 500/m)
})

t.test('fails check 2 when a route pastes input into SQL', async (t) => {
  const app = await buildTestApp(t)
  app.get('/test/search', {
    schema: { tags: ['test'], querystring: z.object({ q: z.string().max(100) }), ...responses({ 200: { schema: z.object({ n: z.number() }), description: 'A count.' } }) }
  }, async (request) => {
    // The bug under test. Read-only, so that a payload that does run cannot change the test database.
    const [row] = await app.db.begin('read only', (tx) => tx.unsafe<{ n: number }[]>(`select count(*)::int as n from users where name = '${request.query.q}'`))
    return { n: row?.n ?? 0 }
  })
  const run = await preflight(app)
  t.equal(run.code, 1, 'exit 1', { stdout: run.stdout })
  t.same(Object.entries(statuses(run.stdout)).filter(([, s]) => s === 'FAIL').map(([id]) => id), ['2'], 'only check 2 fails', { stdout: run.stdout })
  t.match(run.stdout, /^ {6}GET \/test\/search query q="'; DROP TABLE users;--" -> 500/m)
})

t.test('a tampered cursor differs in a character that decoding cannot ignore', async (t) => {
  // The last base64url character of a 16-byte signature carries 4 padding bits; changing it may change nothing.
  const cursor = 'eyJiZWZvcmUiOiIxIn0.AAAAAAAAAAAAAAAAAAAAAA'
  const changed = tamper(cursor)
  t.not(changed, cursor)
  t.not(Buffer.from(changed.split('.')[1]!, 'base64url').toString('hex'), Buffer.from(cursor.split('.')[1]!, 'base64url').toString('hex'))
})
