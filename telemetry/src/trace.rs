//! OpenTelemetry traces: off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; then spans go over OTLP/HTTP
//! (`OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf`, the default, or
//! `http/json`), batched (`OTEL_BSP_*`).
//!
//! One job is one trace: the master stores the W3C `traceparent` of a job's
//! submit span with the job, starts its lease span from it and hands the
//! lease's context to the worker, whose run span and reports carry it back
//! (as `traceparent` gRPC metadata).

use std::collections::HashMap;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// The metadata key that carries a span's context between processes.
pub const TRACEPARENT: &str = "traceparent";

/// Flushes and stops the trace exporter when dropped.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("flushing traces: {e}");
        }
    }
}

fn configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

/// The OpenTelemetry layer, when configured.
pub fn layer<S>(service: &'static str) -> (Option<Box<dyn Layer<S> + Send + Sync>>, Telemetry)
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    if !configured() {
        return (None, Telemetry { provider: None });
    }
    let protocol = match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
        Ok("http/json") => Protocol::HttpJson,
        _ => Protocol::HttpBinary,
    };
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .build()
    {
        Ok(exporter) => exporter,
        Err(e) => {
            eprintln!("traces off: cannot build the OTLP exporter: {e}");
            return (None, Telemetry { provider: None });
        }
    };
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("ffleet");
    let layer = tracing_opentelemetry::layer().with_tracer(tracer).boxed();
    (
        Some(layer),
        Telemetry {
            provider: Some(provider),
        },
    )
}

/// The W3C `traceparent` of `span`, empty when it has no trace (traces off).
pub fn traceparent(span: &tracing::Span) -> String {
    let cx = span.context();
    let mut carrier: HashMap<String, String> = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    carrier.remove(TRACEPARENT).unwrap_or_default()
}

/// Makes `span` a child of the span `traceparent` names (in this process or
/// another); an empty or malformed value leaves it alone.
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let carrier: HashMap<String, String> =
        HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    let _ = span.set_parent(cx);
}
