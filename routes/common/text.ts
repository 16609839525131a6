// Rules every free-text field shares. PostgreSQL `text` cannot store NUL, unpaired surrogates cannot be encoded
// as UTF-8 (they would come back as U+FFFD, changing what was stored and breaking idempotency fingerprints),
// and control characters in names or URLs only cause trouble in logs and user interfaces.

// eslint-disable-next-line no-control-regex -- matching control characters is the point
const CONTROL = /[\u0000-\u001f\u007f]/
// eslint-disable-next-line no-control-regex -- as above, but tab, line feed and carriage return are text
const CONTROL_BUT_LINE_BREAKS = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/

export const textRule = (options: { lineBreaks: boolean }) => ({
  check: (value: string) => value.isWellFormed() && !(options.lineBreaks ? CONTROL_BUT_LINE_BREAKS : CONTROL).test(value),
  message: options.lineBreaks
    ? 'must be well-formed text without control characters other than line breaks and tabs'
    : 'must be well-formed text without control characters'
})

export const SINGLE_LINE = textRule({ lineBreaks: false })
export const MULTI_LINE = textRule({ lineBreaks: true })
