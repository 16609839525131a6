import { z } from 'zod'
import { settingsGroup, url } from '../../plugins/config-helpers.ts'

export const identityConfig = settingsGroup('Identity', 'Sign-in: the OAuth issuer, the login throttle and refresh tokens (sessions).', {
  OAUTH_ISSUER: url(['https:', 'http:'])
    .refine((value) => {
      // Not a URL at all: the check above says so, once.
      if (!URL.canParse(value)) return true
      const parsed = new URL(value)
      return parsed.pathname === '/' && parsed.search === '' && parsed.hash === '' && !value.endsWith('/')
    }, { message: 'must be an origin such as https://api.example.com (no path, query, fragment or trailing slash)' })
    .optional()
    .describe('The OAuth issuer identifier published at /.well-known/oauth-authorization-server (RFC 8414): the public origin clients reach the API at, such as https://api.example.com (no path, query, fragment or trailing slash). Unset, the origin each request came to is used: fine locally; set it in every deployment, so the metadata never depends on a Host header.'),
  LOGIN_MAX_FAILURES: z.coerce.number().int().min(1).max(1000).default(10)
    .describe('Failed logins per email (from any address, unknown emails alike) within LOGIN_FAILURE_WINDOW_S before that email gets 429 until the window ends (1-1000).'),
  LOGIN_FAILURE_WINDOW_S: z.coerce.number().int().min(1).max(86_400).default(900)
    .describe('The login throttle\'s window in seconds (1-86400).'),
  REFRESH_TOKEN_TTL_S: z.coerce.number().int().min(300).max(365 * 86_400).default(30 * 86_400)
    .describe('How long a refresh token stays usable, in seconds (300 s to a year; 30 days by default). Each rotation issues a new one, so a session slides with use.')
})
