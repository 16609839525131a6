// `node bench/password-hash.ts [--rounds 10]`: what one password hash costs at each scrypt cost, the numbers
// behind PASSWORD_HASH_COST, PASSWORD_HASH_CONCURRENCY and PASSWORD_HASH_QUEUE (README, Security). For each cost:
// the latency of one verify (the work of a login) alone and with the default two at a time, the memory scrypt asks
// for (128·r·(N+2) + 128·r·p bytes) and the process's peak RSS growth while hashing. No stack is needed.
import { parseArgs } from 'node:util'
import { BLOCK_SIZE, createHashQueue, hashPassword, scryptMemoryBytes, verifyPassword } from '../plugins/passwords/scrypt.ts'

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '10' } } })
const rounds = Math.max(1, Number(values.rounds))
const MiB = 1024 * 1024
const percentile = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)] ?? 0

async function measure (cost: number, concurrency: number) {
  const stored = await hashPassword('correct horse battery staple', cost)
  const queue = createHashQueue({ concurrency, queue: rounds, busy: () => new Error('queue full') })
  const rssBefore = process.memoryUsage.rss()
  let peak = rssBefore
  const sampler = setInterval(() => { peak = Math.max(peak, process.memoryUsage.rss()) }, 5)
  const latencies: number[] = []
  const started = performance.now()
  await Promise.all(Array.from({ length: rounds }, () => queue.run(async () => {
    const at = performance.now()
    if (!await verifyPassword('correct horse battery staple', stored)) throw new Error('verify failed')
    latencies.push(performance.now() - at)
  })))
  const elapsed = performance.now() - started
  clearInterval(sampler)
  latencies.sort((a, b) => a - b)
  return {
    cost,
    concurrency,
    p50: percentile(latencies, 0.5),
    p99: percentile(latencies, 0.99),
    perSecond: rounds / (elapsed / 1000),
    scryptMiB: scryptMemoryBytes(cost, BLOCK_SIZE, 1) / MiB,
    rssGrowthMiB: (peak - rssBefore) / MiB
  }
}

console.log(`${rounds} verifies per row, r = ${BLOCK_SIZE}, p = 1, UV_THREADPOOL_SIZE = ${process.env.UV_THREADPOOL_SIZE ?? '4 (default)'}`)
console.log('| N | at once | p50 ms | p99 ms | verifies/s | scrypt memory per hash | peak RSS growth |')
console.log('|---|---|---|---|---|---|---|')
for (const cost of [1 << 14, 1 << 15, 1 << 16, 1 << 17]) {
  for (const concurrency of [1, 2]) {
    const r = await measure(cost, concurrency)
    console.log(`| 2^${Math.log2(r.cost)} | ${r.concurrency} | ${r.p50.toFixed(0)} | ${r.p99.toFixed(0)} | ${r.perSecond.toFixed(1)} | ${r.scryptMiB.toFixed(0)} MiB | ${r.rssGrowthMiB.toFixed(0)} MiB |`)
  }
}
