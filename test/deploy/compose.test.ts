// compose.yaml's security settings (issue 17): no secret with a default, only the public port published (health and
// metrics on the operations port, on the compose network only), Redis behind a password.
import { readFileSync } from 'node:fs'
import t from 'tap'
import { parse } from 'yaml'

interface Service { environment?: Record<string, string>, ports?: string[], command?: string[], healthcheck?: { test: string[] } }
const compose = parse(readFileSync(new URL('../../compose.yaml', import.meta.url), 'utf8')) as { services: Record<string, Service> }
const api = compose.services.api as Service
const env = api.environment ?? {}

t.test('JWT_SECRET has no default: compose refuses to start without it', async (t) => {
  t.match(env.JWT_SECRET, /^\$\{JWT_SECRET:\?[^}]+\}$/)
})

t.test('only the public port is published; health and metrics are on the compose network', async (t) => {
  t.equal(env.NODE_ENV, 'production', 'production rules: /metrics on the public port needs a token or is absent')
  t.ok(Number(env.OPS_PORT) > 0, 'the operations listener is on')
  t.same(api.ports, [`${env.PORT ?? 3000}:3000`], 'the public port alone')
  for (const [name, service] of Object.entries(compose.services)) {
    if (name !== 'api') t.same(service.ports ?? [], [], `${name} publishes nothing`)
  }
  t.match(api.healthcheck?.test.join(' '), new RegExp(`127\\.0\\.0\\.1:${env.OPS_PORT}/health/ready`), 'the healthcheck uses the ops port')
})

t.test('Redis requires a password and the API sends it', async (t) => {
  const redis = compose.services.redis as Service
  t.ok(redis.command?.includes('--requirepass'), 'requirepass')
  const password = redis.command?.[(redis.command?.indexOf('--requirepass') ?? -2) + 1]
  t.match(env.REDIS_URL, `:${password}@redis:6379`, 'REDIS_URL carries the same password')
})
