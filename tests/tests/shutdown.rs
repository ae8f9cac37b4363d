//! Graceful shutdown: when the shutdown signal arrives, health turns NOT_SERVING, calls in
//! flight finish, and the server stops within the grace period even if a call would not.

use std::time::{Duration, Instant};

use relay_proto::routing::{
    routing_service_client::RoutingServiceClient, routing_service_server::RoutingServiceServer,
};
use relay_runtime::security::SecuritySettings;
use relay_runtime::{config::ServerSettings, server::ServiceHost};
use relay_tests::slow::{Slow, slow_request};
use tokio::sync::oneshot;
use tonic::transport::Channel;

struct Running {
    endpoint: String,
    entered: std::sync::Arc<tokio::sync::Notify>,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<Result<(), relay_runtime::BoxError>>,
}

async fn start(grace_seconds: u64) -> Running {
    let settings = ServerSettings {
        shutdown_grace_seconds: grace_seconds,
        ..ServerSettings::default()
    };
    let slow = Slow::default();
    let entered = slow.entered.clone();
    let server = ServiceHost::new(&settings)
        // Plaintext and no credential: these test the layers, not the boundary.
        .security(&SecuritySettings::default(), true)
        .add_service(RoutingServiceServer::new(slow))
        .bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let endpoint = format!("http://{}", server.local_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(server.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    Running {
        endpoint,
        entered,
        stop,
        done,
    }
}

async fn client(endpoint: &str) -> RoutingServiceClient<Channel> {
    RoutingServiceClient::connect(endpoint.to_owned())
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread")]
async fn in_flight_calls_finish_before_the_server_stops() {
    let running = start(10).await;
    let mut slow_client = client(&running.endpoint).await;
    let in_flight = tokio::spawn(async move { slow_client.list_queue(slow_request(700)).await });
    // Once the call is in the handler, ask the server to stop.
    running.entered.notified().await;
    let started = Instant::now();
    running.stop.send(()).expect("server running");

    let answer = in_flight.await.expect("join");
    assert!(answer.is_ok(), "the in-flight call was cut off: {answer:?}");
    running
        .done
        .await
        .expect("join")
        .expect("server stopped cleanly");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "drained in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_longer_than_the_grace_period_does_not_hold_the_server() {
    let running = start(1).await;
    let mut slow_client = client(&running.endpoint).await;
    let _stuck = tokio::spawn(async move { slow_client.list_queue(slow_request(60_000)).await });
    running.entered.notified().await;
    let started = Instant::now();
    running.stop.send(()).expect("server running");
    running
        .done
        .await
        .expect("join")
        .expect("server stopped within the grace period");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "stopped after {took:?} with a 1 s grace"
    );
}
