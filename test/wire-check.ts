// The wire check: every response an app built by test/helper.ts sends (to inject or to a real client over a socket)
// is held against the committed openapi.json. The operation must document its status, the Content-Type must be one
// of the media types documented for that status, the body must match that media type's schema (Ajv, JSON Schema
// 2020-12, which is what OpenAPI 3.1 schemas are), and every header documented as required must be there with a
// value its schema allows. What is left here is only the OpenAPI part: finding the operation, the response, the
// media type and the headers; Ajv validates.
import { readFileSync } from 'node:fs'
import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js'
import addFormatsModule from 'ajv-formats'

interface HeaderObject { required?: boolean, schema?: object, $ref?: string }
interface ResponseObject { headers?: Record<string, HeaderObject>, content?: Record<string, { schema?: object }> }
interface Document {
  paths: Record<string, Record<string, { responses: Record<string, ResponseObject> }>>
  components: { headers?: Record<string, HeaderObject> }
}

const DOCUMENT_ID = 'openapi.json'
const document = JSON.parse(readFileSync(new URL('../openapi.json', import.meta.url), 'utf8')) as Document

// ajv-formats is CommonJS with a default export: under Node's ESM loader the function is the module's `default`.
type AddFormats = (ajv: Ajv2020) => unknown
const addFormats = ((addFormatsModule as unknown as { default?: AddFormats }).default ?? addFormatsModule) as unknown as AddFormats
const ajv = new Ajv2020({ allErrors: true, strict: false, validateSchema: false })
addFormats(ajv)
// The whole document is one schema resource, so `#/components/schemas/...` references resolve inside it.
ajv.addSchema(document, DOCUMENT_ID)

const validators = new Map<string, ValidateFunction>()
function validatorAt (pointer: string): ValidateFunction {
  let validate = validators.get(pointer)
  if (validate === undefined) {
    validate = ajv.compile({ $ref: `${DOCUMENT_ID}#${pointer}` })
    validators.set(pointer, validate)
  }
  return validate
}

const escape = (segment: string) => segment.replaceAll('~', '~0').replaceAll('/', '~1')

/** Fastify's route path (`/users/:id`) as the document writes it (`/users/{id}`). */
export const openapiPath = (route: string) => route.replace(/:([A-Za-z0-9_]+)/g, '{$1}')

export interface WireResponse {
  method: string
  /** The matched route's path as Fastify declares it. */
  route: string
  statusCode: number
  headers: Record<string, unknown>
  /** The body exactly as it is sent. */
  body: string
}

const resolveHeader = (header: HeaderObject): HeaderObject =>
  header.$ref !== undefined ? document.components.headers?.[header.$ref.split('/').pop() ?? ''] ?? {} : header

/** What in this response differs from openapi.json (nothing for an operation the document does not have). */
export function wireMismatches (response: WireResponse): string[] {
  const method = response.method.toLowerCase()
  const path = openapiPath(response.route)
  const operation = document.paths[path]?.[method]
  if (operation === undefined) return []
  const where = `${response.method} ${path} -> ${response.statusCode}`
  const status = String(response.statusCode)
  const documented = operation.responses[status] ?? operation.responses[`${status[0]}XX`] ?? operation.responses.default
  if (documented === undefined) return [`${where}: status ${status} is not documented for this operation (documented: ${Object.keys(operation.responses).join(', ')})`]
  const statusKey = operation.responses[status] !== undefined ? status : operation.responses[`${status[0]}XX`] !== undefined ? `${status[0]}XX` : 'default'
  const mismatches: string[] = []

  const headers = Object.fromEntries(Object.entries(response.headers).map(([name, value]) => [name.toLowerCase(), value]))
  for (const [name, raw] of Object.entries(documented.headers ?? {})) {
    const header = resolveHeader(raw)
    const value = headers[name.toLowerCase()]
    if (value === undefined) {
      if (header.required === true) mismatches.push(`${where}: documented header ${name} is missing`)
      continue
    }
    if (header.schema !== undefined) {
      const check = ajv.compile(header.schema)
      if (!check(String(value))) mismatches.push(`${where}: header ${name}: ${JSON.stringify(value)} ${ajv.errorsText(check.errors)}`)
    }
  }

  // 204 and 304 carry no body whatever the handler passed to send().
  const bodyless = response.statusCode === 204 || response.statusCode === 304
  const contentType = headers['content-type'] === undefined ? undefined : String(headers['content-type']).split(';')[0]!.trim().toLowerCase()
  if (documented.content === undefined) {
    if (!bodyless && response.body.length > 0) mismatches.push(`${where}: a body (${contentType ?? 'no Content-Type'}) where the document says there is none`)
    return mismatches
  }
  if (contentType === undefined || documented.content[contentType] === undefined) {
    mismatches.push(`${where}: Content-Type ${contentType ?? '(none)'} is not documented (documented: ${Object.keys(documented.content).join(', ')})`)
    return mismatches
  }
  if (documented.content[contentType].schema === undefined) return mismatches
  let body: unknown
  try {
    body = JSON.parse(response.body)
  } catch {
    mismatches.push(`${where}: the ${contentType} body is not JSON`)
    return mismatches
  }
  const validate = validatorAt(`/paths/${escape(path)}/${method}/responses/${statusKey}/content/${escape(contentType)}/schema`)
  if (!validate(body)) mismatches.push(`${where}: the ${contentType} body does not match its schema: ${ajv.errorsText(validate.errors)}`)
  return mismatches
}
