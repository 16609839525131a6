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
// - tag characters inside an emoji flag tag sequence (🏴 + tags + U+E007F: the flags of England, Scotland, Wales).
// Anywhere else they are refused, so an ZWJ between two Latin letters is a 400 like any other invisible character.

// eslint-disable-next-line no-control-regex -- matching control characters is the point
const CONTROL = /[\u0000-\u001f\u007f]/
// eslint-disable-next-line no-control-regex -- as above, but tab, line feed and carriage return are text
const CONTROL_BUT_LINE_BREAKS = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/

const INVISIBLE = /[\p{Default_Ignorable_Code_Point}\p{Cf}]/u

const EMOJI_BEFORE_ZWJ = String.raw`[\p{Extended_Pictographic}\p{Emoji_Modifier}\u{FE0F}]`
const ZWNJ_SCRIPTS = String.raw`[\p{Script=Arabic}\p{Script=Syriac}\p{Script=Nko}\p{Script=Devanagari}\p{Script=Bengali}\p{Script=Gurmukhi}\p{Script=Gujarati}\p{Script=Oriya}\p{Script=Tamil}\p{Script=Telugu}\p{Script=Kannada}\p{Script=Malayalam}\p{Script=Sinhala}]`
/** The legitimate uses listed above, removed before looking for what is left. */
const ALLOWED_IN_CONTEXT = new RegExp([
  String.raw`(?<=${EMOJI_BEFORE_ZWJ})\u{200D}(?=\p{Extended_Pictographic})`,
  String.raw`(?<=${ZWNJ_SCRIPTS}\p{M}*)\u{200C}(?=[\p{L}\p{M}])`,
  String.raw`(?<=\p{Emoji})[\u{FE0E}\u{FE0F}]`,
  String.raw`(?<=\p{Script=Han})[\u{E0100}-\u{E01EF}]`,
  String.raw`(?<=\u{1F3F4})[\u{E0020}-\u{E007E}]{1,30}\u{E007F}`
].join('|'), 'gu')

/** True when `value` has an invisible formatting character outside the contexts allowed above. */
export const hasInvisibleFormatting = (value: string): boolean =>
  INVISIBLE.test(value) && INVISIBLE.test(value.replace(ALLOWED_IN_CONTEXT, ''))

export const INVISIBLE_FORMATTING_MESSAGE = 'must not contain invisible formatting characters (bidirectional overrides or isolates, zero-width or other invisible characters)'

export const textRule = (options: { lineBreaks: boolean }) => ({
  check: (value: string) => value.isWellFormed() &&
    !(options.lineBreaks ? CONTROL_BUT_LINE_BREAKS : CONTROL).test(value) &&
    !hasInvisibleFormatting(value),
  message: options.lineBreaks
    ? 'must be well-formed text without control characters other than line breaks and tabs, and without invisible formatting characters (bidirectional overrides, zero-width characters)'
    : 'must be well-formed text without control characters or invisible formatting characters (bidirectional overrides, zero-width characters)'
})

export const SINGLE_LINE = textRule({ lineBreaks: false })
export const MULTI_LINE = textRule({ lineBreaks: true })
