// `node bench/webhooks.ts [--transfers N]`: what webhooks cost, on the local stack's database (migrated first).
//   1. POST /transactions (transfers, through the whole app with app.inject, 16 at a time) without and with a
//      webhook endpoint registered for the sender: requests/s and the process's CPU per request. The outbox write
//      inside post_transaction() is the only cost added to the request path.
//   2. Delivery throughput of one in-process worker (app.jobs.runDue()) against a local receiver: events/s.
// A quick measurement beside bench/run.ts's load scenarios (not yet one of them): in-process, no HTTP listener for
// the API, so it isolates the request's own work from the network stack.
import { randomUUID } from 'node:crypto'
import postgres from 'postgres'
import { buildApp } from '../app.ts'
import { loadConfig } from '../settings.ts'
import { createServiceClient } from '../routes/identity/clients.ts'
import { localStackUp } from '../scripts/local-stack.ts'
import { migrate } from '../scripts/migrate.ts'
import { startReceiver } from '../test/webhook-receiver.ts'

const transfersAt = process.argv.indexOf('--transfers')
const count = transfersAt === -1 ? 3000 : Number(process.argv[transfersAt + 1])
if (!process.env.DATABASE_URL || !process.env.REDIS_URL) Object.assign(process.env, localStackUp())
await migrate(process.env.DATABASE_DIRECT_URL || process.env.DATABASE_URL || '')
const config = loadConfig({
  ...process.env,
  LOG_LEVEL: 'warn',
  WORKER_ENABLED: 'false',
  WEBHOOK_ALLOW_PRIVATE_TARGETS: 'true',
  WEBHOOK_ENDPOINT_CONCURRENCY: '16',
  WORKER_WEBHOOK_CONCURRENCY: '16',
  RATE_LIMIT_STANDARD_CAPACITY: '10000000',
  RATE_LIMIT_SERVICE_CAPACITY: '10000000',
  RATE_LIMIT_PUBLIC_CAPACITY: '10000000',
  PRESSURE_MAX_EVENT_LOOP_DELAY_MS: '0'
})
const app = await buildApp(config)
const owner = postgres(process.env.DATABASE_DIRECT_URL || process.env.DATABASE_URL || '', { max: 1, onnotice: () => {} })

async function user () {
  const email = `bench-${randomUUID()}@example.test`
  const password = 'correct horse battery staple'
  await app.inject({ method: 'POST', url: '/users', payload: { email, name: 'Bench', password } })
  const login = await app.inject({ method: 'POST', url: '/auth/token', payload: { email, password } })
  const me = await app.inject({ method: 'GET', url: '/users/me', headers: { authorization: `Bearer ${login.json().access_token}` } })
  return { id: me.json().id as string, authorization: `Bearer ${login.json().access_token as string}` }
}

const { client, secret } = await createServiceClient(owner, 'bench webhooks', ['funds:write'])
const token = (await app.inject({ method: 'POST', url: '/auth/token', payload: { grant_type: 'client_credentials', client_id: client.id, client_secret: secret } })).json().access_token as string

async function transfers (from: { id: string, authorization: string }, to: { id: string }) {
  const funded = await app.inject({ method: 'POST', url: '/transactions', headers: { authorization: `Bearer ${token}`, 'idempotency-key': randomUUID() }, payload: { kind: 'deposit', userId: from.id, amount: count * 10, currency: 'USD', reference: randomUUID() } })
  if (funded.statusCode !== 201) throw new Error(funded.body)
  let next = 0
  const cpu = process.cpuUsage()
  const started = performance.now()
  await Promise.all(Array.from({ length: 16 }, async () => {
    while (next < count) {
      next++
      const response = await app.inject({ method: 'POST', url: '/transactions', headers: { authorization: from.authorization, 'idempotency-key': randomUUID() }, payload: { kind: 'transfer', toUserId: to.id, amount: 1, currency: 'USD' } })
      if (response.statusCode !== 201) throw new Error(response.body)
    }
  }))
  const seconds = (performance.now() - started) / 1000
  const used = process.cpuUsage(cpu)
  return { perSecond: Math.round(count / seconds), cpuMsPerRequest: Number(((used.user + used.system) / 1000 / count).toFixed(3)) }
}

const receiver = await startReceiver()
const [a, b, c, d] = [await user(), await user(), await user(), await user()]
await transfers(a, b) // warm-up
const without = await transfers(a, b)
const registered = await app.inject({ method: 'POST', url: '/webhook-endpoints', headers: { authorization: c.authorization }, payload: { url: receiver.url } })
if (registered.statusCode !== 201) throw new Error(registered.body)
const withEndpoint = await transfers(c, d)

// Everything else due is delivered first, so the measured run starts from an empty queue of this endpoint's events.
const started = performance.now()
let delivered = 0
while (receiver.unique.size < count + 1) {
  delivered += await app.jobs.runDue()
  if (performance.now() - started > 300_000) break
}
const seconds = (performance.now() - started) / 1000

console.log(JSON.stringify({
  transfers: count,
  postTransactionsWithoutEndpoint: without,
  postTransactionsWithEndpoint: withEndpoint,
  delivery: { events: receiver.unique.size, attempts: delivered, seconds: Number(seconds.toFixed(2)), eventsPerSecond: Math.round(receiver.unique.size / seconds) }
}, null, 2))
await owner`delete from webhook_endpoints where id = ${registered.json().id as string}`
await receiver.close()
await app.close()
await owner.end()
