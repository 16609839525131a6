// The driver's reconnect after its socket closed with a write still buffered (patches/postgres+3.4.9.patch): the
// next connection must send its startup message at once. Unpatched, it never did, and every connect of that pooled
// connection ended at the connect timeout: after PgBouncer came back, the API took 5 to 11 s instead of milliseconds
// to serve again (test/faults/pgbouncer.test.ts, 1 run in 4 to 7). No database here: a fake server on 127.0.0.1 that
// speaks just enough of the protocol, and the close is made to land exactly where it hurt, so it fails every time.
import net, { type AddressInfo } from 'node:net'
import postgres from 'postgres'
import t from 'tap'

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
