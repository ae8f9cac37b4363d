//! The server layers every service gets from the runtime: a per-request timeout and a
//! per-connection concurrency limit that sheds excess calls at once (RESOURCE_EXHAUSTED)
//! instead of queueing them.

use std::time::{Duration, Instant};

use relay_proto::routing::{
    routing_service_client::RoutingServiceClient, routing_service_server::RoutingServiceServer,
};
use relay_runtime::{config::ServerSettings, server::ServiceHost};
use relay_tests::slow::{Slow, slow_request};
use tonic::{Code, transport::Channel};

async fn start(settings: ServerSettings, slow: Slow) -> RoutingServiceClient<Channel> {
    let server = ServiceHost::new(&settings)
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
