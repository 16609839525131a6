// The pieces every configuration schema is built from. Each concern (a plugin, a domain) declares its settings as
// one `settingsGroup`: a Zod object whose keys are the environment variables, each with `.describe()` text saying
// what it does, why, its range and its default. That text is the only documentation of a setting:
// `npm run config` (scripts/config-reference.ts) writes .env.example and docs/configuration.md from it.
import { z } from 'zod'

/** `true`, `false`, `1` or `0`, as environment variables spell booleans. */
export const boolean = z.enum(['true', 'false', '1', '0']).transform((v) => v === 'true' || v === '1')

/** A comma-separated list; blanks around and between the items are dropped. */
export const list = z.string().transform((v) => v.split(',').map((s) => s.trim()).filter(Boolean))

/** A URL whose scheme is one of `protocols` (each with its colon, as URL.protocol spells it). */
export const url = (protocols: string[]) => z.string().refine((value) => {
  try {
    return protocols.includes(new URL(value).protocol)
  } catch {
    return false
  }
}, { message: `must be a URL starting with ${protocols.join(' or ')}//` })

/** What the reference prints besides a setting's description (read from its metadata by scripts/config-reference.ts). */
export interface SettingMeta {
  /** The value .env.example shows for a setting without a default (a URL's shape, a computed default). */
  example?: string
  /** .env.example leaves the line uncommented, to be filled in (a secret compose.yaml requires). */
  fillIn?: boolean
  /** A former name: still read or refused with a message, documented, but not offered in .env.example. */
  deprecated?: boolean
}

/** A concern's settings: the title and paragraph heading them in .env.example and docs/configuration.md. */
export function settingsGroup<S extends z.ZodRawShape> (title: string, about: string, shape: S) {
  return z.object(shape).meta({ title, description: about })
}

export type SettingsGroup = z.ZodObject<z.ZodRawShape>
