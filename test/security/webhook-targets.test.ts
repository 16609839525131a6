// SSRF: a webhook target must be https and reach only public addresses, checked by syntax, at
// registration (every resolved address) and at connect time (the address actually dialled). Names resolve through
// the tests' own DNS server on loopback (test/dns-server.ts), which also stands in for a hostile one: a name that
// answers a public address, then a private one (DNS rebinding), a black hole, a failing server. No database: the
// receivers are real sockets on loopback.
import { scrypt } from 'node:crypto'
import net, { type AddressInfo } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import {
  checkTarget,
  closeWebhookAgents,
  HOST_NOT_PUBLIC,
  isPublicAddress,
  parseTargetUrl,
  postWebhook,
  type TargetPolicy
} from '../../routes/webhooks/outbound.ts'
import { createHostResolver } from '../../routes/webhooks/resolver.ts'
import { startDnsServer } from '../dns-server.ts'

// Public addresses that are only ever answered, never dialled: registration resolves without connecting, and every
// connection below is refused before it is made.
const PUBLIC_V4 = '93.184.215.14'
const PUBLIC_V6 = '2606:2800:21f:cb07:6820:80da:af6b:8b2c'

const dns = await startDnsServer({
  'public.test': { a: [PUBLIC_V4], aaaa: [PUBLIC_V6] },
  'public-v4-only.test': { a: [PUBLIC_V4] },
  'internal.test': { a: ['10.0.0.5'] },
  'loopback6.test': { aaaa: ['::1'] },
  'metadata.test': { a: ['169.254.169.254'] },
  'mixed.test': { a: [PUBLIC_V4, '192.168.1.10'] },
  'mixed-families.test': { a: [PUBLIC_V4], aaaa: ['fd00::1'] },
  'no-addresses.test': {},
  'servfail.test': 'servfail',
  'slow.test': 'drop',
  // Public at registration, loopback at delivery.
  'rebind.test': (query) => (query.seen === 0 ? { a: [PUBLIC_V4] } : { a: ['127.0.0.1'] })
})
t.teardown(dns.close)

const resolver = createHostResolver({ servers: [dns.server], timeoutMs: 1000 })
const STRICT: TargetPolicy = { allowPrivate: false, resolver }
const DEV: TargetPolicy = { allowPrivate: true, resolver }

t.teardown(closeWebhookAgents)

// Every spelling of a non-public host the issue lists, as a user would type it into the URL.
const REFUSED_URLS: Array<[string, string]> = [
  ['https://127.0.0.1/', 'loopback'],
  ['https://127.255.255.254/', 'loopback, top of 127/8'],
  ['https://2130706433/', 'loopback, decimal'],
  ['https://0177.0.0.1/', 'loopback, octal'],
  ['https://0x7f.1/', 'loopback, hex short form'],
  ['https://0x7f000001/', 'loopback, hex'],
  ['https://127.1/', 'loopback, short form'],
  ['https://017700000001/', 'loopback, octal whole'],
  ['https://%31%32%37.0.0.1/', 'loopback, percent-encoded'],
  ['https://１２７.0.0.1/', 'loopback, full-width digits'],
  ['https://127.0.0.1./', 'loopback, trailing dot'],
  ['https://0.0.0.0/', 'this network'],
  ['https://0/', 'this network, short form'],
  ['https://0.1.2.3/', 'this network, 0/8'],
  ['https://10.0.0.1/', 'RFC 1918 10/8'],
  ['https://172.16.0.1/', 'RFC 1918 172.16/12'],
  ['https://172.31.255.255/', 'RFC 1918 172.16/12, top'],
  ['https://192.168.1.1/', 'RFC 1918 192.168/16'],
  ['https://3232235777/', 'RFC 1918, decimal'],
  ['https://100.64.0.1/', 'CGNAT'],
  ['https://100.100.100.200/', 'CGNAT (a cloud metadata address)'],
  ['https://169.254.169.254/', 'link-local (cloud metadata)'],
  ['https://0xa9.0xfe.0xa9.0xfe/', 'link-local, hex octets'],
  ['https://192.0.0.8/', 'IETF protocol assignments'],
  ['https://192.0.2.1/', 'TEST-NET-1'],
  ['https://198.51.100.1/', 'TEST-NET-2'],
  ['https://203.0.113.1/', 'TEST-NET-3'],
  ['https://198.18.0.1/', 'benchmarking'],
  ['https://192.88.99.1/', '6to4 relay anycast'],
  ['https://224.0.0.1/', 'multicast'],
  ['https://239.255.255.250/', 'multicast (SSDP)'],
  ['https://240.0.0.1/', 'reserved'],
  ['https://255.255.255.255/', 'broadcast'],
  ['https://[::1]/', 'IPv6 loopback'],
  ['https://[0:0:0:0:0:0:0:1]/', 'IPv6 loopback, long form'],
  ['https://[::]/', 'IPv6 unspecified'],
  ['https://[::ffff:127.0.0.1]/', 'IPv4-mapped loopback'],
  ['https://[::ffff:7f00:1]/', 'IPv4-mapped loopback, hex'],
  ['https://[0:0:0:0:0:ffff:127.0.0.1]/', 'IPv4-mapped loopback, long form'],
  ['https://[::ffff:10.0.0.1]/', 'IPv4-mapped private'],
  ['https://[::ffff:169.254.169.254]/', 'IPv4-mapped metadata'],
  ['https://[::ffff:8.8.8.8]/', 'IPv4-mapped public (never a real AAAA answer)'],
  ['https://[::127.0.0.1]/', 'IPv4-compatible loopback'],
  ['https://[::7f00:1]/', 'IPv4-compatible loopback, hex'],
  ['https://[64:ff9b::127.0.0.1]/', 'NAT64 embedding loopback'],
  ['https://[64:ff9b::a00:1]/', 'NAT64 embedding 10.0.0.1'],
  ['https://[64:ff9b::169.254.169.254]/', 'NAT64 embedding metadata'],
  ['https://[64:ff9b:1::8.8.8.8]/', 'local-use NAT64'],
  ['https://[fe80::1]/', 'link-local'],
  ['https://[febf:ffff::1]/', 'link-local, top of fe80::/10'],
  ['https://[fc00::1]/', 'unique-local fc00::/7'],
  ['https://[fd00:ec2::254]/', 'unique-local (a cloud metadata address)'],
  ['https://[fec0::1]/', 'site-local (deprecated)'],
  ['https://[ff02::1]/', 'multicast'],
  ['https://[100::1]/', 'discard-only'],
  ['https://[2001:db8::1]/', 'documentation'],
  ['https://[3fff::1]/', 'documentation (RFC 9637)'],
  ['https://[2002:7f00:1::1]/', '6to4 embedding loopback'],
  ['https://[2002:808:808::1]/', '6to4 (refused whole)'],
  ['https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/', 'Teredo'],
  ['https://[2001:2::1]/', 'benchmarking'],
  ['https://[5f00::1]/', 'SRv6 SIDs']
]

const PUBLIC_URLS = [
  'https://8.8.8.8/',
  'https://1.1.1.1:8443/hooks?x=1',
  'https://134744072/', // 8.8.8.8 in decimal: the form is not the problem, the address is
  'https://172.32.0.1/', // just above 172.16/12
  'https://100.128.0.1/', // just above 100.64/10
  'https://192.169.0.1/',
  'https://[2606:4700:4700::1111]/',
  'https://[2a00:1450:4001::200e]/',
  'https://[64:ff9b::8.8.8.8]/', // NAT64 of a public address: what a DNS64 network answers
  'https://hooks.example.com/ledger', // a name: syntax allows it, DNS decides
  'https://hooks.example.com:9443/a/b?c=d'
]

t.test('the URL parser normalizes every IPv4 spelling to dotted form (the SSRF check relies on it)', async t => {
  for (const raw of ['https://2130706433/', 'https://0177.0.0.1/', 'https://0x7f.1/', 'https://127.1/', 'https://%31%32%37.0.0.1/']) {
    t.equal(new URL(raw).hostname, '127.0.0.1', raw)
  }
  t.equal(new URL('https://[::ffff:127.0.0.1]/').hostname, '[::ffff:7f00:1]')
  t.equal(new URL('https://[64:ff9b::10.0.0.1]/').hostname, '[64:ff9b::a00:1]')
})

t.test('parseTargetUrl refuses every non-public IP literal, whatever its spelling', async t => {
  for (const [raw, what] of REFUSED_URLS) {
    const check = parseTargetUrl(raw, STRICT)
    t.equal(check.ok, false, `${what}: ${raw}`)
    if (!check.ok) t.match(check.reason, /private, loopback, link-local or reserved/, `${what}: reason`)
  }
})

t.test('parseTargetUrl accepts public literals and names, keeping the URL', async t => {
  for (const raw of PUBLIC_URLS) {
    const check = parseTargetUrl(raw, STRICT)
    t.ok(check.ok, raw)
    if (check.ok) t.equal(check.url.href, new URL(raw).href)
  }
})

t.test('allowPrivate lets private literals and http through, nothing else', async t => {
  for (const [raw] of REFUSED_URLS) t.ok(parseTargetUrl(raw, DEV).ok, raw)
  t.ok(parseTargetUrl('http://127.0.0.1:3000/hook', DEV).ok)
  t.ok(parseTargetUrl('http://localhost:3000/hook', DEV).ok)
  t.notOk(parseTargetUrl('ftp://127.0.0.1/', DEV).ok)
  t.notOk(parseTargetUrl('http://user:pw@127.0.0.1/', DEV).ok)
})

t.test('parseTargetUrl refuses http, other schemes, credentials, fragments and non-URLs', async t => {
  const cases: Array<[string, RegExp]> = [
    ['http://hooks.example.com/', /must use https/],
    ['http://8.8.8.8/', /must use https/],
    ['HTTP://hooks.example.com/', /must use https/],
    ['ftp://hooks.example.com/', /must use https/],
    ['file:///etc/passwd', /must use https/],
    ['gopher://hooks.example.com:70/', /must use https/],
    ['ws://hooks.example.com/', /must use https/],
    ['wss://hooks.example.com/', /must use https/],
    ['javascript:alert(1)', /must use https/],
    ['data:text/plain,hi', /must use https/],
    ['dict://hooks.example.com:11211/', /must use https/],
    ['https://user:secret@hooks.example.com/', /credentials/],
    ['https://user@hooks.example.com/', /credentials/],
    ['https://:secret@hooks.example.com/', /credentials/],
    ['https://hooks.example.com/#frag', /fragment/],
    ['https://hooks.example.com/#', /fragment/],
    ['/relative/path', /absolute URL/],
    ['hooks.example.com', /absolute URL/],
    ['', /absolute URL/],
    ['https://', /absolute URL/],
    ['https://[fe80::1%25eth0]/', /absolute URL/], // zone ids are not URL syntax
    ['https://999.1.1.1/', /absolute URL/],
    [`https://hooks.example.com/${'a'.repeat(2100)}`, /at most 2048/]
  ]
  for (const [raw, reason] of cases) {
    const check = parseTargetUrl(raw, STRICT)
    t.equal(check.ok, false, raw.slice(0, 60))
    if (!check.ok) t.match(check.reason, reason, raw.slice(0, 60))
  }
})

t.test('isPublicAddress over bare addresses, both families', async t => {
  const refused = [
    '127.0.0.1', '10.1.2.3', '172.20.0.1', '192.168.0.1', '100.64.0.0', '100.127.255.255', '169.254.1.1', '0.0.0.0',
    '224.0.0.251', '255.255.255.255', '192.0.2.55', '::1', '::', '::ffff:127.0.0.1', '::ffff:7f00:1', '::127.0.0.1',
    '64:ff9b::7f00:1', '64:ff9b::192.168.0.1', 'fe80::1', 'fe80::1%eth0', 'fc00::1', 'fdff::1', 'ff02::fb', '2001:db8::',
    '2002:a00:1::', '2001::1',
    // not addresses at all
    '', 'localhost', '[::1]', '127.1', '2130706433', '1.2.3', '::ffff:999.0.0.1', 'example.com'
  ]
  for (const address of refused) t.equal(isPublicAddress(address), false, `refused: ${JSON.stringify(address)}`)
  const allowed = ['8.8.8.8', '1.1.1.1', '93.184.216.34', '172.15.255.255', '100.63.255.255', '223.255.255.255',
    '2606:4700:4700::1111', '2a00:1450:4001:80b::200e', '2400:cb00::1', '64:ff9b::808:808', '64:ff9b::8.8.8.8']
  for (const address of allowed) t.equal(isPublicAddress(address), true, `public: ${address}`)
})

t.test('checkTarget resolves the host and refuses it if any address is not public', async t => {
  for (const [raw, what] of REFUSED_URLS.slice(0, 5)) t.equal((await checkTarget(raw, STRICT)).ok, false, what)
  // localhost is loopback (RFC 6761) without asking a DNS server, in any spelling.
  for (const host of ['localhost', 'localhost.', 'LocalHost', 'api.localhost']) {
    t.same(await checkTarget(`https://${host}:8443/hook`, STRICT), { ok: false, reason: HOST_NOT_PUBLIC }, host)
  }
  t.notOk(dns.queries.some((query) => query.name.includes('localhost')), 'no DNS query for localhost')
  // A name that cannot resolve is refused rather than assumed public.
  t.same(await checkTarget('https://no-such-host.invalid/', STRICT), { ok: false, reason: HOST_NOT_PUBLIC })
  t.ok(dns.queries.some((query) => query.name === 'no-such-host.invalid'), 'asked the loopback DNS server')
  // Public literals need no DNS.
  t.ok((await checkTarget('https://8.8.8.8/hook', STRICT)).ok)
  // Syntax failures come back before any DNS.
  t.same(await checkTarget('http://8.8.8.8/', STRICT), { ok: false, reason: 'must use https' })
  // Development: private targets pass without DNS.
  t.ok((await checkTarget('http://localhost:3000/hook', DEV)).ok)
  t.ok((await checkTarget('http://127.0.0.1:3000/hook', DEV)).ok)
})

/** A TCP listener that only counts connections: any byte of a webhook reaching it is a failed SSRF defence. */
async function tattletale (t: Test, host: string) {
  let connections = 0
  const server = net.createServer(socket => { connections++; socket.destroy() })
  await new Promise<void>(resolve => server.listen(0, host, resolve))
  t.teardown(() => new Promise(resolve => server.close(resolve)))
  return { port: (server.address() as AddressInfo).port, connections: () => connections }
}

const attempt = (url: string, policy: TargetPolicy) =>
  postWebhook({ url, headers: { 'content-type': 'application/json' }, body: '{}', timeoutMs: 3000, maxResponseBytes: 1024, policy })

t.test('postWebhook refuses at connect time a name that resolves to loopback (DNS rebinding), connecting nowhere', async t => {
  const v4 = await tattletale(t, '127.0.0.1')
  for (const url of [`https://localhost:${v4.port}/hook`, `https://LocalHost:${v4.port}/a?b=c`]) {
    const result = await attempt(url, STRICT)
    t.equal(result.outcome, 'failed', url)
    t.equal(result.statusCode, null)
    t.equal(result.error, 'refused_address', url)
    t.equal(result.responseBody, undefined)
  }
  t.equal(v4.connections(), 0, 'the loopback listener saw no connection')
})

t.test('postWebhook refuses non-public literals and http before connecting', async t => {
  const v4 = await tattletale(t, '127.0.0.1')
  const v6 = await tattletale(t, '::1')
  const refused: Array<[string, string]> = [
    [`https://127.0.0.1:${v4.port}/`, 'refused_address'],
    [`https://2130706433:${v4.port}/`, 'refused_address'],
    [`https://0x7f.1:${v4.port}/`, 'refused_address'],
    [`https://[::ffff:127.0.0.1]:${v4.port}/`, 'refused_address'],
    [`https://[::1]:${v6.port}/`, 'refused_address'],
    [`http://127.0.0.1:${v4.port}/`, 'invalid_url'],
    [`http://localhost:${v4.port}/`, 'invalid_url'],
    [`https://user:pw@localhost:${v4.port}/`, 'invalid_url']
  ]
  for (const [url, error] of refused) {
    const result = await attempt(url, STRICT)
    t.match(result, { outcome: 'failed', statusCode: null, error }, url)
  }
  t.equal(v4.connections(), 0, 'nothing reached the IPv4 loopback listener')
  t.equal(v6.connections(), 0, 'nothing reached the IPv6 loopback listener')
})

t.test('the same targets do connect under allowPrivate (the listeners above can fail the test)', async t => {
  const v4 = await tattletale(t, '127.0.0.1')
  const v6 = await tattletale(t, '::1')
  const viaName = await attempt(`http://localhost:${v4.port}/hook`, DEV)
  t.match(viaName, { outcome: 'failed', statusCode: null, error: 'reset' })
  const viaV6 = await attempt(`http://[::1]:${v6.port}/hook`, DEV)
  t.match(viaV6, { outcome: 'failed', statusCode: null, error: 'reset' })
  t.equal(v4.connections(), 1)
  t.equal(v6.connections(), 1)
})

t.test('registration gives one refusal, whatever the name does: no such name, no address, private, mixed, failing, silent', async (t) => {
  const refused = ['no-such-name.test', 'no-addresses.test', 'internal.test', 'loopback6.test', 'metadata.test', 'mixed.test',
    'mixed-families.test', 'servfail.test', 'slow.test', 'localhost']
  const answers = await Promise.all(refused.map((host) => checkTarget(`https://${host}/hooks`, STRICT)))
  for (const [i, answer] of answers.entries()) t.same(answer, { ok: false, reason: HOST_NOT_PUBLIC }, String(refused[i]))
  // Every address must be public, in both families; a name with only public addresses passes.
  t.ok((await checkTarget('https://public.test/hooks', STRICT)).ok)
  t.ok((await checkTarget('https://public-v4-only.test:8443/hooks', STRICT)).ok)
  // Both families were asked of the loopback server.
  t.same(new Set(dns.queries.filter((query) => query.name === 'public.test').map((query) => query.type)), new Set(['A', 'AAAA']))
  // IP literals are their own address: no query.
  const before = dns.queries.length
  t.ok((await checkTarget(`https://${PUBLIC_V4}/hooks`, STRICT)).ok)
  t.ok((await checkTarget(`https://[${PUBLIC_V6}]/hooks`, STRICT)).ok)
  t.equal(dns.queries.length, before)
})

t.test('a lookup ends at its deadline, and nothing of it is left running', async (t) => {
  const silent = await startDnsServer({ 'hole.test': 'drop' })
  t.teardown(silent.close)
  const quick = createHostResolver({ servers: [silent.server], timeoutMs: 300 })
  const started = Date.now()
  await t.rejects(quick.resolve('hole.test'), { code: 'EAI_AGAIN' })
  const took = Date.now() - started
  t.ok(took >= 280 && took < 300 + 700, `ended at the deadline (${took} ms)`)
  const asked = silent.queries.length
  t.ok(asked >= 2, `both families were asked (${asked} queries, retries included)`)
  await sleep(600)
  t.equal(silent.queries.length, asked, 'no query of the lookup went out after its deadline (its channel was cancelled)')
})

t.test('lookups in flight are bounded; the rest wait in line within their own deadline', async (t) => {
  const slow = await startDnsServer(Object.fromEntries([
    ...Array.from({ length: 8 }, (_, i) => [`hole-${i}.test`, 'drop' as const]),
    ['fine.test', { a: [PUBLIC_V4] }]
  ]))
  t.teardown(slow.close)
  const bounded = createHostResolver({ servers: [slow.server], timeoutMs: 600, concurrency: 2 })
  const started = Date.now()
  const lookups = Array.from({ length: 8 }, (_, i) => bounded.resolve(`hole-${i}.test`).then(() => 'resolved', (error: NodeJS.ErrnoException) => error.code))
  await sleep(300)
  t.same(new Set(slow.queries.map((query) => query.name)), new Set(['hole-0.test', 'hole-1.test']), 'two lookups at a time reached the server')
  t.same(await Promise.all(lookups), new Array(8).fill('EAI_AGAIN'), 'every one ended without an answer')
  const took = Date.now() - started
  t.ok(took < 600 + 700, `the waiting ones too, within their deadline (${took} ms)`)
  // Slots are back once the lookups ended.
  t.same(await bounded.resolve('fine.test'), [{ address: PUBLIC_V4, family: 4 }])
})

t.test('hanging lookups hold no libuv thread: scrypt runs at full speed beside them', async (t) => {
  // The pool has 4 threads (UV_THREADPOOL_SIZE): 8 hanging getaddrinfo calls would stall every scrypt behind them.
  const silent = await startDnsServer(Object.fromEntries(Array.from({ length: 8 }, (_, i) => [`hole-${i}.test`, 'drop' as const])))
  t.teardown(silent.close)
  const patient = createHostResolver({ servers: [silent.server], timeoutMs: 3000, concurrency: 8 })
  const lookups = Array.from({ length: 8 }, (_, i) => patient.resolve(`hole-${i}.test`).catch(() => 'failed'))
  await sleep(50)
  const hash = () => new Promise<number>((resolve, reject) => {
    const started = Date.now()
    scrypt('password', 'salt', 32, { N: 1024 }, (error) => (error === null ? resolve(Date.now() - started) : reject(error)))
  })
  const started = Date.now()
  const times = await Promise.all(Array.from({ length: 8 }, hash))
  const took = Date.now() - started
  t.ok(took < 1500, `8 hashes took ${took} ms (each ${times.join(', ')} ms) while 8 lookups hung`)
  t.equal(silent.queries.filter((query) => query.at <= started + took).length >= 8, true, 'the lookups were in flight meanwhile')
  t.same(await Promise.all(lookups), new Array(8).fill('failed'))
})

t.test('DNS rebinding: a name that answered a public address at registration and loopback later is refused at connect time', async (t) => {
  const listener = await tattletale(t, '127.0.0.1')
  const url = `https://rebind.test:${listener.port}/hook`
  t.ok((await checkTarget(url, STRICT)).ok, 'registration saw a public address')
  const result = await attempt(url, STRICT)
  t.match(result, { outcome: 'failed', statusCode: null, error: 'refused_address' })
  t.equal(listener.connections(), 0, 'nothing reached the loopback listener')
  t.ok(dns.queries.some((query) => query.name === 'rebind.test' && query.type === 'A' && query.seen > 0), 'the connection asked the DNS server again')
})

t.test('at connect time a name that does not resolve, or resolves late, is a dns failure under either policy', async (t) => {
  for (const policy of [STRICT, DEV]) {
    for (const host of ['no-such-name.test', 'servfail.test', 'slow.test']) {
      const result = await attempt(`https://${host}/hook`, policy)
      t.match(result, { outcome: 'failed', statusCode: null, error: 'dns' }, `${host}, allowPrivate ${policy.allowPrivate}`)
    }
  }
})
