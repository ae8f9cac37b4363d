//! Logs and traces.
//!
//! Logs go to stderr through `tracing`, filtered by `RELAY_LOG`, as text or JSON
//! (`RELAY_LOG_FORMAT`). Every span also becomes an OpenTelemetry span; they are exported over
//! OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//! set, with `OTEL_SERVICE_NAME` naming the service. The W3C trace context propagator is
//! installed globally so [`crate::layers`] and [`crate::client`] carry `traceparent` across
//! every gRPC hop, whether or not spans are exported.
//!
//! Never put caller names, phone numbers or narratives in a span or a log line.

use std::sync::OnceLock;

use opentelemetry::{global, propagation::TextMapCompositePropagator, trace::TracerProvider as _};
use opentelemetry_sdk::{
    Resource,
    propagation::{BaggagePropagator, TraceContextPropagator},
    trace::SdkTracerProvider,
};
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

use crate::{BoxError, config::LogFormat};

/// Keeps the tracer provider alive; [`TelemetryGuard::shutdown`] flushes spans not yet exported.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
    meters: Option<opentelemetry_sdk::metrics::SdkMeterProvider>,
}

impl TelemetryGuard {
    /// Flushes and stops the exporter. Call it last, after the server has drained.
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "telemetry shutdown failed");
        }
        if let Some(meters) = self.meters
            && let Err(error) = meters.shutdown()
        {
            tracing::warn!(%error, "metrics shutdown failed");
        }
    }
}

static PROPAGATOR: OnceLock<()> = OnceLock::new();

/// Installs the W3C trace context (and baggage) propagator. Idempotent.
pub fn install_propagator() {
    PROPAGATOR.get_or_init(|| {
        global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ]));
    });
}

/// Whether the standard OpenTelemetry variables ask for export.
fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|value| !value.trim().is_empty()))
}

/// Builds the tracer provider: with a batch OTLP exporter when configured, otherwise one that
/// records span contexts (so trace ids propagate) and exports nothing.
///
/// # Errors
/// When the OTLP exporter cannot be built from its environment variables.
pub fn tracer_provider(service_name: &str) -> Result<SdkTracerProvider, BoxError> {
    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service_name.to_owned());
    let resource = Resource::builder().with_service_name(name).build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if otlp_configured() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(builder.build())
}

/// Sets up logging and tracing for the process. Call once, from `main`.
///
/// # Errors
/// When the log filter is invalid, the exporter cannot be built, or a subscriber is already
/// installed.
pub fn init(
    service_name: &str,
    filter: &str,
    format: LogFormat,
) -> Result<TelemetryGuard, BoxError> {
    install_propagator();
    let filter = EnvFilter::try_new(filter).map_err(|error| {
        crate::config::ConfigError::new(format!("invalid value for `log` (RELAY_LOG): {error}"))
    })?;
    let provider = tracer_provider(service_name)?;
    let meters = crate::metrics::init(service_name)?;
    let tracer = provider.tracer(service_name.to_owned());
    global::set_tracer_provider(provider.clone());

    let fmt_layer = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init()?;
    Ok(TelemetryGuard { provider, meters })
}
