// How many flights a statement costs on the wire. Without prepared statements (PgBouncer 1.18 in transaction mode
// keeps none), postgres.js first sends Parse and Describe and waits for the parameters' types before it binds: two
// round trips through PgBouncer per statement. The driver patch (patches/README.md) keeps the types the server gave
// for each statement text, so every later run of that text is one flight, its values serialized as those types.
import { randomBytes } from 'node:crypto'
import net from 'node:net'
import t, { type Test } from 'tap'
import { createSql, type Sql } from '../../plugins/database/index.ts'
import { ownerSql } from '../helper.ts'

/** The frontend messages of one socket write, by type byte (P Parse, D Describe, H Flush, B Bind, E Execute, S Sync); a Parse with its text. */
type Flight = string[]

/**
 * A TCP relay in front of PgBouncer that records what the client sends, one entry per chunk it receives (on
 * loopback, one per socket write), as the protocol's message types.
 */
async function recordingRelay (t: Test, upstream: URL) {
  const flights: Flight[][] = []
  const server = net.createServer((client) => {
    const mine: Flight[] = []
    flights.push(mine)
    const target = net.connect(Number(upstream.port), upstream.hostname)
    let buffered = Buffer.alloc(0)
    let started = false
    client.on('data', (chunk) => {
      target.write(chunk)
      buffered = Buffer.concat([buffered, chunk])
      const flight: Flight = []
      while (buffered.length >= (started ? 5 : 4)) {
        // The startup message (and an SSL request before it) has no type byte.
        const length = started ? buffered.readUInt32BE(1) + 1 : buffered.readUInt32BE(0)
        if (buffered.length < length) break
        if (started) flight.push(String.fromCharCode(buffered[0] as number) + (buffered[0] === 0x50 ? `:${buffered.subarray(5, length).toString('utf8')}` : ''))
        else if (buffered.readUInt32BE(4) !== 80877103) started = true
        buffered = buffered.subarray(length)
      }
      if (flight.length > 0) mine.push(flight)
    })
    target.pipe(client)
    client.on('error', () => target.destroy())
    target.on('error', () => client.destroy())
    client.on('close', () => target.destroy())
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())))
  const url = new URL(upstream)
  url.hostname = '127.0.0.1'
  url.port = String((server.address() as net.AddressInfo).port)
  /** Each write, as its messages' types, from the one that parses a statement containing `marker` to its Sync. */
  const flightsOf = (marker: string): string[] => {
    const result: string[] = []
    for (const connection of flights) {
      connection.forEach((flight, index) => {
        if (!flight.some((message) => message.startsWith('P:') && message.includes(marker))) return
        for (const next of connection.slice(index)) {
          result.push(next.map((message) => message[0]).join(''))
          if (next.includes('S')) break
        }
      })
    }
    return result
  }
  return { url: url.toString(), flightsOf }
}

/** The app's own pool (createSql, as the database plugin builds it) through the relay, one connection. */
async function relayedPool (t: Test): Promise<{ sql: Sql, flightsOf: (marker: string) => string[] }> {
  const relay = await recordingRelay(t, new URL(process.env.DATABASE_URL ?? ''))
  const sql = createSql({ url: relay.url, max: 1, idleTimeoutS: 5, connectTimeoutS: 5 })
  t.teardown(() => sql.end({ timeout: 1 }))
  return { sql, flightsOf: relay.flightsOf }
}

const marker = () => `flights_${randomBytes(6).toString('hex')}`

t.test('a statement with parameters is two round trips the first time, then one flight for the same text', async (t) => {
  const { sql, flightsOf } = await relayedPool(t)
  const tag = marker()
  const answers = []
  for (const value of [1, 2, 3]) {
    const [row] = await sql.unsafe(`select $1::int + 1 as next, '${tag}' as tag`, [value])
    answers.push(row?.next)
  }
  t.same(answers, [2, 3, 4], 'each run bound its own value')
  t.same(flightsOf(tag), ['PDH', 'BES', 'PDBES', 'PDBES'],
    'Parse, Describe and Flush, then Bind, Execute and Sync once; afterwards all five in one write')
})

t.test('a learned statement serializes its values as the server\'s types, as the described run did', async (t) => {
  const { sql, flightsOf } = await relayedPool(t)
  const tag = marker()
  // The JS value is a string; the parameter is jsonb, so it is sent as a JSON string. Sent untyped as plain text
  // (a one-flight run that did not know the type), `not json` would be refused.
  const rows = []
  for (let i = 0; i < 3; i++) rows.push((await sql.unsafe(`select $1::jsonb as value, jsonb_typeof($1::jsonb) as type, '${tag}' as tag`, ['not json']))[0])
  t.same(rows.map((row) => [row?.value, row?.type]), [['not json', 'string'], ['not json', 'string'], ['not json', 'string']])
  t.same(flightsOf(tag), ['PDH', 'BES', 'PDBES', 'PDBES'])
})

t.test('a statement whose parameter changed type is described afresh after one run', async (t) => {
  const { sql, flightsOf } = await relayedPool(t)
  const owner = ownerSql()
  const fn = marker()
  t.teardown(() => owner.unsafe(`drop function if exists ${fn}`))
  await owner.unsafe(`create function ${fn}(p jsonb) returns text language sql as $$ select 'jsonb:' || p::text $$`)
  await owner.unsafe(`grant execute on function ${fn}(jsonb) to ledger_api`)
  const call = async () => (await sql.unsafe(`select ${fn}($1) as answer`, ['5']))[0]?.answer as string
  t.equal(await call(), 'jsonb:"5"', 'described: the string is sent as a JSON string')
  t.equal(await call(), 'jsonb:"5"', 'learned: the same')
  await owner.unsafe(`drop function ${fn}(jsonb)`)
  await owner.unsafe(`create function ${fn}(p integer) returns text language sql as $$ select 'integer:' || p::text $$`)
  await owner.unsafe(`grant execute on function ${fn}(integer) to ledger_api`)
  // The run that finds the change still binds as jsonb ("5" is no integer): it fails, and its types are forgotten.
  await t.rejects(call(), { code: '22P02' })
  t.equal(await call(), 'integer:5', 'the next run describes the statement again and binds as integer')
  t.equal(await call(), 'integer:5')
  t.same(flightsOf(`${fn}($1)`), ['PDH', 'BES', 'PDBES', 'PDBES', 'PDH', 'BES', 'PDBES'])
})
