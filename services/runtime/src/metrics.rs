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

/// Whether [`init`] installed a provider (a service binary), so that instruments whose
/// callbacks hold resources (a pool) are registered only where someone reads them.
#[must_use]
pub fn enabled() -> bool {
    REGISTRY.get().is_some()
}

/// Reports a database pool's connections (`relay_db_pool_connections{pool, state}`: idle and
/// in use, against `relay_db_pool_max_connections{pool}`).
pub fn observe_pool<DB: sqlx::Database>(name: &str, pool: &sqlx::Pool<DB>, max: u32) {
    if !enabled() {
        return;
    }
    let pool = pool.clone();
    let label = name.to_owned();
    let gauge = meter()
        .u64_observable_gauge("relay_db_pool_connections")
        .with_description("Database pool connections, idle or in use")
        .with_callback(move |gauge| {
            let size = u64::from(pool.size());
            let idle = u64::try_from(pool.num_idle()).unwrap_or(u64::MAX);
            gauge.observe(
                idle,
                &[
                    opentelemetry::KeyValue::new("pool", label.clone()),
                    opentelemetry::KeyValue::new("state", "idle"),
                ],
            );
            gauge.observe(
                size.saturating_sub(idle),
                &[
                    opentelemetry::KeyValue::new("pool", label.clone()),
                    opentelemetry::KeyValue::new("state", "in_use"),
                ],
            );
        })
        .build();
    let label = name.to_owned();
    let limit = meter()
        .u64_observable_gauge("relay_db_pool_max_connections")
        .with_description("The pool's configured maximum")
        .with_callback(move |gauge| {
            gauge.observe(
                u64::from(max),
                &[opentelemetry::KeyValue::new("pool", label.clone())],
            );
        })
        .build();
    POOL_GAUGES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .extend([gauge, limit]);
}

/// Pool gauges, kept for the process's life (a service's pools live as long).
static POOL_GAUGES: std::sync::Mutex<Vec<opentelemetry::metrics::ObservableGauge<u64>>> =
    std::sync::Mutex::new(Vec::new());

/// Records one readiness check of a dependency: `relay_dependency_check_duration_seconds{check}`
/// (the round trip: `SELECT 1`, `PING`) and `relay_dependency_checks_total{check, result}`.
pub fn record_check(check: &str, seconds: f64, result: &'static str) {
    static INSTRUMENTS: OnceLock<(
        opentelemetry::metrics::Histogram<f64>,
        opentelemetry::metrics::Counter<u64>,
    )> = OnceLock::new();
    let (duration, checks) = INSTRUMENTS.get_or_init(|| {
        (
            meter()
                .f64_histogram("relay_dependency_check_duration")
                .with_unit("s")
                .with_description(
                    "Round trip of a readiness check (PostgreSQL SELECT 1, Redis PING)",
                )
                .with_boundaries(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0,
                ])
                .build(),
            meter()
                .u64_counter("relay_dependency_checks")
                .with_description("Readiness checks by dependency and result (ok, failed, timeout)")
                .build(),
        )
    });
    let name = opentelemetry::KeyValue::new("check", check.to_owned());
    duration.record(seconds, std::slice::from_ref(&name));
    checks.add(1, &[name, opentelemetry::KeyValue::new("result", result)]);
}

fn watchers() -> &'static opentelemetry::metrics::UpDownCounter<i64> {
    static WATCHERS: OnceLock<opentelemetry::metrics::UpDownCounter<i64>> = OnceLock::new();
    WATCHERS.get_or_init(|| {
        meter()
            .i64_up_down_counter("relay_event_stream_watchers")
            .with_description(
                "Event streams open (WatchIncidentEvents, WatchAssignments, WatchTeams)",
            )
            .build()
    })
}

/// An open event stream, counted in `relay_event_stream_watchers{stream}` until dropped.
#[derive(Debug)]
pub struct Watcher(&'static str);

impl Watcher {
    /// Counts a stream of `stream` (the RPC name) as open.
    #[must_use]
    pub fn open(stream: &'static str) -> Self {
        watchers().add(1, &[opentelemetry::KeyValue::new("stream", stream)]);
        Self(stream)
    }

    /// Counts a heartbeat sent on it (`relay_event_stream_heartbeats_total{stream}`).
    pub fn heartbeat(&self) {
        static HEARTBEATS: OnceLock<opentelemetry::metrics::Counter<u64>> = OnceLock::new();
        HEARTBEATS
            .get_or_init(|| {
                meter()
                    .u64_counter("relay_event_stream_heartbeats")
                    .with_description("Heartbeats sent on quiet event streams")
                    .build()
            })
            .add(1, &[opentelemetry::KeyValue::new("stream", self.0)]);
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        watchers().add(-1, &[opentelemetry::KeyValue::new("stream", self.0)]);
    }
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

/// Serves the admin endpoint on `listener` until `shutdown`: `GET /metrics` (Prometheus
/// text), and for probes that cannot speak the gRPC port's TLS (Kubernetes' gRPC probes
/// cannot), `GET /readyz` (200 while health is SERVING, 503 otherwise: dependencies down, or
/// draining after SIGTERM) and `GET /healthz` (200 while the process serves; it never depends
/// on a database).
pub async fn serve_admin(
    listener: tokio::net::TcpListener,
    ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    use axum::http::StatusCode;
    let router = axum::Router::new()
        .route(
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
        )
        .route("/healthz", axum::routing::get(|| async { "SERVING\n" }))
        .route(
            "/readyz",
            axum::routing::get(move || async move {
                if ready.load(std::sync::atomic::Ordering::Relaxed) {
                    (StatusCode::OK, "SERVING\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "NOT_SERVING\n")
                }
            }),
        );
    if let Err(error) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::warn!(%error, "admin endpoint stopped");
    }
}
