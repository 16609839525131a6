// Rules every free-text field shares. PostgreSQL `text` cannot store NUL, unpaired surrogates cannot be encoded
// as UTF-8 (they would come back as U+FFFD, changing what was stored and breaking idempotency fingerprints),
// and control characters in names or URLs only cause trouble in logs and user interfaces.
//
// Invisible formatting characters are the impersonation tricks: a right-to-left override turns
// "invoice\u202Egnp.exe" into "invoiceexe.png" on screen, and a zero-width space makes "Ledger\u200BSupport" look
// exactly like a name it is not. The refused set is every code point that is Default_Ignorable_Code_Point (which
// covers Unicode's format category Cf: bidi embeddings, overrides and isolates U+202A–U+202E and U+2066–U+2069,
// the marks U+200E, U+200F and U+061C, zero-width U+200B–U+200D, U+2060–U+2064, U+FEFF, the soft hyphen U+00AD,
// tag characters U+E0000–U+E007F; plus the invisible fillers outside Cf such as U+115F, U+3164 and U+FFA0 that make
// blank-looking names) or Cf, with four exceptions where such a character is how the text is written, each allowed
// only in its context:
// - U+200D ZERO WIDTH JOINER between emoji (👩‍💻, 🏳️‍🌈, 👨‍👩‍👧): joining two pictographs is what it is for;
// - U+200C ZERO WIDTH NON-JOINER after a letter of a script that needs it (Persian "می‌خواهم", Indic scripts), before
//   another letter or mark;
// - variation selectors U+FE0E/U+FE0F after a character that has an emoji form (❤️, 1️⃣), and ideographic variation
//   selectors U+E0100–U+E01EF after a Han ideograph;
// - tag characters only as the three subdivision flags Unicode recommends for general interchange (RGI: 🏴 + the
//   tag letters of gbeng, gbsct or gbwls + U+E007F CANCEL TAG, the flags of England, Scotland and Wales). Any other
//   run of tags, even a well-formed flag of another subdivision, is text hidden from the reader: renderers without
//   that flag show a black flag and nothing else.
// Anywhere else they are refused, so an ZWJ between two Latin letters is a 400 like any other invisible character.
//
// Combining marks are bounded too: at most MAX_COMBINING_MARKS on one base character. See there for why 30.

import type { z } from 'zod'

// eslint-disable-next-line no-control-regex -- matching control characters is the point
const CONTROL = /[\u0000-\u001f\u007f]/
// eslint-disable-next-line no-control-regex -- as above, but tab, line feed and carriage return are text
const CONTROL_BUT_LINE_BREAKS = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/

const INVISIBLE = /[\p{Default_Ignorable_Code_Point}\p{Cf}]/u

/** `ascii` spelled in tag characters (U+E0020–U+E007E). */
const tagged = (ascii: string) => [...ascii].map((c) => `\\u{${(0xE0000 + (c.codePointAt(0) ?? 0)).toString(16)}}`).join('')
const RGI_SUBDIVISION_FLAG_TAGS = ['gbeng', 'gbsct', 'gbwls'].map(tagged).join('|')

const EMOJI_BEFORE_ZWJ = String.raw`[\p{Extended_Pictographic}\p{Emoji_Modifier}\u{FE0F}]`
const ZWNJ_SCRIPTS = String.raw`[\p{Script=Arabic}\p{Script=Syriac}\p{Script=Nko}\p{Script=Devanagari}\p{Script=Bengali}\p{Script=Gurmukhi}\p{Script=Gujarati}\p{Script=Oriya}\p{Script=Tamil}\p{Script=Telugu}\p{Script=Kannada}\p{Script=Malayalam}\p{Script=Sinhala}]`
/** The legitimate uses listed above, removed before looking for what is left. */
const ALLOWED_IN_CONTEXT = new RegExp([
  String.raw`(?<=${EMOJI_BEFORE_ZWJ})\u{200D}(?=\p{Extended_Pictographic})`,
  String.raw`(?<=${ZWNJ_SCRIPTS}\p{M}*)\u{200C}(?=[\p{L}\p{M}])`,
  String.raw`(?<=\p{Emoji})[\u{FE0E}\u{FE0F}]`,
  String.raw`(?<=\p{Script=Han})[\u{E0100}-\u{E01EF}]`,
  String.raw`(?<=\u{1F3F4})(?:${RGI_SUBDIVISION_FLAG_TAGS})\u{E007F}`
].join('|'), 'gu')

/** True when `value` has an invisible formatting character outside the contexts allowed above. */
export const hasInvisibleFormatting = (value: string): boolean =>
  INVISIBLE.test(value) && INVISIBLE.test(value.replace(ALLOWED_IN_CONTEXT, ''))

export const INVISIBLE_FORMATTING_MESSAGE = 'must not contain invisible formatting characters (bidirectional overrides or isolates, zero-width or other invisible characters)'

/**
 * Combining marks on one base character, at most. Real text stays far below it: the longest sequences of the scripts
 * that stack marks (Tibetan and Burmese stacks, Biblical Hebrew with points and cantillation, Vedic accents,
 * Vietnamese decomposed) are under ten. 30 is the bound Unicode itself sets on such runs, the Stream-Safe Text
 * Format's 30 non-starters in a row (UAX #15), chosen there as "well beyond" any linguistic use: a stricter bound
 * would only add the risk of refusing someone's name, while any bound at all stops what matters, thousands of marks
 * on one letter that overflow every line around it and make renderers work per mark.
 * Counted as the Stream-Safe format counts, on the compatibility decomposition (NFKD: é is e + U+0301), and the
 * zero-width joiners allowed between marks count as part of the run, so they cannot restart it.
 */
export const MAX_COMBINING_MARKS = 30
const MARK_RUN = new RegExp(String.raw`[\p{M}\u{200C}\u{200D}]{${MAX_COMBINING_MARKS + 1}}`, 'u')

/** True when some base character carries more than MAX_COMBINING_MARKS combining marks. */
export const hasStackedMarks = (value: string): boolean => MARK_RUN.test(value.normalize('NFKD'))

export const STACKED_MARKS_MESSAGE = `must not stack more than ${MAX_COMBINING_MARKS} combining marks on one character`

/** The two rules on how text is written that every free-text field shares, as a field error (or undefined). */
export function formattingProblem (value: string): string | undefined {
  if (hasInvisibleFormatting(value)) return INVISIBLE_FORMATTING_MESSAGE
  if (hasStackedMarks(value)) return STACKED_MARKS_MESSAGE
  return undefined
}

export const textRule = (options: { lineBreaks: boolean }) => {
  const message = options.lineBreaks
    ? 'must be well-formed text without control characters other than line breaks and tabs, and without invisible formatting characters (bidirectional overrides, zero-width characters)'
    : 'must be well-formed text without control characters or invisible formatting characters (bidirectional overrides, zero-width characters)'
  const problem = (value: string): string | undefined => {
    if (!value.isWellFormed() || (options.lineBreaks ? CONTROL_BUT_LINE_BREAKS : CONTROL).test(value) || hasInvisibleFormatting(value)) return message
    return hasStackedMarks(value) ? STACKED_MARKS_MESSAGE : undefined
  }
  return {
    /** The refusal's field error, or undefined when the text is fine. */
    problem,
    check: (value: string) => problem(value) === undefined,
    /** For z.string().superRefine(): at most one issue per field, with the message that says what is wrong. */
    refine: (value: string, ctx: z.RefinementCtx) => {
      const found = problem(value)
      if (found !== undefined) ctx.addIssue({ code: 'custom', message: found })
    }
  }
}

export const SINGLE_LINE = textRule({ lineBreaks: false })
export const MULTI_LINE = textRule({ lineBreaks: true })
