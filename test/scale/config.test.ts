// The scale-out settings: workers, the per-worker pool that follows from them, Redis Cluster and the replica.
import { randomBytes } from 'node:crypto'
import { availableParallelism } from 'node:os'
import t from 'tap'
import { ConfigError, defaultPoolMax } from '../../config.ts'
import { loadConfig } from '../../settings.ts'

const base = { DATABASE_URL: 'postgres://u@127.0.0.1:1/db', REDIS_URL: 'redis://127.0.0.1:1', JWT_SECRET: randomBytes(32).toString('base64url') }

t.test('one worker, a pool of 10, no cluster and no replica unless asked', async (t) => {
  const config = loadConfig(base)
  t.equal(config.WORKERS, 1)
  t.equal(config.DATABASE_POOL_MAX, 10)
  t.equal(config.REDIS_CLUSTER_NODES, undefined)
  t.equal(config.DATABASE_REPLICA_URL, undefined)
  t.equal(config.OPS_PORT, 0, 'no operations listener')
  t.equal(loadConfig({ ...base, METRICS_PORT: '9100' }).OPS_PORT, 9100, 'METRICS_PORT, its former name, still opens it')
  t.equal(loadConfig({ ...base, METRICS_PORT: '9100', OPS_PORT: '9200' }).OPS_PORT, 9200, 'OPS_PORT wins')
  t.equal(config.READ_YOUR_WRITES_S, 5)
})

t.test('WORKERS=auto is one per core; several workers share PgBouncer\'s 20 server connections', async (t) => {
  t.equal(loadConfig({ ...base, WORKERS: 'auto' }).WORKERS, availableParallelism())
  for (const [workers, pool] of [[2, 10], [3, 6], [4, 5], [8, 2], [32, 2]] as const) {
    const config = loadConfig({ ...base, WORKERS: String(workers) })
    t.equal(config.DATABASE_POOL_MAX, pool, `${workers} workers: ${pool} connections each`)
    t.equal(defaultPoolMax(workers), pool)
  }
  t.equal(loadConfig({ ...base, WORKERS: '4', DATABASE_POOL_MAX: '7' }).DATABASE_POOL_MAX, 7, 'an explicit pool size wins')
})

t.test('bad scale-out values stop boot naming the variable', async (t) => {
  for (const [name, value] of [['WORKERS', '0'], ['WORKERS', 'many'], ['WORKERS', '1.5'], ['REDIS_CLUSTER_NODES', 'no-port'],
    ['DATABASE_REPLICA_URL', 'http://replica'], ['READ_YOUR_WRITES_S', '0'], ['METRICS_PORT', '70000'], ['OPS_PORT', '70000'], ['OPS_PORT', 'ops']] as const) {
    let error: unknown
    try {
      loadConfig({ ...base, [name]: value })
    } catch (caught) {
      error = caught
    }
    t.ok(error instanceof ConfigError && error.message.includes(name), `${name}=${value} is refused, naming the variable`)
  }
})

t.test('REDIS_CLUSTER_NODES is a list of host:port, and stands in for REDIS_URL', async (t) => {
  const config = loadConfig({ DATABASE_URL: base.DATABASE_URL, JWT_SECRET: base.JWT_SECRET, REDIS_CLUSTER_NODES: '10.0.0.1:7000, redis-1.internal:7001' })
  t.same(config.REDIS_CLUSTER_NODES, ['10.0.0.1:7000', 'redis-1.internal:7001'])
  t.equal(config.REDIS_URL, 'redis://10.0.0.1:7000')
  t.equal(loadConfig({ ...base, REDIS_URL: 'rediss://user:pw@cache:6380', REDIS_CLUSTER_NODES: '10.0.0.1:7000' }).REDIS_URL, 'rediss://user:pw@cache:6380', 'credentials and TLS come from REDIS_URL when set')
  t.throws(() => loadConfig({ DATABASE_URL: base.DATABASE_URL }), /REDIS_URL/, 'without either, REDIS_URL is named')
})
