// The driver's reconnect after its socket closed with a write still buffered (patches/postgres+3.4.9.patch): the
// next connection must send its startup message at once. Unpatched, it never did, and every connect of that pooled
// connection ended at the connect timeout: after PgBouncer came back, the API took 5 to 11 s instead of milliseconds
// to serve again (test/faults/pgbouncer.test.ts, 1 run in 4 to 7). No database here: a fake server on 127.0.0.1 that
// speaks just enough of the protocol, and the close is made to land exactly where it hurt, so it fails every time.
import net, { type AddressInfo } from 'node:net'
import postgres from 'postgres'
import t, { type Test } from 'tap'
import { captureProcessEvent } from '../process-events.ts'

/** AuthenticationOk then ReadyForQuery (idle): what a server sends once it accepts a startup message. */
const ready = Buffer.concat([
  Buffer.from([0x52, 0, 0, 0, 8, 0, 0, 0, 0]),
  Buffer.from([0x5a, 0, 0, 0, 5, 0x49])
])

t.test('a connection closed with a write still buffered sends its next startup message at once', async (t) => {
  const startups: number[] = []
  const sockets = new Set<net.Socket>()
  const server = net.createServer((socket) => {
    sockets.add(socket)
    const index = sockets.size
    let first = true
    socket.on('data', (data) => {
      // A startup message: length, then protocol 3.0 (196608). Answered; anything after it is left unanswered.
      if (first && data.length >= 8 && data.readInt32BE(4) === 196608) {
        first = false
        startups.push(index)
        socket.write(ready)
      }
    })
    socket.on('error', () => {})
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as AddressInfo).port
  t.teardown(() => new Promise<void>((resolve) => { for (const socket of sockets) socket.destroy(); server.close(() => resolve()) }))

  let connects = 0
  // `socket` (a connected or connecting socket of our own) is a driver option its type declarations leave out.
  const options = {
    host: '127.0.0.1',
    port,
    user: 'test',
    database: 'test',
    max: 1,
    prepare: false,
    fetch_types: false,
    connect_timeout: 2,
    backoff: () => 0,
    onnotice: () => {},
    // The driver's own connect, with one addition on the first socket only: once the driver has handled the
    // server's ReadyForQuery (and buffered the query behind a setImmediate), the socket goes away and its close is
    // handled in that same turn, before the buffered write could go out. In the field that order comes from
    // PgBouncer dropping every connection at once: close events are handled after the check phase, and a query
    // re-dispatched (by the reaction to an earlier close) to a connection whose own close is still pending is
    // buffered just before it.
    socket: () => {
      const socket = net.connect(port, '127.0.0.1')
      if (++connects === 1) {
        setImmediate(() => socket.on('data', () => {
          socket.destroy()
          socket.emit('close', false)
        }))
      }
      return socket
    }
  }
  const sql = postgres(options)
  t.teardown(() => sql.end({ timeout: 0 }))

  await t.rejects(sql`select 1`, { code: 'CONNECTION_CLOSED' }, 'the first query dies with its socket')
  const started = performance.now()
  // The second query reconnects the same pooled connection; the fake server never answers queries, so only the
  // startup exchange is watched.
  sql`select 1`.catch(() => {})
  while (startups.length < 2 && performance.now() - started < 3000) await new Promise((resolve) => setTimeout(resolve, 10))
  const ms = Math.round(performance.now() - started)
  t.equal(connects, 2, 'the pooled connection connected again')
  t.same(startups, [1, 2], `the second connection's startup message reached the server (${ms} ms)`)
  t.ok(ms < 1000, `at once, not at the connect timeout (${ms} ms)`)
})

/** One backend message: its type byte, then its length (itself included) and body. */
const message = (type: string, body: Buffer = Buffer.alloc(0)) => {
  const head = Buffer.alloc(5)
  head.write(type, 0, 'latin1')
  head.writeInt32BE(body.length + 4, 1)
  return Buffer.concat([head, body])
}

/** What the server answers to one Parse, Describe, Bind, Execute, Sync: a statement with no parameters and no rows. */
const statementDone = (tag: string) => Buffer.concat([
  message('1'),
  message('t', Buffer.from([0, 0])),
  message('n'),
  message('2'),
  message('C', Buffer.from(`${tag}\0`)),
  message('Z', Buffer.from('I'))
])

/** What the server answers to one Query message that returns no rows. */
const simpleDone = (tag: string) => Buffer.concat([message('C', Buffer.from(`${tag}\0`)), message('Z', Buffer.from('T'))])

/**
 * A fake server that accepts every startup and answers every statement as done, except one whose text holds
 * `marker`: then it drops the connection, gracefully (`end`: the client sees its socket close without an error) or
 * with a reset (`reset`: the client sees ECONNRESET, then the close).
 */
async function droppingServer (t: Test, marker: string, drop: 'end' | 'reset') {
  const sockets = new Set<net.Socket>()
  const statements: string[] = []
  const server = net.createServer((socket) => {
    sockets.add(socket)
    let started = false
    let pending = Buffer.alloc(0)
    socket.on('data', (data) => {
      pending = Buffer.concat([pending, data])
      if (!started) {
        if (pending.length < 8 || pending.length < pending.readInt32BE(0)) return
        pending = pending.subarray(pending.readInt32BE(0))
        started = true
        socket.write(ready)
      }
      while (pending.length >= 5 && pending.length >= 1 + pending.readInt32BE(1)) {
        const type = String.fromCharCode(pending[0]!)
        const body = pending.subarray(5, 1 + pending.readInt32BE(1))
        pending = pending.subarray(1 + pending.readInt32BE(1))
        // Parse: a statement name (empty), then the text. Query (a statement without parameters): the text.
        if (type === 'P') statements.push(body.toString('utf8', body.indexOf(0) + 1, body.indexOf(0, body.indexOf(0) + 1)))
        if (type === 'Q') statements.push(body.toString('utf8', 0, body.indexOf(0)))
        if (type !== 'S' && type !== 'Q') continue
        const text = statements.at(-1) ?? ''
        if (text.includes(marker)) {
          if (drop === 'end') socket.end()
          else socket.resetAndDestroy()
          return
        }
        const tag = text.trim().split(/\s+/)[0]!.toUpperCase()
        socket.write(type === 'S' ? statementDone(tag) : simpleDone(tag))
      }
    })
    socket.on('error', () => {})
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => { for (const socket of sockets) socket.destroy(); server.close(() => resolve()) }))
  return { port: (server.address() as AddressInfo).port, statements }
}

const settledWithin = async (promise: Promise<unknown>, ms: number) => {
  let timer: NodeJS.Timeout | undefined
  const outcome = await Promise.race([
    promise.then(() => 'resolved', () => 'rejected'),
    new Promise<string>((resolve) => { timer = setTimeout(() => resolve('pending'), ms) })
  ])
  clearTimeout(timer)
  return outcome
}

// A transaction whose connection goes away mid-statement: postgres.js rejects the statement, and the transaction's
// own catch then sends `rollback` down the same connection. Unpatched, that write was buffered behind a setImmediate
// on a connection whose socket was already gone (a clean close), and the immediate threw: an uncaught TypeError,
// the whole API process down (seen once under test/faults/prometheus.test.ts, PgBouncer stopped under load). After a
// reset, the rollback was queued behind the dead statement instead and never settled. Sent once the pool has
// reconnected that connection for another statement, it ran on the new session, outside any transaction.
const dropCases = [
  { drop: 'end', straggler: 'at once' },
  { drop: 'reset', straggler: 'at once' },
  { drop: 'end', straggler: 'after the pool reconnected' }
] as const
for (const { drop, straggler } of dropCases) {
  t.test(`a transaction whose connection is dropped (${drop}) mid-statement fails cleanly (its next statement ${straggler}), and the pool serves the next statement`, async (t) => {
    const { port, statements } = await droppingServer(t, 'drop_here', drop)
    const uncaught = captureProcessEvent('uncaughtException')
    t.teardown(() => uncaught.restore())
    const sql = postgres({ host: '127.0.0.1', port, user: 'test', database: 'test', max: 1, prepare: false, fetch_types: false, connect_timeout: 2, backoff: () => 0, onnotice: () => {} })
    t.teardown(() => sql.end({ timeout: 0 }))

    await sql`select 1`
    let rollback: Promise<unknown> | undefined
    const transaction = sql.begin(async (tx) => {
      try {
        await tx`select 'drop_here'`
      } catch (error) {
        // The only connection (max 1) opens a new session for a statement outside the transaction.
        if (straggler !== 'at once') await sql`select 'meanwhile'`
        // What the app's code does after a failed statement: another statement in the same transaction.
        rollback = tx`select 'after the drop'`
        await rollback.catch(() => {})
        throw error
      }
    })
    t.equal(await settledWithin(transaction, 2000), 'rejected', 'the transaction is rejected')
    await t.rejects(transaction, { code: 'CONNECTION_CLOSED' }, 'with CONNECTION_CLOSED')
    // Long enough for every buffered write (setImmediate) and the pool's reconnect (no backoff) to have run.
    await new Promise((resolve) => setTimeout(resolve, 100))
    t.same(uncaught.reasons.map(String), [], 'no uncaught exception')
    t.ok(rollback !== undefined, 'the code after the failed statement ran')
    t.equal(await settledWithin(rollback ?? Promise.resolve(), 1000), 'rejected', 'a statement sent down the dropped connection is rejected, not left pending')
    t.notOk(statements.includes("select 'after the drop'"), 'and never reaches the server: not on the dropped session, not on the next one')

    const next = sql`select 2`
    t.equal(await settledWithin(next, 2000), 'resolved', 'the pool answers the next statement on a new connection')
    t.same(uncaught.reasons.map(String), [], 'still no uncaught exception')
  })
}
