// `npm start`: with DATABASE_URL and REDIS_URL set it uses them; otherwise it brings up the project-local
// stack first, and then runs as development (NODE_ENV, unless set) signing with the stack's generated secret
// (unless JWT_SECRET is set). Either way it migrates, then serves.
import { localStackUp } from './local-stack.ts'
import { migrate } from './migrate.ts'

if (!process.env.DATABASE_URL || !process.env.REDIS_URL) {
  const env = localStackUp()
  process.env.DATABASE_URL ||= env.DATABASE_URL
  process.env.DATABASE_DIRECT_URL ||= env.DATABASE_DIRECT_URL
  process.env.REDIS_URL ||= env.REDIS_URL
  process.env.JWT_SECRET ||= env.JWT_SECRET
  // On the local stack this is a development run (an open /metrics, as `npm run diagnose` expects), unless said.
  process.env.NODE_ENV ||= 'development'
  // The local stack is for development: webhooks may go to http://localhost receivers.
  process.env.WEBHOOK_ALLOW_PRIVATE_TARGETS ||= 'true'
}

try {
  const result = await migrate(process.env.DATABASE_DIRECT_URL || process.env.DATABASE_URL || '', (line) => console.error(line))
  console.error(`migrations: ${result.applied.length} applied, ${result.skipped} already in place`)
} catch (error) {
  console.error('migrate failed:', error instanceof Error ? error.message : error)
  process.exit(1)
}

await import('../server.ts')
