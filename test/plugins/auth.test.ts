import { randomUUID } from 'node:crypto'
import t from 'tap'
import { buildTestApp, forgeToken } from '../helper.ts'

const userId = '00000000-0000-4000-8000-0000000000aa'
const now = () => Math.floor(Date.now() / 1000)
const claims = (overrides: Record<string, unknown> = {}) => ({
  sub: userId, sid: '00000000-0000-4000-8000-0000000000bb', tier: 'standard', scope: '', iat: now(), exp: now() + 300, iss: 'ledger-api', aud: 'ledger-api', ...overrides
})

async function appWithPrivateRoute (t: Parameters<typeof buildTestApp>[0]) {
  const app = await buildTestApp(t)
  app.get('/test/whoami', async (request) => ({ id: request.user.id, tier: request.user.tier }))
  return app
}

t.test('a valid token reaches the route with its claims', async (t) => {
  const app = await appWithPrivateRoute(t)
  const { accessToken, expiresIn } = await app.issueToken({ id: userId, tier: 'pro', sessionId: randomUUID() })
  t.equal(expiresIn, 900)
  const response = await app.inject({ method: 'GET', url: '/test/whoami', headers: { authorization: `Bearer ${accessToken}` } })
  t.equal(response.statusCode, 200)
  t.same(response.json(), { id: userId, tier: 'pro' })
})

t.test('routes are private by default and every bad token is 401', async (t) => {
  const app = await appWithPrivateRoute(t)
  const secret = app.config.JWT_SECRET
  const cases: Record<string, string | undefined> = {
    'no header': undefined,
    'wrong scheme': `Basic ${Buffer.from('a:b').toString('base64')}`,
    'token without scheme': forgeToken({ alg: 'HS256', typ: 'JWT' }, claims(), secret),
    'alg none': `Bearer ${forgeToken({ alg: 'none', typ: 'JWT' }, claims())}`,
    'other secret': `Bearer ${forgeToken({ alg: 'HS256', typ: 'JWT' }, claims(), 'another-secret-another-secret-another')}`,
    expired: `Bearer ${forgeToken({ alg: 'HS256', typ: 'JWT' }, claims({ iat: now() - 4000, exp: now() - 10 }), secret)}`,
    'no exp': `Bearer ${forgeToken({ alg: 'HS256', typ: 'JWT' }, claims({ exp: undefined }), secret)}`,
    'wrong issuer': `Bearer ${forgeToken({ alg: 'HS256', typ: 'JWT' }, claims({ iss: 'evil' }), secret)}`,
    'wrong audience': `Bearer ${forgeToken({ alg: 'HS256', typ: 'JWT' }, claims({ aud: 'other-api' }), secret)}`,
    'alg HS512': `Bearer ${forgeToken({ alg: 'HS512', typ: 'JWT' }, claims(), secret)}`,
    'sub not a user id': `Bearer ${forgeToken({ alg: 'HS256', typ: 'JWT' }, claims({ sub: "' OR 1=1 --" }), secret)}`,
    'unknown tier': `Bearer ${forgeToken({ alg: 'HS256', typ: 'JWT' }, claims({ tier: 'admin' }), secret)}`,
    garbage: 'Bearer not.a.jwt'
  }
  for (const [name, authorization] of Object.entries(cases)) {
    const response = await app.inject({ method: 'GET', url: '/test/whoami', headers: authorization === undefined ? {} : { authorization } })
    t.equal(response.statusCode, 401, name)
    t.match(response.headers['content-type'], /problem\+json/, `${name} is problem+json`)
    t.equal(response.json().status, 401, `${name} body`)
  }
})

t.test('a hand-forged token with the right secret and claims is accepted (the forger is sound)', async (t) => {
  const app = await appWithPrivateRoute(t)
  const token = forgeToken({ alg: 'HS256', typ: 'JWT' }, claims(), app.config.JWT_SECRET)
  const response = await app.inject({ method: 'GET', url: '/test/whoami', headers: { authorization: `Bearer ${token}` } })
  t.equal(response.statusCode, 200)
})

t.test('tampering with the payload breaks the signature', async (t) => {
  const app = await appWithPrivateRoute(t)
  const { accessToken } = await app.issueToken({ id: userId, tier: 'standard', sessionId: randomUUID() })
  const [head, , signature] = accessToken.split('.')
  const payload = Buffer.from(JSON.stringify(claims({ tier: 'pro' }))).toString('base64url')
  const response = await app.inject({ method: 'GET', url: '/test/whoami', headers: { authorization: `Bearer ${head}.${payload}.${signature}` } })
  t.equal(response.statusCode, 401)
})
