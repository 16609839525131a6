// What preflight knows of the API: the operations of its /openapi.json, and valid example values from their schemas.
import { randomBytes, randomUUID } from 'node:crypto'

export interface JsonSchema {
  $ref?: string
  type?: string | string[]
  properties?: Record<string, JsonSchema>
  required?: string[]
  items?: JsonSchema
  minItems?: number
  enum?: unknown[]
  const?: unknown
  default?: unknown
  format?: string
  pattern?: string
  minLength?: number
  maxLength?: number
  minimum?: number
  maximum?: number
  exclusiveMinimum?: number
  exclusiveMaximum?: number
  anyOf?: JsonSchema[]
  oneOf?: JsonSchema[]
  allOf?: JsonSchema[]
}

type SecurityRequirement = Record<string, string[]>
interface Media { content?: Record<string, { schema?: JsonSchema }> }

interface OperationObject {
  operationId?: string
  security?: SecurityRequirement[]
  parameters?: Array<{ name: string, in: 'path' | 'query' | 'header' | 'cookie', required?: boolean, schema?: JsonSchema }>
  requestBody?: Media & { required?: boolean }
  responses?: Record<string, Media>
}

export interface OpenApiDocument {
  info?: { title?: string, version?: string }
  security?: SecurityRequirement[]
  paths?: Record<string, Record<string, OperationObject>>
  components?: { schemas?: Record<string, JsonSchema> }
}

export interface Operation extends OperationObject {
  method: string
  path: string
  key: string
}

export function operationsOf (doc: OpenApiDocument): Operation[] {
  return Object.entries(doc.paths ?? {}).flatMap(([path, item]) => ['get', 'post', 'put', 'patch', 'delete']
    .filter((method) => item[method] !== undefined)
    .map((method) => ({ ...item[method], method: method.toUpperCase(), path, key: `${method.toUpperCase()} ${path}` })))
}

/** Secured in the document's terms: the operation's own `security`, else the document's, names a scheme. */
export function isSecured (doc: OpenApiDocument, op: Operation): boolean {
  const requirements = op.security ?? doc.security ?? []
  // An empty requirement object means "no auth is also fine".
  return requirements.length > 0 && requirements.every((requirement) => Object.keys(requirement).length > 0)
}

export const documents401 = (op: Operation) => Object.hasOwn(op.responses ?? {}, '401')

export class Schemas {
  private readonly doc: OpenApiDocument
  constructor (doc: OpenApiDocument) {
    this.doc = doc
  }

  resolve (schema: JsonSchema | undefined, depth = 0): JsonSchema {
    if (schema === undefined) return {}
    if (schema.$ref === undefined || depth > 20) return schema
    return this.resolve(this.doc.components?.schemas?.[schema.$ref.replace('#/components/schemas/', '')], depth + 1)
  }

  /** The variant that carries a value: the first non-null branch of anyOf/oneOf, or the first allOf part. */
  concrete (schema: JsonSchema | undefined): JsonSchema {
    const s = this.resolve(schema)
    const variants = s.anyOf ?? s.oneOf
    if (variants !== undefined) return this.concrete(variants.find((v) => this.resolve(v).type !== 'null') ?? variants[0])
    if (s.allOf !== undefined && s.allOf.length > 0) return this.concrete(s.allOf[0])
    return s
  }

  jsonBody (media: Media | undefined): JsonSchema | undefined {
    return media?.content?.['application/json']?.schema
  }

  /** The schema of a 200/201 JSON response. */
  success (op: Operation): JsonSchema | undefined {
    return this.jsonBody(op.responses?.['200']) ?? this.jsonBody(op.responses?.['201'])
  }
}

// A schema refined after parsing (zod's .pipe(z.email())) reaches the document without its format.
export const isEmail = (s: JsonSchema, name: string) => s.format === 'email' || /e-?mail$/i.test(name)
const typeOf = (s: JsonSchema) => Array.isArray(s.type) ? s.type.find((t) => t !== 'null') : s.type

function matches (pattern: string | undefined, value: string): boolean {
  if (pattern === undefined) return true
  for (const flags of ['u', '']) {
    try {
      return new RegExp(pattern, flags).test(value)
    } catch {}
  }
  return true
}

/** Valid example values from a JSON schema: what a well-behaved client would send. */
export class Examples {
  private readonly schemas: Schemas
  constructor (schemas: Schemas) {
    this.schemas = schemas
  }

  /** `name` is the field's name: an email field is recognised by it when the document gives no format. */
  value (schema: JsonSchema | undefined, requiredOnly = true, name = ''): unknown {
    const s = this.schemas.concrete(schema)
    if (s.const !== undefined) return s.const
    if (s.enum !== undefined && s.enum.length > 0) return s.enum.find((v) => v !== null) ?? s.enum[0]
    if (s.default !== undefined) return s.default
    const type = typeOf(s) ?? (s.properties !== undefined ? 'object' : 'string')
    if (type === 'object') {
      return Object.fromEntries(Object.entries(s.properties ?? {})
        .filter(([field]) => !requiredOnly || (s.required ?? []).includes(field))
        .map(([field, property]) => [field, this.value(property, requiredOnly, field)]))
    }
    if (type === 'array') return Array.from({ length: s.minItems ?? 0 }, () => this.value(s.items))
    if (type === 'integer' || type === 'number') return this.number(s, type === 'integer')
    if (type === 'boolean') return false
    return this.string(s, name)
  }

  private number (s: JsonSchema, integer: boolean): number {
    let value = s.minimum ?? (s.exclusiveMinimum !== undefined ? s.exclusiveMinimum + (integer ? 1 : 0.5) : 1)
    if (s.maximum !== undefined) value = Math.min(value, s.maximum)
    if (s.exclusiveMaximum !== undefined && value >= s.exclusiveMaximum) value = s.exclusiveMaximum - (integer ? 1 : 0.5)
    return integer ? Math.ceil(value) : value
  }

  private string (s: JsonSchema, name: string): string {
    const tag = randomBytes(6).toString('hex')
    switch (isEmail(s, name) ? 'email' : s.format) {
      case 'uuid': return randomUUID()
      case 'email': return `preflight-${tag}@example.test`
      case 'uri': case 'url': return 'https://example.com/preflight.png'
      case 'date-time': return new Date().toISOString()
      case 'date': return new Date().toISOString().slice(0, 10)
    }
    const fit = (candidate: string) => {
      let value = candidate
      while (value.length < (s.minLength ?? 0)) value += tag
      return value.slice(0, s.maxLength ?? value.length)
    }
    const candidates = [`preflight-${tag}`, 'USD', 'preflight', '1', 'a', 'A'].map(fit)
    return candidates.find((candidate) => matches(s.pattern, candidate)) ?? candidates[0] ?? 'preflight'
  }
}

/** Where a value goes: a path, query or header parameter, or a (dotted) field of the JSON body. */
export interface Slot {
  in: 'path' | 'query' | 'header' | 'body'
  name: string
  schema: JsonSchema
}

/** Every string field of the body (nested objects included) and every parameter except Authorization. */
export function slotsOf (schemas: Schemas, op: Operation): Slot[] {
  const slots: Slot[] = []
  for (const param of op.parameters ?? []) {
    if (param.in === 'cookie' || (param.in === 'header' && param.name.toLowerCase() === 'authorization')) continue
    slots.push({ in: param.in, name: param.name, schema: schemas.concrete(param.schema) })
  }
  const walk = (schema: JsonSchema | undefined, prefix: string, depth: number) => {
    for (const [name, property] of Object.entries(schemas.concrete(schema).properties ?? {})) {
      const p = schemas.concrete(property)
      const type = typeOf(p) ?? (p.properties !== undefined ? 'object' : undefined)
      if (type === 'object' && depth < 5) walk(p, `${prefix}${name}.`, depth + 1)
      else if (type === 'string' || (p.enum ?? []).some((v) => typeof v === 'string')) slots.push({ in: 'body', name: `${prefix}${name}`, schema: p })
    }
  }
  walk(schemas.jsonBody(op.requestBody), '', 0)
  return slots
}
