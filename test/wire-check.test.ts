// The wire check itself (test/wire-check.ts, run on every response by test/helper.ts): it must fail on each way a
// response can differ from openapi.json, and pass the answers the document describes.
import t from 'tap'
import { buildTestApp, createUser, wireMismatchesOf } from './helper.ts'
import { wireMismatches } from './wire-check.ts'

const problem = (status: number) => JSON.stringify({ type: 'https://ledger-api.dev/problems/x', title: 'x', status, detail: 'x' })
const limited = { 'ratelimit-limit': '60', 'ratelimit-remaining': '59', 'ratelimit-reset': '1', 'x-request-id': 'r-1' }

t.test('a documented answer passes', async (t) => {
  t.same(wireMismatches({
    method: 'GET',
    route: '/balances',
    statusCode: 200,
    headers: { ...limited, 'content-type': 'application/json; charset=utf-8' },
    body: JSON.stringify({ data: [{ currency: 'USD', balance: 10 }] })
  }), [])
  t.same(wireMismatches({ method: 'GET', route: '/test/not-in-the-document', statusCode: 418, headers: {}, body: '' }), [], 'a route the document does not have is not checked')
})

t.test('each kind of difference is found', async (t) => {
  const base = { method: 'GET', route: '/balances', headers: { ...limited, 'content-type': 'application/problem+json' } }
  t.match(wireMismatches({ ...base, statusCode: 418, body: problem(418) }), [/status 418 is not documented/])
  t.match(wireMismatches({ ...base, statusCode: 404, body: problem(404) }), [/status 404 is not documented/], 'GET /balances has no 404')
  t.match(wireMismatches({ ...base, statusCode: 401, headers: { ...base.headers, 'www-authenticate': 'Bearer', 'content-type': 'application/json' }, body: problem(401) }), [/Content-Type application\/json is not documented/])
  t.match(wireMismatches({ ...base, statusCode: 401, headers: { 'content-type': 'application/problem+json', 'www-authenticate': 'Bearer' }, body: problem(401) }), [/header X-Request-Id is missing/])
  t.match(wireMismatches({ ...base, statusCode: 401, headers: { ...base.headers, 'www-authenticate': 'Bearer' }, body: JSON.stringify({ title: 'no type' }) }), [/does not match its schema/])
  t.match(wireMismatches({ ...base, statusCode: 429, headers: { ...base.headers, 'retry-after': 'soon' }, body: problem(429) }), [/header Retry-After/])
  t.match(wireMismatches({
    method: 'POST', route: '/auth/token', statusCode: 200, headers: { 'content-type': 'application/json', ...limited }, body: JSON.stringify({ access_token: 'a', token_type: 'Bearer', expires_in: 1 })
  }), [/Cache-Control is missing/, /Pragma is missing/], 'a token without no-store')
})

t.test('a route that answers a status its document lacks fails the test that caused it', async (t) => {
  const app = await buildTestApp(t, {}, {
    // The mistake under test: GET /balances answering 418, which its operation does not document.
    beforeRoutes: (instance) => {
      instance.addHook('preHandler', async (request, reply) => {
        if (request.routeOptions.url === '/balances') return reply.code(418).type('application/problem+json').send({ type: 'x', title: 'teapot', status: 418, detail: 'x' })
      })
    }
  })
  const user = await createUser(app)
  const response = await app.inject({ method: 'GET', url: '/balances', headers: { authorization: user.authorization } })
  t.equal(response.statusCode, 500, 'the answer becomes a 500')
  t.match(response.json(), { type: 'https://ledger-api.dev/problems/wire_check', detail: /GET \/balances -> 418: status 418 is not documented/ })
  const found = wireMismatchesOf(app)
  t.equal(found.length, 1, 'and it is listed for the teardown, which would fail this test')
  // Provoked on purpose: emptied, so the teardown passes.
  found.splice(0)
})
