// The limits every app and process a test starts runs with, unless the test sets its own. They are one set because
// rate-limit buckets live in the suite's one Redis, keyed by principal or client address: a process on the
// production defaults that answers one request from 127.0.0.1 clamps that address's bucket to its own capacity
// (20), and every other test's anonymous requests from 127.0.0.1 then get a third of a token a second.
// A test that lowers a limit on purpose sends from addresses of its own (randomTestIp, documentation ranges).
export const SUITE_LIMITS = {
  RATE_LIMIT_STANDARD_CAPACITY: '100000',
  RATE_LIMIT_PRO_CAPACITY: '100000',
  RATE_LIMIT_PUBLIC_CAPACITY: '100000',
  // A busy CI machine lags its event loop; shedding is tested on purpose in observability.test.ts only.
  PRESSURE_MAX_EVENT_LOOP_DELAY_MS: '0',
  // scrypt at the production cost (2^17) takes ~128 MiB and a few hundred ms per hash: tests sign up and log in
  // hundreds of users, so they hash at the lowest cost the config accepts.
  PASSWORD_HASH_COST: '1024'
} as const
