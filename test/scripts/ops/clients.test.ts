// scripts/ops/clients.ts run as the operator runs it (its own process, DATABASE_URL set) against the test database.
import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { testSql } from '../../helper.ts'

const script = fileURLToPath(new URL('../../../scripts/ops/clients.ts', import.meta.url))

function clients (args: string[]): Promise<{ code: number, stdout: string, stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [script, ...args], { env: { ...process.env }, timeout: 60_000 }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : Number(error.code ?? 1), stdout, stderr })
    })
  })
}

t.test('create prints one JSON line, stores only a hash, and list and revoke manage the client', async (t) => {
  const sql = testSql(t)
  const created = await clients(['create', '--name', "Payments'); drop table users;--", '--scope', 'funds:write events:read'])
  t.equal(created.code, 0, created.stderr)
  const lines = created.stdout.split('\n').filter(Boolean)
  t.equal(lines.length, 1, 'exactly one line on stdout')
  const { clientId, clientSecret } = JSON.parse(lines[0] ?? '{}') as { clientId: string, clientSecret: string }
  t.same(Object.keys(JSON.parse(lines[0] ?? '{}')), ['clientId', 'clientSecret'])
  t.match(clientSecret, /^lsk_[A-Za-z0-9_-]{43}$/)

  const [row] = await sql<{ name: string, secret_hash: Buffer, scopes: string, revoked_at: Date | null }[]>`
    select name, secret_hash, scopes::text as scopes, revoked_at from service_clients where id = ${clientId}`
  t.equal(row?.name, "Payments'); drop table users;--", 'the name is stored as text')
  t.same(row?.secret_hash, createHash('sha256').update(clientSecret).digest(), 'only the hash of the secret is stored')
  t.notOk(JSON.stringify(row).includes(clientSecret), 'never the secret itself')
  t.equal(row?.scopes, '{funds:write,events:read}')
  t.equal(row?.revoked_at, null)

  const listed = await clients(['list'])
  t.equal(listed.code, 0)
  const entry = listed.stdout.split('\n').filter(Boolean).map((line) => JSON.parse(line)).find((c: { id: string }) => c.id === clientId)
  t.match(entry, { id: clientId, scopes: ['funds:write', 'events:read'], revokedAt: null })
  t.notOk(listed.stdout.includes(clientSecret), 'list never shows a secret')

  const revoked = await clients(['revoke', clientId.toUpperCase()])
  t.equal(revoked.code, 0, revoked.stderr)
  const [after] = await sql`select revoked_at is not null as revoked, (select count(*)::int from revocations where subject = ${`client:${clientId}`}) as listed from service_clients where id = ${clientId}`
  t.same(after, { revoked: true, listed: 1 }, 'revoked, and on the revocation list every API process polls')
  t.equal((await clients(['revoke', clientId])).code, 1, 'revoking twice says there is no active client')
})

t.test('bad arguments exit 2 and write nothing', async (t) => {
  const sql = testSql(t)
  // Only the names these calls would create: other test files make their own clients at the same time.
  const [before] = await sql`select count(*)::int as n from service_clients where name in ('x', '')`
  for (const args of [
    ['create', '--name', 'x', '--scope', 'funds:write admin'],
    ['create', '--name', 'x', '--scope', ''],
    ['create', '--name', '', '--scope', 'funds:write'],
    ['create', '--scope', 'funds:write'],
    ['create', '--name', 'x', '--scope', 'funds:write', '--bogus'],
    ['revoke', "' OR 1=1 --"],
    ['revoke'],
    ['delete', 'everything'],
    []
  ]) {
    const run = await clients(args)
    t.equal(run.code, 2, JSON.stringify(args))
    t.equal(run.stdout, '', 'nothing on stdout')
  }
  const [after] = await sql`select count(*)::int as n from service_clients where name in ('x', '')`
  t.equal(after?.n, before?.n)
})
