//! W3C trace context crosses every gRPC hop: a trace id sent by a client arrives in the
//! server's span context, and a Relay client carries its current trace onward.

use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use relay_runtime::security::SecuritySettings;
use relay_runtime::{
    client::TracePropagation, config::ServerSettings, server::ServiceHost, telemetry,
};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

/// Installs, for this test's thread, a subscriber whose spans carry OpenTelemetry contexts
/// (no exporter), as `telemetry::init` does for a real process.
fn subscriber() -> tracing::subscriber::DefaultGuard {
    telemetry::install_propagator();
    let provider = telemetry::tracer_provider("relay-test").expect("provider");
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("relay-test")));
    tracing::subscriber::set_default(subscriber)
}

/// A server with only health and reflection, on an ephemeral port.
async fn start_server() -> (Channel, tokio::sync::oneshot::Sender<()>) {
    let server = ServiceHost::new(&ServerSettings::default())
        // Plaintext and no credential: these test the layers, not the boundary.
        .security(&SecuritySettings::default(), true)
        .bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    (channel, stop)
}

fn trace_response(metadata: &tonic::metadata::MetadataMap) -> (String, String) {
    let value = metadata
        .get("traceresponse")
        .expect("traceresponse header")
        .to_str()
        .expect("ascii")
        .to_owned();
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "traceresponse {value}");
    (parts[1].to_owned(), parts[2].to_owned())
}

#[tokio::test]
async fn a_trace_id_sent_by_a_client_arrives_in_the_server_span() {
    let _guard = subscriber();
    let (channel, _stop) = start_server().await;
    let mut client = HealthClient::new(channel);
    let mut request = tonic::Request::new(HealthCheckRequest::default());
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01")
            .parse()
            .expect("header"),
    );
    request
        .metadata_mut()
        .insert("x-request-id", "cad-call-42".parse().expect("header"));
    let response = client.check(request).await.expect("health check");

    let (trace_id, span_id) = trace_response(response.metadata());
    assert_eq!(
        trace_id, TRACE_ID,
        "the server span joined the client's trace"
    );
    assert_ne!(
        span_id, PARENT_SPAN_ID,
        "the server span is a child, not the parent"
    );
    assert_eq!(
        response
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("cad-call-42")
    );
}

#[tokio::test]
async fn a_request_without_trace_context_starts_a_new_trace() {
    let _guard = subscriber();
    let (channel, _stop) = start_server().await;
    let mut client = HealthClient::new(channel);
    let first = client
        .check(HealthCheckRequest::default())
        .await
        .expect("health check");
    let second = client
        .check(HealthCheckRequest::default())
        .await
        .expect("health check");
    let (first_trace, _) = trace_response(first.metadata());
    let (second_trace, _) = trace_response(second.metadata());
    assert_ne!(first_trace, "0".repeat(32));
    assert_ne!(
        first_trace, second_trace,
        "unrelated calls are unrelated traces"
    );
    let request_id = first
        .metadata()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("a request id is made");
    assert!(!request_id.is_empty());
}

#[tokio::test]
async fn a_relay_client_carries_its_current_trace_to_the_server() {
    let _guard = subscriber();
    let (channel, _stop) = start_server().await;
    let mut client = HealthClient::with_interceptor(channel, TracePropagation);

    // The span a service handler would be in: a child of a remote caller's trace.
    let remote = SpanContext::new(
        TraceId::from_hex(TRACE_ID).expect("trace id"),
        SpanId::from_hex(PARENT_SPAN_ID).expect("span id"),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let span = tracing::info_span!("handler");
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));

    let response = {
        use tracing::Instrument;
        client
            .check(HealthCheckRequest::default())
            .instrument(span)
            .await
            .expect("health check")
    };
    let (trace_id, _) = trace_response(response.metadata());
    assert_eq!(
        trace_id, TRACE_ID,
        "the outgoing call carried the caller's trace"
    );
}
