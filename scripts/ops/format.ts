// Text the operator tools print (aligned tables, numbers, reasons without stacks), the time bound every
// check runs under, so no section can hang a script, and their command-line handling.
import { parseArgs, type ParseArgsOptionsConfig } from 'node:util'

export interface Column {
  header: string
  /** Right-aligned (numbers); text columns are left-aligned. */
  right?: boolean
}

/** Plain aligned columns, two spaces apart, each line indented by `indent`. */
export function table (columns: Column[], rows: string[][], indent = '  '): string {
  const widths = columns.map((column, i) => Math.max(column.header.length, ...rows.map((row) => (row[i] ?? '').length)))
  const line = (cells: string[]) => indent + cells
    .map((cell, i) => columns[i]?.right === true ? cell.padStart(widths[i] ?? 0) : cell.padEnd(widths[i] ?? 0))
    .join('  ').trimEnd()
  return [line(columns.map((column) => column.header)), ...rows.map(line)].join('\n')
}

/** Columns from their headers; a header starting with '>' is right-aligned (a number). */
export const columns = (...headers: string[]): Column[] =>
  headers.map((header) => header.startsWith('>') ? { header: header.slice(1), right: true } : { header })

export const int = (n: number) => Math.round(n).toLocaleString('en-US')
export const ms = (n: number) => n >= 100 ? n.toFixed(0) : n >= 10 ? n.toFixed(1) : n.toFixed(2)
export const pct = (share: number | null) => share === null ? 'n/a' : `${(share * 100).toFixed(1)}%`
export const ratio = (part: number, whole: number) => whole > 0 ? part / whole : null
export const seconds = (s: number) => s >= 3600 ? `${(s / 3600).toFixed(1)} h` : s >= 60 ? `${(s / 60).toFixed(1)} min` : `${s.toFixed(1)} s`

/** One line of text at most `width` characters long, with an ellipsis when cut. */
export function shorten (text: string, width: number): string {
  const flat = text.replace(/\s+/g, ' ').trim()
  return flat.length <= width ? flat : `${flat.slice(0, width - 1)}…`
}

type Values<T extends ParseArgsOptionsConfig> = ReturnType<typeof parseArgs<{ options: T }>>['values']

/**
 * The command line, or exit: on --help the usage and exit 0, on an unknown flag or when `valid` says no the usage
 * and exit 2.
 */
export function commandLine<const T extends ParseArgsOptionsConfig> (options: T, usage: string, valid: (values: Values<T>) => boolean): Values<T> {
  let values: Values<T>
  try {
    values = parseArgs({ options }).values as Values<T>
  } catch (error) {
    console.error(`${reason(error)}\n${usage}`)
    process.exit(2)
  }
  const help = (values as { help?: unknown }).help === true
  if (help || !valid(values)) {
    console.error(usage)
    process.exit(help ? 0 : 2)
  }
  return values
}
/** A message without stack or secrets, for "unavailable: <reason>" lines. */
export function reason (error: unknown): string {
  if (error instanceof AggregateError && error.errors.length > 0) return reason(error.errors[0])
  if (error instanceof Error) {
    // fetch() says only "fetch failed"; the reason (ECONNREFUSED, a DNS error...) is its cause.
    if (error.message === 'fetch failed' && error.cause !== undefined) return reason(error.cause)
    const code = (error as { code?: unknown }).code
    const message = error.message !== '' ? error.message : error.name
    return typeof code === 'string' && !message.includes(code) ? `${message} (${code})` : message
  }
  return String(error)
}

export class TimeoutError extends Error {
  override name = 'TimeoutError'
}

/** Rejects after `timeoutMs` so no section or check can hang the script; the caller closes what it opened. */
export async function withTimeout<T> (work: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((resolve, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(`${what} did not answer within ${timeoutMs / 1000} s`)), timeoutMs)
  })
  try {
    return await Promise.race([work, timeout])
  } finally {
    clearTimeout(timer)
  }
}

/** The URL without its password, for printing where a result came from. */
export function redact (url: string): string {
  try {
    const parsed = new URL(url)
    if (parsed.password !== '') parsed.password = '***'
    return parsed.toString()
  } catch {
    return '(not a URL)'
  }
}
