//! Metrics: OpenTelemetry instruments, read by Prometheus from the admin port and exported
//! over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._METRICS_ENDPOINT`) is set.
//!
//! Every service gets, from [`crate::layers::MetricsLayer`]:
//! - `relay_rpc_requests_total{rpc_service, rpc_method, grpc_code}`: calls answered (for
//!   server streams, counted when the stream opens or is refused);
//! - `relay_rpc_duration_seconds{rpc_service, rpc_method}`: time to the response headers (the
//!   whole call for unary RPCs);
//! - `relay_rpc_in_flight{rpc_service, rpc_method}`: calls being handled, until their
//!   response starts.
//!
//! And from [`crate::server`]: `relay_ready{service}` (1 when health is SERVING) and
//! `relay_build_info{service, version}` (always 1). Services add their domain metrics through
//! [`meter`]. Labels never carry ids, caller data or other unbounded values: only service,
//! method, code, region, priority, status, disposition, reason and such enumerations.

use std::sync::OnceLock;

use opentelemetry::{global, metrics::Meter};
use opentelemetry_sdk::{Resource, metrics::SdkMeterProvider};
use prometheus::{Encoder, TextEncoder};

use crate::BoxError;

static REGISTRY: OnceLock<prometheus::Registry> = OnceLock::new();

/// The meter every Relay instrument comes from.
#[must_use]
pub fn meter() -> Meter {
    global::meter("relay")
}

fn otlp_metrics_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|value| !value.trim().is_empty()))
}

/// Installs the process's meter provider: a Prometheus reader (served by the admin port) and,
/// when configured, a periodic OTLP exporter. Idempotent: the first call wins (several
/// services in one process, as `relay dev` runs them, share one registry).
///
/// # Errors
/// When an exporter cannot be built.
pub fn init(service_name: &str) -> Result<Option<SdkMeterProvider>, BoxError> {
    if REGISTRY.get().is_some() {
        return Ok(None);
    }
    let registry = prometheus::Registry::new();
    let reader = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .without_scope_info()
        .without_target_info()
        .build()?;
    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service_name.to_owned());
    let mut builder = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(Resource::builder().with_service_name(name).build());
    if otlp_metrics_configured() {
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .build()?;
        builder = builder.with_periodic_exporter(exporter);
    }
    let provider = builder.build();
    if REGISTRY.set(registry).is_err() {
        return Ok(None);
    }
    global::set_meter_provider(provider.clone());
    Ok(Some(provider))
}

/// The current metrics in Prometheus text format (empty before [`init`]).
#[must_use]
pub fn render() -> String {
    let Some(registry) = REGISTRY.get() else {
        return String::new();
    };
    let mut out = Vec::new();
    if let Err(error) = TextEncoder::new().encode(&registry.gather(), &mut out) {
        tracing::warn!(%error, "metrics could not be encoded");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Serves `GET /metrics` (Prometheus text) on `listener` until `shutdown`.
pub async fn serve_admin(
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                render(),
            )
        }),
    );
    if let Err(error) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::warn!(%error, "admin endpoint stopped");
    }
}
