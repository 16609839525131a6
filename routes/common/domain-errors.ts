import { ProblemError, type FieldError, type OAuthErrorCode } from '../../plugins/errors/index.ts'

/**
 * How one domain refusal is answered: its problem's status, type and detail (and field errors, headers or OAuth error
 * code when it has them), each a function of the refusal's context where the answer quotes a value.
 */
export interface ProblemSpec<Context = undefined> {
  status: number
  type: string
  detail: string | ((context: Context) => string)
  errors?: (context: Context) => FieldError[]
  headers?: (context: Context) => Record<string, string>
  oauthError?: OAuthErrorCode
}

/** A domain's one table: every code it refuses with, to its problem. `Contexts` maps each code to what it carries. */
export type ProblemTable<Contexts> = { readonly [Code in keyof Contexts]: ProblemSpec<Contexts[Code]> }

/** The arguments after a code: its context, or none when the code carries nothing. */
export type ContextArgs<Context> = [Context] extends [undefined] ? [] : [context: Context]

/**
 * A refusal a domain operation raises, free of HTTP: which one (`code`, from the domain's closed set) and the values
 * its answer quotes. The domain's `toProblem` turns it into the problem its table gives the code.
 */
export class DomainError<Contexts, Code extends keyof Contexts & string = keyof Contexts & string> extends Error {
  readonly code: Code
  readonly context: Contexts[Code]

  constructor (code: Code, ...context: ContextArgs<Contexts[Code]>) {
    super(code)
    this.name = new.target.name
    this.code = code
    this.context = (context as unknown[])[0] as Contexts[Code]
  }
}

/** The problem `table` gives `error`'s code, filled in from its context. */
export function problemFrom<Contexts> (table: ProblemTable<Contexts>, error: DomainError<Contexts>): ProblemError {
  const spec = table[error.code] as ProblemSpec<unknown>
  const { context } = error
  const detail = typeof spec.detail === 'function' ? spec.detail(context) : spec.detail
  return new ProblemError(spec.status, spec.type, detail, { errors: spec.errors?.(context), headers: spec.headers?.(context), oauthError: spec.oauthError })
}
