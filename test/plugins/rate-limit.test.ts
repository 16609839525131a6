import { randomUUID } from 'node:crypto'
import t from 'tap'
import { buildTestApp, createClient, createUser } from '../helper.ts'
import { clientAddressKey, createTokenBucket } from '../../plugins/rate-limit/index.ts'
import type { App } from '../../app.ts'

// A short tier: the standard shape (bucket 60) with a refill fast enough that waiting for a token takes 1 s.
const shortTiers = {
  RATE_LIMIT_STANDARD_CAPACITY: '60',
  RATE_LIMIT_STANDARD_REFILL_PER_S: '1',
  RATE_LIMIT_PRO_CAPACITY: '600',
  RATE_LIMIT_PRO_REFILL_PER_S: '10'
}

const get = (app: App, authorization: string) => app.inject({ method: 'GET', url: '/balances', headers: { authorization } })

async function burst (app: App, authorization: string, count: number) {
  const responses = await Promise.all(Array.from({ length: count }, () => get(app, authorization)))
  return { ok: responses.filter((r) => r.statusCode === 200).length, limited: responses.filter((r) => r.statusCode === 429), responses }
}

t.test('the token bucket alone: capacity, refusal, refill from the Redis clock', async (t) => {
  const app = await buildTestApp(t)
  await app.ready()
  const bucket = createTokenBucket(app.redis, 'rl-test:')
  const key = randomUUID()
  const results = []
  for (let i = 0; i < 6; i++) results.push(await bucket.take(key, 5, 10))
  t.same(results.map((r) => r.allowed), [true, true, true, true, true, false])
  t.same(results.slice(0, 5).map((r) => r.remaining), [4, 3, 2, 1, 0])
  t.ok(results[5]!.resetMs > 0 && results[5]!.resetMs <= 100, 'a refused take says when one token is back')
  await new Promise((resolve) => setTimeout(resolve, 150))
  t.equal((await bucket.take(key, 5, 10)).allowed, true, 'one token refilled after 100 ms')
  const ttl = await app.redis.pttl(`rl-test:${key}`)
  t.ok(ttl > 0 && ttl <= 1600, `an idle bucket expires (${ttl} ms)`)
  t.equal((await bucket.take(randomUUID(), 5, 10, 6)).allowed, false, 'a cost above capacity never passes')
})

t.test('a standard user gets exactly 60 in a burst, then 429 with Retry-After, then one more after waiting', async (t) => {
  const app = await buildTestApp(t, shortTiers)
  const user = await createUser(app)
  const { ok, limited } = await burst(app, user.authorization, 61)
  t.equal(ok, 60)
  t.equal(limited.length, 1)
  const refused = limited[0]!
  t.match(refused.headers['content-type'], /problem\+json/)
  t.equal(refused.json().type, 'https://ledger-api.dev/problems/rate_limited')
  t.equal(refused.headers['retry-after'], '1')
  t.equal(refused.headers['ratelimit-limit'], '60')
  t.equal(refused.headers['ratelimit-remaining'], '0')
  t.equal(refused.headers['ratelimit-reset'], '1')
  await new Promise((resolve) => setTimeout(resolve, 1000 * Number(refused.headers['retry-after'])))
  t.equal((await get(app, user.authorization)).statusCode, 200, 'after Retry-After seconds one more passes')
  t.equal((await get(app, user.authorization)).statusCode, 429, 'and only one')
})

t.test('every limited response carries the RateLimit headers', async (t) => {
  const app = await buildTestApp(t, shortTiers)
  const user = await createUser(app)
  const first = await get(app, user.authorization)
  t.equal(first.statusCode, 200)
  t.equal(first.headers['ratelimit-limit'], '60')
  t.equal(first.headers['ratelimit-remaining'], '59')
  t.ok(Number(first.headers['ratelimit-reset']) >= 1)
  const health = await app.inject({ method: 'GET', url: '/health/live' })
  t.equal(health.headers['ratelimit-limit'], undefined, 'health is not limited')
  const docs = await app.inject({ method: 'GET', url: '/openapi.json' })
  t.equal(docs.headers['ratelimit-limit'], undefined, 'the OpenAPI document is not limited')
})

t.test('pro is 10x standard; two users never share a bucket', async (t) => {
  // Capacity, not speed: at 10 tokens a second, a burst of 605 that takes half a second to serve (a busy machine,
  // every response checked against the OpenAPI document) earns the 5 extra tokens it is meant to be refused.
  const app = await buildTestApp(t, { ...shortTiers, RATE_LIMIT_PRO_REFILL_PER_S: '0.01' })
  const pro = await createUser(app, { tier: 'pro' })
  const other = await createUser(app)
  const proBurst = await burst(app, pro.authorization, 605)
  t.equal(proBurst.ok, 600)
  t.equal(proBurst.limited.length, 5)
  t.equal((await get(app, other.authorization)).statusCode, 200, 'another user is unaffected')
})

t.test('200 concurrent requests from one user admit exactly the capacity', async (t) => {
  const app = await buildTestApp(t, shortTiers)
  const user = await createUser(app)
  const { ok, limited } = await burst(app, user.authorization, 200)
  t.equal(ok, 60)
  t.equal(limited.length, 140)
  t.equal((await app.metrics.rateLimitDecisions.get()).values.find((v) => v.labels.decision === 'rejected' && v.labels.tier === 'standard')?.value, 140)
})

t.test('service clients have a tier of their own, keyed by client id', async (t) => {
  const app = await buildTestApp(t, { RATE_LIMIT_SERVICE_CAPACITY: '30', RATE_LIMIT_SERVICE_REFILL_PER_S: '0.5' })
  const client = await createClient(app)
  const other = await createClient(app)
  const user = await createUser(app)
  const list = (authorization: string) => app.inject({ method: 'GET', url: '/transactions', headers: { authorization } })
  const responses = await Promise.all(Array.from({ length: 35 }, () => list(client.authorization)))
  t.equal(responses.filter((r) => r.statusCode === 200).length, 30, 'exactly the service capacity')
  const refused = responses.find((r) => r.statusCode === 429)!
  t.equal(refused.headers['ratelimit-limit'], '30')
  t.ok(Number(refused.headers['retry-after']) >= 1)
  t.equal((await list(other.authorization)).statusCode, 200, 'another client has its own bucket')
  t.equal((await list(user.authorization)).headers['ratelimit-limit'], '100000', 'users keep their tier')
  t.equal((await app.metrics.rateLimitDecisions.get()).values.find((v) => v.labels.decision === 'rejected' && v.labels.tier === 'service')?.value, 5)
})

t.test('two app instances sharing Redis share one bucket', async (t) => {
  const one = await buildTestApp(t, shortTiers)
  const two = await buildTestApp(t, shortTiers)
  const user = await createUser(one)
  const [a, b] = await Promise.all([burst(one, user.authorization, 50), burst(two, user.authorization, 50)])
  t.equal(a.ok + b.ok, 60, `${a.ok} + ${b.ok} admitted in all`)
})

t.test('login and signup are limited per client IP', async (t) => {
  const app = await buildTestApp(t, { RATE_LIMIT_PUBLIC_CAPACITY: '5', RATE_LIMIT_PUBLIC_REFILL_PER_S: '0.1' })
  // Buckets live in the shared Redis: addresses of this test's own keep other test files' signups out of them.
  const user = await createUser(app, { remoteAddress: '198.51.100.254' })
  const attacker = '198.51.100.7'
  const statuses = []
  for (let i = 0; i < 7; i++) {
    const response = await app.inject({ method: 'POST', url: '/auth/token', remoteAddress: attacker, payload: { email: user.email, password: `guess-${i}-guess-guess` } })
    statuses.push(response.statusCode)
  }
  t.same(statuses, [401, 401, 401, 401, 401, 429, 429])
  const elsewhere = await app.inject({ method: 'POST', url: '/auth/token', remoteAddress: '203.0.113.9', payload: { email: user.email, password: user.password } })
  t.equal(elsewhere.statusCode, 200, 'another IP can still log in')
  const signup = await app.inject({ method: 'POST', url: '/users', remoteAddress: attacker, payload: { email: `x${Date.now()}@example.test`, name: 'x', password: 'long enough password' } })
  t.equal(signup.statusCode, 201, 'signup has its own bucket')
})

t.test('X-Forwarded-For is ignored unless the proxy is trusted', async (t) => {
  const untrusting = await buildTestApp(t, { RATE_LIMIT_PUBLIC_CAPACITY: '2', RATE_LIMIT_PUBLIC_REFILL_PER_S: '0.1' })
  const socket = '192.0.2.10'
  const statuses = []
  for (let i = 0; i < 3; i++) {
    const response = await untrusting.inject({ method: 'POST', url: '/auth/token', remoteAddress: socket, headers: { 'x-forwarded-for': `10.0.0.${i}` }, payload: { email: 'nobody@example.test', password: 'whatever-whatever' } })
    statuses.push(response.statusCode)
  }
  t.same(statuses, [401, 401, 429], 'a spoofed header does not buy a fresh bucket')
})

t.test('unknown routes are limited too', async (t) => {
  const app = await buildTestApp(t, { RATE_LIMIT_PUBLIC_CAPACITY: '3', RATE_LIMIT_PUBLIC_REFILL_PER_S: '0.1' })
  const address = '192.0.2.20'
  const statuses = []
  for (let i = 0; i < 4; i++) statuses.push((await app.inject({ method: 'GET', url: `/probe/${i}`, remoteAddress: address })).statusCode)
  t.same(statuses, [404, 404, 404, 429])
})

t.test('client addresses are keyed per IPv4 address and per IPv6 /64', async (t) => {
  t.equal(clientAddressKey('203.0.113.9'), '203.0.113.9')
  t.equal(clientAddressKey('::ffff:203.0.113.9'), '203.0.113.9', 'IPv4-mapped is the IPv4 address')
  const network = '2001:0db8:0001:0002::/64'
  for (const address of ['2001:db8:1:2::1', '2001:DB8:1:2:ffff:ffff:ffff:ffff', '2001:db8:1:2:0:0:0:9', '2001:0db8:0001:0002::abcd', 'fe80::1%eth0'.replace('fe80::1', '2001:db8:1:2::1')]) {
    t.equal(clientAddressKey(address), network, `${address} is in ${network}`)
  }
  t.not(clientAddressKey('2001:db8:1:3::1'), network, 'the next /64 is another client')
  t.equal(clientAddressKey('::1'), '0000:0000:0000:0000::/64')
  t.equal(clientAddressKey('2001:db8::'), '2001:0db8:0000:0000::/64')
})
