// OpenTelemetry set-up, imported first by server.ts. Configured only by the standard OTEL_* variables:
// OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES name the service, OTEL_TRACES_SAMPLER(_ARG) sample, and
// OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) turns on the OTLP/HTTP exporter. With no endpoint nothing
// is exported or recorded, but every request still gets trace and span ids, so every log line keeps them.
// The app instruments itself (plugins/tracing/index.ts for requests, plugins/database/index.ts for SQL, the cache and rate
// limiter for Redis), so no monkey-patching instrumentation is loaded.
import { diag, DiagConsoleLogger, DiagLogLevel } from '@opentelemetry/api'
import { W3CTraceContextPropagator } from '@opentelemetry/core'
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http'
import { defaultResource, detectResources, envDetector, processDetector, resourceFromAttributes } from '@opentelemetry/resources'
import { AlwaysOffSampler, BatchSpanProcessor, type SpanProcessor } from '@opentelemetry/sdk-trace-base'
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node'

export function startTelemetry (env: NodeJS.ProcessEnv = process.env): NodeTracerProvider {
  // The SDK reports bad OTEL_* values (an unknown sampler, a malformed endpoint) through diag and falls back to
  // defaults; route those reports to stderr instead of dropping them, and never let them stop the service.
  diag.setLogger(new DiagConsoleLogger(), DiagLogLevel.WARN)

  const spanProcessors: SpanProcessor[] = []
  if (env.OTEL_EXPORTER_OTLP_ENDPOINT || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) {
    try {
      spanProcessors.push(new BatchSpanProcessor(new OTLPTraceExporter()))
    } catch (error) {
      diag.error('OTLP trace exporter disabled: invalid OTEL_EXPORTER_OTLP_* configuration', error)
    }
  }

  const resource = defaultResource()
    .merge(resourceFromAttributes({ 'service.name': env.OTEL_SERVICE_NAME || 'ledger-api' }))
    .merge(detectResources({ detectors: [envDetector, processDetector] }))

  // With nowhere to send spans, recording them is wasted work on every request and query. Unsampled spans still
  // carry fresh trace and span ids, so log correlation and traceparent propagation keep working.
  const sampler = spanProcessors.length === 0 && !env.OTEL_TRACES_SAMPLER ? new AlwaysOffSampler() : undefined
  const provider = new NodeTracerProvider({ resource, spanProcessors, ...(sampler === undefined ? {} : { sampler }) })
  provider.register({ propagator: new W3CTraceContextPropagator() })
  return provider
}

/** The process-wide provider; server.ts shuts it down last, which flushes spans still in the batch. */
export const telemetry = startTelemetry()
