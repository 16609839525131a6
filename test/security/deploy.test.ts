// Abuse cases for the deploy files (compose.yaml, deploy/k8s): a container of the image that runs as root, keeps a
// capability, may gain privileges or write its root filesystem; a pod that mounts a service account token; a
// NetworkPolicy that lets an application pod reach a private, shared, link-local (cloud metadata) or loopback
// address. Each check runs on the real files (no finding) and on hostile copies (each finding named), so it can fail.
// The image itself (uid 1000, nothing writable) is proven in a real engine by test/image/image.test.ts.
import { readdirSync, readFileSync } from 'node:fs'
import { BlockList, isIPv4 } from 'node:net'
import t from 'tap'
import { parse, parseAllDocuments } from 'yaml'

/** The ranges no application pod may reach: RFC 1918, shared address space (RFC 6598), link-local, loopback. */
export const PRIVATE_RANGES = ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '169.254.0.0/16', '100.64.0.0/10', '127.0.0.0/8']
const APP_LABELS = ['ledger-api', 'ledger-api-worker', 'ledger-api-migrate']

const k8sFolder = new URL('../../deploy/k8s/', import.meta.url)
const k8s = readdirSync(k8sFolder).filter((file) => file.endsWith('.yaml') && file !== 'kustomization.yaml')
  .flatMap((file) => parseAllDocuments(readFileSync(new URL(file, k8sFolder), 'utf8')).map((document) => document.toJS()))
  .filter((document) => document !== null) as any[]
const compose = parse(readFileSync(new URL('../../compose.yaml', import.meta.url), 'utf8'), { merge: true }) as { services: Record<string, any> }

// ---- Kubernetes ----------------------------------------------------------------------------------------------

function podViolations (name: string, pod: any): string[] {
  const found: string[] = []
  if (pod.automountServiceAccountToken !== false) found.push(`${name}: mounts a service account token`)
  if (pod.hostNetwork === true || pod.hostPID === true || pod.hostIPC === true) found.push(`${name}: shares a host namespace`)
  if (pod.securityContext?.runAsNonRoot !== true) found.push(`${name}: may run as root`)
  if (pod.securityContext?.runAsUser === 0 || pod.securityContext?.runAsGroup === 0) found.push(`${name}: runs as uid or gid 0`)
  if (pod.securityContext?.seccompProfile?.type !== 'RuntimeDefault') found.push(`${name}: no RuntimeDefault seccomp profile`)
  for (const volume of pod.volumes ?? []) {
    if (volume.hostPath !== undefined) found.push(`${name}: mounts the host path ${volume.hostPath.path}`)
    if (volume.projected?.sources?.some((source: any) => source.serviceAccountToken !== undefined)) found.push(`${name}: projects a service account token`)
  }
  for (const container of [...(pod.containers ?? []), ...(pod.initContainers ?? [])]) {
    const at = `${name}/${container.name}`
    const context = container.securityContext ?? {}
    if (context.runAsUser === 0 || context.runAsNonRoot === false) found.push(`${at}: runs as root`)
    if (context.privileged === true) found.push(`${at}: privileged`)
    if (context.allowPrivilegeEscalation !== false) found.push(`${at}: may gain privileges`)
    if (context.readOnlyRootFilesystem !== true) found.push(`${at}: writable root filesystem`)
    if (JSON.stringify(context.capabilities?.drop) !== '["ALL"]') found.push(`${at}: keeps capabilities`)
    if ((context.capabilities?.add ?? []).length > 0) found.push(`${at}: adds capabilities`)
    if (context.seccompProfile !== undefined && context.seccompProfile.type !== 'RuntimeDefault') found.push(`${at}: another seccomp profile`)
  }
  return found
}

function k8sPodViolations (documents: any[]): string[] {
  return documents.flatMap((document) => {
    const template = document.spec?.template ?? document.spec?.jobTemplate?.spec?.template
    return template === undefined ? [] : podViolations(`${document.kind} ${document.metadata.name}`, template.spec)
  })
}

const toInt = (address: string) => address.split('.').reduce((sum, octet) => sum * 256 + Number(octet), 0)
const fromInt = (value: number) => [24, 16, 8, 0].map((shift) => Math.floor(value / 2 ** shift) % 256).join('.')
/** First and last address of an IPv4 CIDR. */
function bounds (cidr: string): [string, string] {
  const [address = '', bits = '32'] = cidr.split('/')
  const size = 2 ** (32 - Number(bits))
  const first = Math.floor(toInt(address) / size) * size
  return [fromInt(first), fromInt(first + size - 1)]
}
const subnet = (cidr: string) => {
  const [address = '', bits = '32'] = cidr.split('/')
  const list = new BlockList()
  list.addSubnet(address, Number(bits), isIPv4(address) ? 'ipv4' : 'ipv6')
  return list
}

/** Private ranges an ipBlock lets through: those its cidr overlaps and no single `except` entry covers. */
function privateRangesAllowed (ipBlock: { cidr: string, except?: string[] }): string[] {
  if (!isIPv4(ipBlock.cidr.split('/')[0] ?? '')) return []
  const allowed = subnet(ipBlock.cidr)
  return PRIVATE_RANGES.filter((range) => {
    const [first, last] = bounds(range)
    const [cidrFirst, cidrLast] = bounds(ipBlock.cidr)
    const overlaps = allowed.check(first, 'ipv4') || allowed.check(last, 'ipv4') || subnet(range).check(cidrFirst, 'ipv4') || subnet(range).check(cidrLast, 'ipv4')
    const excepted = (ipBlock.except ?? []).some((entry) => isIPv4(entry.split('/')[0] ?? '') && subnet(entry).check(first, 'ipv4') && subnet(entry).check(last, 'ipv4'))
    return overlaps && !excepted
  })
}

/** Egress that lets an application pod out of the cluster's own pods: to everything, or to a private range. */
function egressViolations (documents: any[]): string[] {
  return documents.filter((document) => document.kind === 'NetworkPolicy').flatMap((policy) => {
    const selected = policy.spec.podSelector?.matchLabels?.['app.kubernetes.io/name']
    if (!APP_LABELS.includes(selected)) return []
    return (policy.spec.egress ?? []).flatMap((rule: any, index: number) => {
      const at = `NetworkPolicy ${policy.metadata.name} egress[${index}]`
      if (rule.to === undefined || rule.to.length === 0) return [`${at}: allows every destination`]
      return rule.to.flatMap((peer: any) => {
        if (peer.ipBlock === undefined) return []
        return [
          ...privateRangesAllowed(peer.ipBlock).map((range) => `${at}: reaches ${range}`),
          ...(peer.ipBlock.cidr.includes(':') && !['::1/128', 'fc00::/7', 'fe80::/10'].every((range) => peer.ipBlock.except?.includes(range))
            ? [`${at}: reaches private or loopback IPv6`]
            : [])
        ]
      })
    })
  })
}

t.test('Kubernetes: no pod mounts a service account token, runs as root or keeps a privilege', async (t) => {
  t.same(k8sPodViolations(k8s), [])
})

t.test('Kubernetes: hostile copies are caught', async (t) => {
  const hostile = (kind: string, name: string, change: (pod: any) => void) => {
    const copy = structuredClone(k8s.find((document) => document.kind === kind && document.metadata.name === name))
    change(copy.spec.template.spec)
    return k8sPodViolations([copy])
  }
  t.same(hostile('Deployment', 'ledger-api-worker', (pod) => { delete pod.automountServiceAccountToken }), ['Deployment ledger-api-worker: mounts a service account token'])
  t.same(hostile('Deployment', 'ledger-api', (pod) => { pod.securityContext.runAsUser = 0; delete pod.securityContext.runAsNonRoot }),
    ['Deployment ledger-api: may run as root', 'Deployment ledger-api: runs as uid or gid 0'])
  t.same(hostile('Job', 'ledger-api-migrate', (pod) => { pod.containers[0].securityContext = { privileged: true, capabilities: { add: ['NET_ADMIN'] } } }), [
    'Job ledger-api-migrate/migrate: privileged', 'Job ledger-api-migrate/migrate: may gain privileges', 'Job ledger-api-migrate/migrate: writable root filesystem',
    'Job ledger-api-migrate/migrate: keeps capabilities', 'Job ledger-api-migrate/migrate: adds capabilities'])
  t.same(hostile('DaemonSet', 'pgbouncer', (pod) => { pod.volumes.push({ name: 'token', projected: { sources: [{ serviceAccountToken: { path: 'token' } }] } }) }),
    ['DaemonSet pgbouncer: projects a service account token'])
  t.same(hostile('Deployment', 'ledger-api-worker', (pod) => { pod.hostNetwork = true; pod.volumes = [{ name: 'root', hostPath: { path: '/' } }] }),
    ['Deployment ledger-api-worker: shares a host namespace', 'Deployment ledger-api-worker: mounts the host path /'])
})

t.test('Kubernetes: no application pod may reach a private, shared, link-local or loopback address', async (t) => {
  t.same(egressViolations(k8s), [])
  const webhook = k8s.find((document) => document.kind === 'NetworkPolicy' && document.metadata.name === 'ledger-api-worker')
    .spec.egress.find((rule: any) => rule.to.some((peer: any) => peer.ipBlock !== undefined))
  t.ok(webhook, 'the worker has its webhook rule (the check below is not vacuous)')
  t.same(webhook.ports, [{ port: 443, protocol: 'TCP' }], 'HTTPS only')
})

t.test('Kubernetes: hostile egress is caught', async (t) => {
  const withEgress = (rule: any) => {
    const copy = structuredClone(k8s.find((document) => document.kind === 'NetworkPolicy' && document.metadata.name === 'ledger-api-worker'))
    copy.spec.egress = [rule]
    return egressViolations([copy])
  }
  t.same(withEgress({ to: [{ ipBlock: { cidr: '0.0.0.0/0' } }], ports: [{ port: 443 }] }), PRIVATE_RANGES.map((range) => `NetworkPolicy ledger-api-worker egress[0]: reaches ${range}`))
  t.same(withEgress({ to: [{ ipBlock: { cidr: '0.0.0.0/0', except: ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '100.64.0.0/10', '127.0.0.0/8', '169.254.169.254/32'] } }] }),
    ['NetworkPolicy ledger-api-worker egress[0]: reaches 169.254.0.0/16'], 'excepting the metadata address alone leaves the rest of link-local')
  t.same(withEgress({ to: [{ ipBlock: { cidr: '172.20.0.0/16' } }] }), ['NetworkPolicy ledger-api-worker egress[0]: reaches 172.16.0.0/12'], 'a block inside a private range')
  t.same(withEgress({ to: [{ ipBlock: { cidr: '8.8.8.0/24' } }] }), [], 'a public block is fine')
  t.same(withEgress({ ports: [{ port: 443 }] }), ['NetworkPolicy ledger-api-worker egress[0]: allows every destination'])
  t.same(withEgress({ to: [{ ipBlock: { cidr: '::/0' } }] }), ['NetworkPolicy ledger-api-worker egress[0]: reaches private or loopback IPv6'])
})

// ---- Compose ---------------------------------------------------------------------------------------------------

function composeViolations (services: Record<string, any>): string[] {
  return Object.entries(services).flatMap(([name, service]) => {
    const found: string[] = []
    if (service.privileged === true) found.push(`${name}: privileged`)
    if ((service.cap_add ?? []).length > 0) found.push(`${name}: adds capabilities`)
    if (service.network_mode === 'host' || service.pid === 'host' || service.ipc === 'host') found.push(`${name}: shares a host namespace`)
    if (!(service.security_opt ?? []).some((option: string) => /^no-new-privileges(:true)?$/.test(option))) found.push(`${name}: may gain privileges`)
    for (const volume of service.volumes ?? []) {
      const source = typeof volume === 'string' ? volume.split(':')[0] : volume.source
      if (typeof source === 'string' && (source.startsWith('/') || source.startsWith('.'))) found.push(`${name}: mounts the host path ${source}`)
    }
    // The project's image: its own non-root user, nothing writable, no capability.
    if (service.image === 'ledger-api:local') {
      const [uid, gid] = String(service.user ?? '').split(':')
      if (!(Number(uid) > 0) || gid === '0') found.push(`${name}: not an explicit non-root user`)
      if (service.read_only !== true) found.push(`${name}: writable root filesystem`)
      if (JSON.stringify(service.cap_drop) !== '["ALL"]') found.push(`${name}: keeps capabilities`)
    }
    return found
  })
}

t.test('compose: the image runs as uid 1000, read-only, without capabilities; nothing is privileged or escalates', async (t) => {
  t.same(composeViolations(compose.services), [])
  t.same(['migrate', 'api', 'worker'].map((name) => compose.services[name]?.user), ['1000:1000', '1000:1000', '1000:1000'])
})

t.test('compose: hostile copies are caught', async (t) => {
  const hostile = (change: (services: Record<string, any>) => void) => {
    const copy = structuredClone(compose.services)
    change(copy)
    return composeViolations(copy)
  }
  t.same(hostile((s) => { s.worker.user = '0:0' }), ['worker: not an explicit non-root user'])
  t.same(hostile((s) => { delete s.api.user }), ['api: not an explicit non-root user'])
  t.same(hostile((s) => { s.migrate.read_only = false; s.migrate.cap_drop = ['NET_RAW'] }), ['migrate: writable root filesystem', 'migrate: keeps capabilities'])
  t.same(hostile((s) => { s.redis.privileged = true; s.redis.cap_add = ['SYS_ADMIN'] }), ['redis: privileged', 'redis: adds capabilities'])
  t.same(hostile((s) => { s.api.volumes = ['/var/run/docker.sock:/var/run/docker.sock'] }), ['api: mounts the host path /var/run/docker.sock'])
  t.same(hostile((s) => { s.pgbouncer.security_opt = []; s.worker.network_mode = 'host' }), ['pgbouncer: may gain privileges', 'worker: shares a host namespace'])
})
