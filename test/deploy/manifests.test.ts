// Every manifest in deploy/k8s is validated against the Kubernetes API schemas (kubernetes-models ships them
// compiled, offline), the kustomization lists exactly the folder's manifests, and the security settings
// hold: credentials only from Secrets, probes on the ops port, the proxy trust narrowed, a default-deny
// NetworkPolicy with the paths the service needs. The schemas check types, required fields and enums; they do not
// refuse unknown fields (Kubernetes' OpenAPI allows them), so the cross-references below (named ports, selectors,
// Secret keys) are checked here by hand.
import { readdirSync, readFileSync } from 'node:fs'
import t from 'tap'
import { parseAllDocuments } from 'yaml'

const folder = new URL('../../deploy/k8s/', import.meta.url)

interface Manifest { apiVersion: string, kind: string, metadata: { name: string }, [key: string]: unknown }
interface Validatable { validate: () => void }
type ModelClass = new (data: unknown) => Validatable

/** The kubernetes-models class for an apiVersion and kind: `apps/v1` + `Deployment` -> kubernetes-models/apps/v1/Deployment. */
async function modelFor (apiVersion: string, kind: string): Promise<ModelClass> {
  if (!/^([a-z0-9.-]+\/)?v[0-9a-z]+$/.test(apiVersion) || !/^[A-Z][A-Za-z]+$/.test(kind)) throw new Error(`not a Kubernetes type: ${apiVersion} ${kind}`)
  const module = await import(`kubernetes-models/${apiVersion}/${kind}`) as Record<string, ModelClass>
  const model = module[kind]
  if (model === undefined) throw new Error(`kubernetes-models has no ${apiVersion} ${kind}`)
  return model
}

/** Validates one document; resolves with the schema's complaint, or undefined when it is valid. */
async function schemaError (document: Manifest): Promise<string | undefined> {
  try {
    const Model = await modelFor(document.apiVersion, document.kind)
    new Model(document).validate()
    return undefined
  } catch (error) {
    return (error as Error).message
  }
}

function load (file: string): Manifest[] {
  const documents = parseAllDocuments(readFileSync(new URL(file, folder), 'utf8'))
  return documents.map((document) => {
    if (document.errors.length > 0) throw new Error(`${file}: ${document.errors[0]?.message}`)
    return document.toJS() as Manifest
  }).filter((document) => document !== null)
}

const files = readdirSync(folder).filter((file) => file.endsWith('.yaml')).sort()
const manifests = files.filter((file) => file !== 'kustomization.yaml').flatMap((file) => load(file).map((document) => ({ file, document })))
const find = (kind: string, name: string) => {
  const found = manifests.find(({ document }) => document.kind === kind && document.metadata.name === name)?.document
  if (found === undefined) throw new Error(`no ${kind} ${name} in deploy/k8s`)
  return found as any
}

t.test('every manifest is valid against the Kubernetes schemas', async (t) => {
  t.ok(manifests.length >= 15, `${manifests.length} documents in ${files.length} files`)
  for (const { file, document } of manifests) {
    t.equal(await schemaError(document), undefined, `${file}: ${document.kind} ${document.metadata.name}`)
  }
})

t.test('the validator refuses broken manifests (the check can fail)', async (t) => {
  const deployment = structuredClone(find('Deployment', 'ledger-api'))
  deployment.spec.template.spec.containers[0].ports[0].containerPort = 'three thousand'
  t.match(await schemaError(deployment), /containerPort must be integer/, 'a port that is not a number')
  const noSelector = structuredClone(find('Deployment', 'ledger-api'))
  delete noSelector.spec.selector
  t.match(await schemaError(noSelector), /selector/, 'a Deployment without its selector')
  const policy = structuredClone(find('NetworkPolicy', 'default-deny'))
  policy.spec.policyTypes = 'Ingress'
  t.match(await schemaError(policy), /policyTypes must be array/, 'policyTypes not a list')
  t.match(await schemaError({ apiVersion: 'v1', kind: 'Nonsense', metadata: { name: 'x' } }), /Nonsense/, 'an unknown kind')
})

t.test('the kustomization lists exactly the manifests of the folder', async (t) => {
  const [kustomization] = load('kustomization.yaml') as unknown as Array<{ resources: string[] }>
  // Other folders' kustomizations (../observability) are checked by their own tests.
  t.same([...(kustomization?.resources ?? [])].filter((resource) => !resource.startsWith('../')).sort(), files.filter((file) => file !== 'kustomization.yaml'))
})

t.test('the API pods take every credential from the Secret, and nothing in the ConfigMap carries one', async (t) => {
  const config = find('ConfigMap', 'ledger-api').data as Record<string, string>
  for (const key of ['DATABASE_URL', 'DATABASE_REPLICA_URL', 'REDIS_URL', 'JWT_SECRET', 'METRICS_TOKEN']) t.notOk(key in config, `${key} is not in the ConfigMap`)
  for (const [key, value] of Object.entries(config)) t.notMatch(value, /:\/\/[^/@]*:[^/@]*@/, `${key} carries no password`)
  const container = find('Deployment', 'ledger-api').spec.template.spec.containers[0]
  const fromSecret = Object.fromEntries((container.env as Array<{ name: string, valueFrom?: { secretKeyRef?: { name: string, key: string } } }>)
    .map((entry) => [entry.name, entry.valueFrom?.secretKeyRef]))
  for (const key of ['DATABASE_URL', 'DATABASE_REPLICA_URL', 'REDIS_URL', 'JWT_SECRET', 'METRICS_TOKEN']) {
    t.same(fromSecret[key], { name: 'ledger-api-secrets', key }, `${key} from the Secret`)
  }
  t.match(config.REDIS_CLUSTER_NODES, /:6379/, 'the seed nodes stay in the ConfigMap (REDIS_URL brings the credentials)')
})

t.test('probes and scraping use the ops port, which the Service does not expose', async (t) => {
  const config = find('ConfigMap', 'ledger-api').data as Record<string, string>
  const pod = find('Deployment', 'ledger-api').spec.template
  const container = pod.spec.containers[0]
  const ports = Object.fromEntries((container.ports as Array<{ name: string, containerPort: number }>).map((p) => [p.name, p.containerPort]))
  t.equal(String(ports.ops), config.OPS_PORT, 'the container port named ops is OPS_PORT')
  t.equal(String(ports.http), config.PORT)
  for (const probe of ['readinessProbe', 'livenessProbe', 'startupProbe']) t.equal(container[probe].httpGet.port, 'ops', `${probe} on the ops port`)
  t.equal(container.readinessProbe.httpGet.path, '/health/ready')
  t.equal(pod.metadata.annotations['prometheus.io/port'], config.OPS_PORT)
  t.same(find('Service', 'ledger-api').spec.ports.map((p: { targetPort: string }) => p.targetPort), ['http'], 'only the public port behind the Service')
})

t.test('the proxy trust is narrowed to the ingress controller, not the pod network', async (t) => {
  const trusted = (find('ConfigMap', 'ledger-api').data.TRUST_PROXY as string).split(',').map((s) => s.trim())
  for (const entry of trusted) {
    const [, bits] = entry.split('/')
    t.ok(bits === undefined || Number(bits) >= 24, `${entry}: at most a /24`)
  }
})

t.test('NetworkPolicies: default deny, API <- ingress controller, API -> PgBouncer, Redis, DNS, PgBouncer -> PostgreSQL', async (t) => {
  const deny = find('NetworkPolicy', 'default-deny').spec
  t.same(deny, { podSelector: {}, policyTypes: ['Ingress', 'Egress'] }, 'everything in the namespace denied unless allowed')

  const api = find('NetworkPolicy', 'ledger-api').spec
  t.same(api.podSelector.matchLabels, find('Deployment', 'ledger-api').spec.template.metadata.labels, 'selects the API pods')
  const publicIngress = api.ingress.find((rule: { ports: Array<{ port: string }> }) => rule.ports.some((p) => p.port === 'http'))
  t.same(publicIngress.from.map((peer: { namespaceSelector: { matchLabels: Record<string, string> } }) => peer.namespaceSelector.matchLabels['kubernetes.io/metadata.name']),
    ['ingress-nginx'], 'the public port only from the ingress controller')
  const egressTo = (policy: { egress: Array<{ to: Array<{ podSelector?: { matchLabels: Record<string, string> } }>, ports: Array<{ port: number }> }> }) =>
    policy.egress.flatMap((rule) => rule.to.map((peer) => `${Object.values(peer.podSelector?.matchLabels ?? {}).join(',')}:${rule.ports.map((p) => p.port).join('/')}`))
  t.same(egressTo(api).sort(), ['kube-dns:53/53', 'opentelemetry-collector:4318', 'pgbouncer:6432', 'redis-cluster:6379'], 'the API reaches PgBouncer, Redis, DNS and the OTLP collector only')
  const pgbouncerPod = find('DaemonSet', 'pgbouncer').spec.template
  t.same(egressTo(find('NetworkPolicy', 'pgbouncer').spec).sort(), ['kube-dns:53/53', 'postgres:5432'], 'PgBouncer reaches PostgreSQL and DNS only')
  t.same(find('NetworkPolicy', 'pgbouncer').spec.podSelector.matchLabels, pgbouncerPod.metadata.labels, 'selects the PgBouncer pods')
  t.same(find('NetworkPolicy', 'ledger-api-migrate').spec.podSelector.matchLabels, find('Job', 'ledger-api-migrate').spec.template.metadata.labels)

  // Named ports in the policies exist on the pods they select (a typo would silently allow nothing).
  const apiPorts = find('Deployment', 'ledger-api').spec.template.spec.containers[0].ports.map((p: { name: string }) => p.name)
  for (const rule of api.ingress) for (const port of rule.ports) t.ok(apiPorts.includes(port.port), `API port ${port.port} exists`)
  const pgbouncerPorts = pgbouncerPod.spec.containers[0].ports.map((p: { name: string }) => p.name)
  for (const rule of find('NetworkPolicy', 'pgbouncer').spec.ingress) for (const port of rule.ports) t.ok(pgbouncerPorts.includes(port.port), `PgBouncer port ${port.port} exists`)
})

const envOf = (container: { env?: Array<{ name: string, value?: string, valueFrom?: { secretKeyRef?: { name: string, key: string } } }> }) =>
  Object.fromEntries((container.env ?? []).map((entry) => [entry.name, entry.valueFrom?.secretKeyRef ?? entry.value]))
const podTemplates = () => manifests.flatMap(({ document }) => {
  const spec = (document as any).spec
  const template = spec?.template ?? spec?.jobTemplate?.spec?.template
  return template === undefined ? [] : [{ name: `${document.kind} ${document.metadata.name}`, template }]
})

t.test('a worker Deployment beside the API runs the image\'s worker, with the API\'s credentials and no more', async (t) => {
  const api = find('Deployment', 'ledger-api').spec.template.spec.containers[0]
  const worker = find('Deployment', 'ledger-api-worker').spec.template
  const container = worker.spec.containers[0]
  t.same(container.command, ['node', 'worker.ts'])
  t.equal(container.image, api.image, 'the same image')
  t.same(container.envFrom, api.envFrom, 'the same ConfigMap')
  const env = envOf(container)
  for (const key of ['DATABASE_URL', 'REDIS_URL', 'JWT_SECRET']) t.same(env[key], { name: 'ledger-api-secrets', key }, `${key} from the Secret`)
  t.same(Object.keys(env).sort(), ['DATABASE_URL', 'JWT_SECRET', 'REDIS_URL'], 'nothing else: no replica, no metrics token, no owner credentials')
  t.equal(envOf(api).WORKER_ENABLED, 'false', 'the API pods run no job loop')
  t.ok(worker.spec.terminationGracePeriodSeconds >= 25, 'the grace period covers an attempt in flight (10 s) and the drain')
  t.same(container.ports, [{ name: 'ops', containerPort: 9090 }], 'one listener: the ops port (probes and metrics)')
})

t.test('the migrator\'s credentials are in a Secret of their own, mounted by the migration Job only', async (t) => {
  const job = find('Job', 'ledger-api-migrate').spec.template.spec.containers[0]
  t.same(envOf(job), { DATABASE_DIRECT_URL: { name: 'ledger-api-migrator', key: 'DATABASE_DIRECT_URL' } }, 'the Job gets DATABASE_DIRECT_URL and nothing else')
  for (const { name, template } of podTemplates()) {
    const refs = JSON.stringify(template)
    if (name === 'Job ledger-api-migrate') t.notMatch(refs, /ledger-api-secrets/, `${name} mounts none of the API's secrets`)
    else {
      t.notMatch(refs, /ledger-api-migrator/, `${name} does not reference the migrator's Secret`)
      t.notMatch(refs, /DATABASE_DIRECT_URL/, `${name} has no DATABASE_DIRECT_URL`)
    }
  }
  const kustomization = readFileSync(new URL('kustomization.yaml', folder), 'utf8')
  t.match(kustomization, /create secret generic ledger-api-migrator \\\n#\s+--from-literal=DATABASE_DIRECT_URL=/, 'the instructions create it apart')
})

t.test('every pod: no service account token, non-root, RuntimeDefault seccomp, every container locked down', async (t) => {
  const templates = podTemplates()
  t.same(templates.map(({ name }) => name).sort(), ['DaemonSet pgbouncer', 'Deployment ledger-api', 'Deployment ledger-api-worker', 'Job ledger-api-migrate'])
  for (const { name, template } of templates) {
    const pod = template.spec
    t.equal(pod.automountServiceAccountToken, false, `${name}: automountServiceAccountToken false`)
    t.equal(pod.securityContext.runAsNonRoot, true, `${name}: runAsNonRoot`)
    t.ok(pod.securityContext.runAsUser > 0, `${name}: a non-zero uid`)
    t.equal(pod.securityContext.seccompProfile?.type, 'RuntimeDefault', `${name}: seccomp RuntimeDefault`)
    for (const container of [...pod.containers, ...(pod.initContainers ?? [])]) {
      t.same(container.securityContext, { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } }, `${name}/${container.name}: no escalation, read-only root, no capability`)
    }
  }
})

t.test('NetworkPolicies: the worker reaches PgBouncer, Redis, DNS, the collector and public HTTPS; only monitoring reaches it, on its ops port', async (t) => {
  const policy = find('NetworkPolicy', 'ledger-api-worker').spec
  t.same(policy.podSelector.matchLabels, find('Deployment', 'ledger-api-worker').spec.template.metadata.labels, 'selects the worker pods')
  t.same(policy.policyTypes, ['Ingress', 'Egress'])
  t.same(policy.ingress, [{ from: [{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'monitoring' } } }], ports: [{ port: 'ops', protocol: 'TCP' }] }],
    'one ingress rule: the monitoring namespace to the ops port')
  t.equal(find('Deployment', 'ledger-api-worker').spec.template.spec.containers[0].readinessProbe.httpGet.port, 'ops', 'the probes use the port the policy opens')
  const peers = policy.egress.map((rule: { to: Array<Record<string, any>>, ports: Array<{ port: number }> }) => `${rule.to.map((peer) =>
    peer.ipBlock?.cidr ?? Object.values(peer.podSelector?.matchLabels ?? {}).join(',')).join('+')}:${rule.ports.map((p) => p.port).join('/')}`)
  t.same(peers.sort(), ['0.0.0.0/0+::/0:443', 'kube-dns:53/53', 'opentelemetry-collector:4318', 'pgbouncer:6432', 'redis-cluster:6379'])
  const admits = (name: string) => find('NetworkPolicy', name).spec.ingress.some((rule: { from: Array<{ podSelector?: { matchLabels: Record<string, string> } }> }) =>
    rule.from.some((peer) => peer.podSelector?.matchLabels['app.kubernetes.io/name'] === 'ledger-api-worker'))
  t.ok(admits('pgbouncer'), 'PgBouncer admits the worker')
  t.ok(admits('redis-cluster'), 'Redis admits the worker')
})
