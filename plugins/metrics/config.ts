import { z } from 'zod'
import { settingsGroup } from '../config-helpers.ts'

export const metricsConfig = settingsGroup('Metrics', 'The Prometheus endpoint, GET /metrics.', {
  METRICS_TOKEN: z.string().min(16).optional()
    .describe('Bearer token GET /metrics requires (at least 16 characters), on OPS_PORT too when set. On PORT in production /metrics exists only with it (404 without: absent rather than refusing to boot, since metrics are optional; the boot log says so); with OPS_PORT set, never on PORT.')
})
