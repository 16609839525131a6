import { spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import type { Socket } from 'node:net'
import t from 'tap'
import { createRedis } from '../../plugins/redis/index.ts'
import { serviceBin } from '../../scripts/stack/services.ts'
import { freePort } from '../free-port.ts'
import { testConfig } from '../helper.ts'

/** Counts the writes that reach the socket (one per system call): `_write` for one chunk, `_writev` for several. */
function countSocketWrites (socket: Socket): { count: () => number } {
  let writes = 0
  const target = socket as Socket & { _write: (...args: unknown[]) => unknown, _writev?: (...args: unknown[]) => unknown }
  const write = target._write
  target._write = function (...args: unknown[]) { writes++; return write.apply(this, args) }
  const writev = target._writev
  if (writev !== undefined) target._writev = function (...args: unknown[]) { writes++; return writev.apply(this, args) }
  return { count: () => writes }
}

type Teardown = { teardown: (fn: () => unknown) => void }

const connect = async (t: Teardown, url = testConfig().REDIS_URL) => {
  const config = testConfig()
  const redis = createRedis({ url, commandTimeoutMs: config.REDIS_COMMAND_TIMEOUT_MS })
  t.teardown(() => redis.disconnect())
  if (redis.status !== 'ready') await new Promise((resolve) => redis.once('ready', resolve))
  if (!('stream' in redis)) throw new Error('not a single Redis')
  return redis
}

t.test('commands issued in one turn of the event loop leave in one write, and each gets its own answer', async (t) => {
  const redis = await connect(t)
  const key = `coalesce-test:${randomUUID()}`
  await redis.set(key, 'v', 'EX', 60)
  const writes = countSocketWrites(redis.stream as Socket)
  const answers = await Promise.all(Array.from({ length: 50 }, (_, i) => i % 2 === 0 ? redis.get(key) : redis.incr(`${key}:n`)))
  t.equal(writes.count(), 1, '50 commands, one write')
  t.same(answers.filter((_, i) => i % 2 === 0), Array(25).fill('v'))
  t.same(answers.filter((_, i) => i % 2 === 1), Array.from({ length: 25 }, (_, i) => i + 1), 'in order, each its own reply')
  await redis.del(key, `${key}:n`)
})

t.test('commands of different turns are not held back for each other', async (t) => {
  const redis = await connect(t)
  const writes = countSocketWrites(redis.stream as Socket)
  for (let i = 0; i < 5; i++) t.equal(await redis.ping(), 'PONG')
  t.equal(writes.count(), 5, 'one write per awaited command')
})

/**
 * A redis-server of this test's own, on a free port, with nothing kept on disk: CLIENT PAUSE stops a whole server,
 * and pausing the suite's shared one would time out every other test's commands meanwhile (the rate limiter then
 * fails open and admits what it should refuse).
 */
async function privateRedis (t: Teardown): Promise<string> {
  // The stack's own lookup: the suite's stack has just started one from it.
  const binary = serviceBin('redis-server') ?? 'redis-server'
  const port = await freePort()
  const child = spawn(binary, ['--bind', '127.0.0.1', '--port', String(port), '--save', '', '--appendonly', 'no', '--unixsocket', ''], { stdio: 'ignore' })
  t.teardown(() => { child.kill('SIGKILL') })
  const exited = new Promise<never>((_resolve, reject) => child.once('exit', (code) => reject(new Error(`redis-server exited (${code})`))))
  const ready = (async () => {
    const probe = createRedis({ url: `redis://127.0.0.1:${port}`, commandTimeoutMs: 1000 })
    try {
      for (const deadline = Date.now() + 10_000; Date.now() < deadline; await new Promise((resolve) => setTimeout(resolve, 50))) {
        if (await probe.ping().catch(() => undefined) === 'PONG') return `redis://127.0.0.1:${port}`
      }
      throw new Error('redis-server did not answer within 10 s')
    } finally {
      probe.disconnect()
    }
  })()
  return await Promise.race([ready, exited])
}

t.test('a hung Redis costs each command one timeout, not a queue of them', async (t) => {
  const url = await privateRedis(t)
  const redis = await connect(t, url)
  const pauser = await connect(t, url)
  const timeoutMs = testConfig().REDIS_COMMAND_TIMEOUT_MS
  // Paused for every client (this one too) until it lifts by itself: nothing can unpause it in between.
  const pauseMs = timeoutMs * 3
  await pauser.call('CLIENT', 'PAUSE', String(pauseMs), 'ALL')
  const started = performance.now()
  // Three waves, each in a turn of its own, while Redis answers nothing.
  const waves = await Promise.all([0, 50, 100].map(async (delay) => {
    await new Promise((resolve) => setTimeout(resolve, delay))
    const sent = performance.now()
    const outcome = await redis.get('coalesce-test:paused').then(() => 'answered', (error: Error) => error.message)
    return { outcome, waitedMs: performance.now() - sent }
  }))
  for (const wave of waves) {
    t.match(wave.outcome, /timed out/i)
    t.ok(wave.waitedMs < timeoutMs * 1.5, `failed after ${wave.waitedMs.toFixed(0)} ms (timeout ${timeoutMs} ms)`)
  }
  t.ok(performance.now() - started < timeoutMs * 2, 'the waves timed out side by side')
  await new Promise((resolve) => setTimeout(resolve, pauseMs - (performance.now() - started) + 50))
  t.equal(await redis.ping(), 'PONG', 'answers again once the pause lifts')
})
