import neostandard from 'neostandard'

export default neostandard({
  ts: true,
  // scripts/ops/api-schema.d.ts is openapi-typescript's output (`npm run openapi`), checked against it by a test.
  ignores: ['node_modules', '.stack', 'bench/results', '.tap', 'coverage', 'scripts/ops/api-schema.d.ts']
})
