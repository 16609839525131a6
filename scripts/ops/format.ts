// Text the operator tools print (aligned tables, numbers, reasons without stacks) and the time bound every
// check runs under, so no section can hang a script.

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

export const int = (n: number) => Math.round(n).toLocaleString('en-US')
export const ms = (n: number) => n >= 100 ? n.toFixed(0) : n >= 10 ? n.toFixed(1) : n.toFixed(2)
export const pct = (share: number | null) => share === null ? 'n/a' : `${(share * 100).toFixed(1)}%`
export const ratio = (part: number, whole: number) => whole > 0 ? part / whole : null

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
