import { z } from 'zod'
import { settingsGroup } from '../config-helpers.ts'

export const authConfig = settingsGroup('Access tokens', 'The JWTs every authenticated request carries, and the revocation list each process polls so that a revoked client or an ended session stops everywhere within a second.', {
  JWT_SECRET: z.string().min(32, 'must be at least 32 characters').optional().meta({ fillIn: true })
    .describe('HMAC secret for access tokens, at least 32 characters (e.g. `openssl rand -base64 48`); it also keys the cursor signatures. No secret is committed anywhere: it is required by compose.yaml and unless NODE_ENV is development or test, which then use the local stack\'s generated secret (.stack/jwt-secret, mode 0600, one per checkout so every worker and process agree and tokens survive restarts). Without it the boot stops with `JWT_SECRET: is required`.'),
  JWT_ISSUER: z.string().min(1).default('ledger-api')
    .describe('Token issuer (iss), pinned and checked on every request.'),
  JWT_AUDIENCE: z.string().min(1).default('ledger-api')
    .describe('Token audience (aud), pinned and checked on every request.'),
  JWT_TTL_S: z.coerce.number().int().min(60).max(3600).default(900)
    .describe('Access token lifetime in seconds (60-3600).'),
  REVOCATION_POLL_MS: z.coerce.number().int().min(50).max(800).default(500)
    .describe('How often each API process re-reads token revocations, in ms (50-800): a revoked client\'s tokens and ended sessions stop within about this long. At most 800 ms, so that with the poll\'s round trip they stop within the contract\'s 1 s on every process.'),
  REVOCATION_MAX_STALENESS_S: z.coerce.number().int().min(1).max(300).default(10)
    .describe('Seconds a process may go without a successful read of the revocation list before it answers tokens with 503 rather than trust a stale list (fail closed; 1-300).')
})
