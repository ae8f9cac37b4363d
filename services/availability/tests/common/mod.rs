//! Starting the availability service in-process for black-box tests, on port 0, with its own
//! database and Redis key prefix.

#![allow(dead_code)]

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, TimeZone, Utc};
use relay_availability::{Application, Availability};
use relay_proto::availability::{
    UpsertTeamRequest, availability_service_client::AvailabilityServiceClient,
};
use relay_runtime::Config;
use relay_runtime::clock::ManualClock;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// The instant tests start their manual clocks at.
pub fn start_time() -> DateTime<Utc> {
    Utc.timestamp_opt(Utc::now().timestamp(), 0)
        .single()
        .expect("now")
}

/// A running service.
pub struct TestApp {
    pub client: AvailabilityServiceClient<Channel>,
    pub domain: Availability,
    /// The same live store, as routing claims from it.
    pub dispatch: Arc<dyn relay_fleet::DispatchStore>,
    pub clock: Arc<ManualClock>,
    pub endpoint: String,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

/// How to start the service.
#[derive(Debug, Clone)]
pub struct Setup {
    pub database_url: String,
    pub prefix: String,
    pub backend: &'static str,
    /// `server.request_timeout_ms`, when a test needs a short one.
    pub request_timeout_ms: Option<u64>,
}

impl TestApp {
    /// Starts the service and waits until its health says SERVING (roster rebuilt).
    pub async fn start(setup: &Setup, clock: Arc<ManualClock>) -> Self {
        let config = Config::builder("availability")
            .set("insecure_dev", true)
            .set("listen", "127.0.0.1:0")
            .set("database_url", setup.database_url.as_str())
            .set("redis_url", relay_tests::redis_url())
            .set("availability.backend", setup.backend)
            .set("availability.key_prefix", setup.prefix.as_str())
            .set("server.readiness_interval_ms", 50)
            .set("server.shutdown_grace_seconds", 2)
            .set(
                "server.request_timeout_ms",
                setup.request_timeout_ms.unwrap_or(10_000),
            )
            .build()
            .expect("config");
        let app = Application::build_with_clock(config, clock.clone())
            .await
            .expect("build");
        let endpoint = format!("http://{}", app.local_addr());
        let domain = app.domain().clone();
        let dispatch = app.dispatch().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            app.run_until_stopped(async {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
        });
        let channel = Channel::from_shared(endpoint.clone())
            .expect("endpoint")
            .connect_lazy();
        wait_serving(channel.clone()).await;
        Self {
            client: AvailabilityServiceClient::new(channel),
            domain,
            dispatch,
            clock,
            endpoint,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    /// Stops the service and waits for it to exit.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.expect("service task");
        }
    }
}

async fn wait_serving(channel: Channel) {
    // The health Watch stream sends the current status, then every change: no polling.
    let mut health = HealthClient::new(channel);
    let watched = async {
        let mut updates = health
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health watch")
            .into_inner();
        while let Some(update) = updates.message().await.expect("health update") {
            if ServingStatus::try_from(update.status).ok() == Some(ServingStatus::Serving) {
                return;
            }
        }
        panic!("the health stream ended before SERVING");
    };
    tokio::time::timeout(Duration::from_secs(10), watched)
        .await
        .expect("the service never became SERVING");
}

/// A fresh Redis-backed service on its own database and prefix.
pub struct RedisEnv {
    pub database: relay_tests::TestDatabase,
    pub setup: Setup,
}

impl RedisEnv {
    pub async fn new() -> Self {
        let database = relay_tests::TestDatabase::new().await;
        let setup = Setup {
            database_url: database.url().to_owned(),
            prefix: relay_tests::unique_name("api"),
            backend: "redis",
            request_timeout_ms: None,
        };
        Self { database, setup }
    }

    /// Deletes this test's Redis keys (never FLUSHALL: other tests share the server).
    pub async fn cleanup(&self) {
        relay_tests::redis_delete_prefix(&self.setup.prefix).await;
    }
}

/// An upsert request for a team with default fields.
pub fn upsert(team_id: &str, region: &str) -> UpsertTeamRequest {
    UpsertTeamRequest {
        request_id: relay_tests::unique_name("req"),
        team_id: team_id.into(),
        display_name: format!("Team {team_id}"),
        region: region.into(),
        capabilities: vec!["emt".into(), "clinician".into(), "emt".into()],
        shift_ends_at: None,
        expected_revision: 0,
    }
}

pub use relay_tests::status::{bad_fields, reason};
