//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set, a service exports its spans over OTLP/gRPC, named by
//! `OTEL_SERVICE_NAME`, in the caller's trace, and flushes them on shutdown.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use relay_tests::{ServiceProcess, TestDatabase};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";

/// An OTLP collector that keeps every export request.
#[derive(Debug, Clone, Default)]
struct Collector {
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.received
            .lock()
            .expect("lock")
            .push(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_are_exported_over_otlp_in_the_callers_trace() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let collector_addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let database = TestDatabase::new().await;
    let endpoint = format!("http://{collector_addr}");
    let mut process = ServiceProcess::start(
        "relay-directory",
        &[
            ("RELAY_DATABASE_URL", database.url()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "relay-directory-under-test"),
        ],
    );
    let channel = Channel::from_shared(process.endpoint())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut request = Request::new(HealthCheckRequest::default());
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-b7ad6b7169203331-01")
            .parse()
            .expect("header"),
    );
    HealthClient::new(channel)
        .check(request)
        .await
        .expect("health check");

    // Shutdown flushes the batch exporter.
    process.signal("TERM");
    let status = process
        .wait_timeout(Duration::from_secs(15))
        .expect("exits after SIGTERM");
    assert!(status.success(), "exit {status}");

    let received = collector.received.lock().expect("lock").clone();
    let spans: Vec<(String, String)> = received
        .iter()
        .flat_map(|request| &request.resource_spans)
        .flat_map(|resource_spans| {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|attribute| attribute.key == "service.name")
                .and_then(|attribute| attribute.value.as_ref())
                .map(|value| format!("{:?}", value.value))
                .unwrap_or_default();
            resource_spans
                .scope_spans
                .iter()
                .flat_map(|scope| &scope.spans)
                .map(move |span| (service.clone(), hex(&span.trace_id)))
        })
        .collect();
    assert!(
        spans
            .iter()
            .any(|(service, trace)| trace == TRACE_ID
                && service.contains("relay-directory-under-test")),
        "no exported span in trace {TRACE_ID} from relay-directory-under-test; got {spans:?}; stderr {:?}",
        process.stderr_lines()
    );
}
