//! The server layers every service gets from the runtime: a per-request timeout and a
//! per-connection concurrency limit that sheds excess calls at once (RESOURCE_EXHAUSTED)
//! instead of queueing them.

use std::time::{Duration, Instant};

use relay_proto::routing::{
    routing_service_client::RoutingServiceClient, routing_service_server::RoutingServiceServer,
};
use relay_runtime::security::SecuritySettings;
use relay_runtime::{config::ServerSettings, server::ServiceHost};
use relay_tests::slow::{Slow, slow_request};
use tonic::{Code, transport::Channel};

async fn start(settings: ServerSettings, slow: Slow) -> RoutingServiceClient<Channel> {
    let server = ServiceHost::new(&settings)
        // Plaintext and no credential: these test the layers, not the boundary.
        .security(&SecuritySettings::default(), true)
        .add_service(RoutingServiceServer::new(slow))
        .bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let endpoint = format!("http://{}", server.local_addr());
    tokio::spawn(server.run_until_stopped(std::future::pending()));
    RoutingServiceClient::connect(endpoint)
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_longer_than_the_request_timeout_is_cut_off() {
    let settings = ServerSettings {
        request_timeout_ms: 200,
        ..ServerSettings::default()
    };
    let mut client = start(settings, Slow::default()).await;
    let started = Instant::now();
    let status = client
        .list_queue(slow_request(5_000))
        .await
        .expect_err("timed out");
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // A quick call on the same server still succeeds.
    client
        .list_queue(slow_request(0))
        .await
        .expect("quick call");
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_over_the_concurrency_limit_are_shed_at_once() {
    let settings = ServerSettings {
        concurrency_limit_per_connection: 1,
        ..ServerSettings::default()
    };
    let slow = Slow::default();
    let entered = slow.entered.clone();
    let client = start(settings, slow).await;

    let mut busy = client.clone();
    let first = tokio::spawn(async move { busy.list_queue(slow_request(1_000)).await });
    entered.notified().await;

    // Same connection (a cloned client shares its channel): over the limit, refused at once.
    let mut second = client.clone();
    let started = Instant::now();
    let status = second.list_queue(slow_request(0)).await.expect_err("shed");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "shedding waited {:?}",
        started.elapsed()
    );

    first
        .await
        .expect("join")
        .expect("the admitted call completes");
    // With the slot free again, calls are admitted.
    second.list_queue(slow_request(0)).await.expect("admitted");
}

async fn raw_call(endpoint: &str, path: &str, body: Vec<u8>) -> tonic::Status {
    relay_tests::raw::raw_call(endpoint, path, body)
        .await
        .expect_err("refused")
}

#[tokio::test(flavor = "multi_thread")]
async fn undecodable_and_oversized_requests_are_the_callers_fault() {
    use tonic_types::StatusExt;
    let server = ServiceHost::new(&ServerSettings::default())
        // Plaintext and no credential: these test the layers, not the boundary.
        .security(&SecuritySettings::default(), true)
        .add_service(RoutingServiceServer::new(Slow::default()))
        .bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let endpoint = format!("http://{}", server.local_addr());
    tokio::spawn(server.run_until_stopped(std::future::pending()));
    const PATH: &str = "/relay.routing.v1.RoutingService/ListQueue";
    // A bad varint, a string field that is not UTF-8, a wrong wire type, deep nested groups.
    // Field 1 as a start-group tag, 10,000 deep.
    let deep = vec![0x0b; 10_000];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "bad varint",
            // Field 99, varint, eleven continuation bytes.
            [vec![0x98, 0x06], vec![0xff; 11]].concat(),
        ),
        ("invalid UTF-8", vec![0x0a, 0x02, 0xc3, 0x28]),
        ("wrong wire type", vec![0x0d, 0x01, 0x02, 0x03, 0x04]),
        ("nested groups", deep),
    ];
    for (what, body) in cases {
        let status = raw_call(&endpoint, PATH, body).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        let details = status.get_error_details();
        assert_eq!(
            details
                .error_info()
                .map(|i| (i.reason.as_str(), i.domain.as_str())),
            Some(("UNDECODABLE_REQUEST", "relay.routing.v1")),
            "{what}"
        );
        let fields: Vec<&str> = details
            .bad_request()
            .map(|b| {
                b.field_violations
                    .iter()
                    .map(|v| v.field.as_str())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(fields, vec!["request"], "{what}");
    }
    let status = raw_call(&endpoint, PATH, vec![0; 5 * 1024 * 1024]).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        status
            .get_error_details()
            .error_info()
            .map(|i| i.reason.as_str()),
        Some("REQUEST_TOO_LARGE")
    );
}
