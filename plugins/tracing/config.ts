import { z } from 'zod'
import { settingsGroup } from '../config-helpers.ts'

/**
 * The standard OTEL_* variables telemetry.ts hands to the OpenTelemetry SDK, which reads and checks them itself (a
 * bad value is reported on stderr and replaced by the SDK's default, never stopping the service). They are not part
 * of the parsed configuration; this schema only documents them.
 */
export const tracingConfig = settingsGroup('OpenTelemetry', 'Read by the OpenTelemetry SDK (telemetry.ts), not by the configuration. Every request gets trace and span ids, so every log line keeps them, whether or not spans are exported.', {
  OTEL_SERVICE_NAME: z.string().default('ledger-api')
    .describe('Service name on every span.'),
  OTEL_EXPORTER_OTLP_ENDPOINT: z.string().optional().meta({ example: 'http://localhost:4318' })
    .describe('OTLP/HTTP collector endpoint (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT); unset: spans are made for log correlation but neither recorded nor exported.'),
  OTEL_TRACES_SAMPLER: z.string().optional().meta({ example: 'parentbased_always_on' })
    .describe('Sampler: parentbased_always_on (the SDK\'s default when an endpoint is set), parentbased_traceidratio with OTEL_TRACES_SAMPLER_ARG, always_off, ...')
})
