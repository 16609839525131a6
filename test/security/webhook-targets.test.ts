// Issue 18, SSRF: a webhook target must be https and reach only public addresses, checked by syntax, at
// registration (every resolved address) and at connect time (the address actually dialled). No database: the
// receivers are real sockets on loopback.
import net, { type AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import {
  checkTarget,
  closeWebhookAgents,
  isPublicAddress,
  parseTargetUrl,
  postWebhook,
  type TargetPolicy
} from '../../routes/webhook-endpoints/outbound.ts'

const STRICT: TargetPolicy = { allowPrivate: false }
const DEV: TargetPolicy = { allowPrivate: true }

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
  // localhost resolves (through /etc/hosts, as the connection would) to loopback.
  const local = await checkTarget('https://localhost:8443/hook', STRICT)
  t.same(local, { ok: false, reason: 'host resolves to a private, loopback, link-local or reserved address' })
  // Refused whether or not the resolver answers for the absolute form.
  t.equal((await checkTarget('https://localhost./hook', STRICT)).ok, false)
  // A name that cannot resolve is refused rather than assumed public (.invalid never resolves, RFC 6761).
  t.same(await checkTarget('https://no-such-host.invalid/', STRICT), { ok: false, reason: 'host does not resolve' })
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
