//! The four service binaries as real processes: they start on an ephemeral port, report
//! health truthfully, list their API over reflection, and stop cleanly on SIGTERM.

use std::time::{Duration, Instant};

use relay_tests::{ServiceProcess, TestDatabase, redis_url};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

const SERVICES: [(&str, &str); 4] = [
    ("relay-intake", "relay.intake.v1.IntakeService"),
    (
        "relay-availability",
        "relay.availability.v1.AvailabilityService",
    ),
    ("relay-routing", "relay.routing.v1.RoutingService"),
    ("relay-directory", "relay.directory.v1.DirectoryService"),
];

/// Settings that keep the tests quick: readiness re-checked every 100 ms, a 5 s grace.
const FAST: [(&str, &str); 2] = [
    ("RELAY_SERVER__READINESS_INTERVAL_MS", "100"),
    ("RELAY_SERVER__SHUTDOWN_GRACE_SECONDS", "5"),
];

async fn health_status(channel: Channel, service: &str) -> Option<ServingStatus> {
    let mut client = HealthClient::new(channel);
    let response = client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(response.into_inner().status).ok()
}

/// Polls health until it reports `want`, or fails after 20 seconds with the last status seen.
async fn wait_for_status(endpoint: &str, service: &str, want: ServingStatus) {
    let channel = Channel::from_shared(endpoint.to_owned())
        .expect("endpoint")
        .connect_lazy();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = None;
    while Instant::now() < deadline {
        last = health_status(channel.clone(), service).await;
        if last == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{endpoint} health for {service:?} stayed {last:?}, wanted {want:?}");
}

async fn reflected_services(endpoint: &str) -> Vec<String> {
    let channel = Channel::from_shared(endpoint.to_owned())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses
        .next()
        .await
        .expect("one response")
        .expect("reflection answer");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_binary_serves_health_and_reflection_and_stops_on_sigterm() {
    let database = TestDatabase::new().await;
    let redis = redis_url();
    for (binary, service) in SERVICES {
        let mut env = vec![
            ("RELAY_DATABASE_URL", database.url()),
            ("RELAY_REDIS_URL", redis.as_str()),
        ];
        env.extend(FAST);
        let mut process = ServiceProcess::start(binary, &env);
        let endpoint = process.endpoint();

        wait_for_status(&endpoint, "", ServingStatus::Serving).await;
        wait_for_status(&endpoint, service, ServingStatus::Serving).await;

        let listed = reflected_services(&endpoint).await;
        assert!(
            listed.iter().any(|s| s == service),
            "{binary} lists {listed:?}"
        );
        assert!(
            listed.iter().any(|s| s == "grpc.health.v1.Health"),
            "{binary} lists {listed:?}"
        );
        for (_, other) in SERVICES {
            assert!(
                other == service || !listed.iter().any(|s| s == other),
                "{binary} lists {other}, which it does not serve: {listed:?}"
            );
        }
        // A call to a service this port does not serve names it.
        let channel = Channel::from_shared(endpoint.clone())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let (status, other) = if service == "relay.routing.v1.RoutingService" {
            let status =
                relay_proto::intake::intake_service_client::IntakeServiceClient::new(channel)
                    .get_incident(relay_proto::intake::GetIncidentRequest::default())
                    .await
                    .expect_err("not served here");
            (status, "relay.intake.v1.IntakeService")
        } else {
            let status =
                relay_proto::routing::routing_service_client::RoutingServiceClient::new(channel)
                    .list_queue(relay_proto::routing::ListQueueRequest::default())
                    .await
                    .expect_err("not served here");
            (status, "relay.routing.v1.RoutingService")
        };
        assert_eq!(status.code(), tonic::Code::Unimplemented, "{binary}");
        assert!(
            status.message().contains(other) && status.message().contains(service),
            "{binary}: {status:?}"
        );

        process.signal("TERM");
        let status = process
            .wait_timeout(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{binary} did not exit within the grace period"));
        assert!(status.success(), "{binary} exited with {status}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_not_serving_while_a_dependency_is_unreachable() {
    let database = TestDatabase::new().await;
    // Nothing listens on port 1: Redis is "down" for this routing process.
    let mut env = vec![
        ("RELAY_DATABASE_URL", database.url()),
        ("RELAY_REDIS_URL", "redis://127.0.0.1:1"),
    ];
    env.extend(FAST);
    let process = ServiceProcess::start("relay-routing", &env);
    let endpoint = process.endpoint();
    // The process answers (it is alive) but says it is not ready, and keeps saying so.
    wait_for_status(&endpoint, "", ServingStatus::NotServing).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let channel = Channel::from_shared(endpoint)
        .expect("endpoint")
        .connect_lazy();
    assert_eq!(
        health_status(channel.clone(), "relay.routing.v1.RoutingService").await,
        Some(ServingStatus::NotServing)
    );
    // Liveness does not depend on Redis: the pod is unready, not restarted.
    assert_eq!(
        health_status(channel, "liveness").await,
        Some(ServingStatus::Serving)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_routing_process_validates_a_request_over_the_wire() {
    use relay_proto::routing::{ListQueueRequest, routing_service_client::RoutingServiceClient};
    let database = TestDatabase::new().await;
    let redis = redis_url();
    let process = ServiceProcess::start(
        "relay-routing",
        &[
            ("RELAY_DATABASE_URL", database.url()),
            ("RELAY_REDIS_URL", redis.as_str()),
        ],
    );
    let mut client = RoutingServiceClient::connect(process.endpoint())
        .await
        .expect("connect");
    let status = client
        .list_queue(ListQueueRequest::default())
        .await
        .expect_err("region is required");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("region"), "{}", status.message());
}

fn run_to_exit(binary: &str, env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(relay_tests::binary_path(binary))
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run binary")
}

#[test]
fn a_bad_configuration_value_is_one_line_naming_the_key() {
    let cases = [
        ("RELAY_LISTEN", "not-an-address", "`listen`"),
        (
            "RELAY_SERVER__REQUEST_TIMEOUT_MS",
            "soon",
            "server.request_timeout_ms",
        ),
        ("RELAY_LOG_FORMAT", "xml", "log_format"),
    ];
    for (key, value, named) in cases {
        let output = run_to_exit("relay-availability", &[(key, value)]);
        assert_eq!(output.status.code(), Some(2), "{key}={value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{key}={value} printed {stderr}");
        assert!(lines[0].contains(named), "{key}={value} printed {stderr}");
        assert!(lines[0].contains(key), "{key}={value} printed {stderr}");
    }
}

#[test]
fn settings_read_after_start_up_are_one_line_and_exit_2_too() {
    // A service's own section, the database URL and the log filter are read after the
    // shared settings: they too must name the right variable once and exit 2.
    let cases = [
        (
            vec![
                ("RELAY_INTAKE__BOGUS_KEY", "1"),
                (
                    "RELAY_DATABASE_URL",
                    "postgres://postgres@127.0.0.1/postgres",
                ),
            ],
            "RELAY_INTAKE__BOGUS_KEY",
        ),
        (vec![], "RELAY_DATABASE_URL"),
        (vec![("RELAY_LOG", "info,[[[")], "RELAY_LOG"),
    ];
    for (env, named) in cases {
        let mut env = env;
        env.extend([
            ("RELAY_LISTEN", "127.0.0.1:0"),
            ("RELAY_ADMIN_LISTEN", "127.0.0.1:0"),
            ("RELAY_INSECURE_DEV", "true"),
        ]);
        if !env.iter().any(|(k, _)| *k == "RELAY_LOG") {
            env.push(("RELAY_LOG", "error"));
        }
        let output = run_to_exit("relay-intake", &env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{named}: {stderr}");
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("configuration error"))
            .collect();
        assert_eq!(errors.len(), 1, "{named} once: {stderr}");
        assert!(errors[0].contains(named), "{named}: {stderr}");
        assert_eq!(
            stderr.matches(named).count(),
            1,
            "{named} printed once: {stderr}"
        );
    }
    let version = std::process::Command::new(relay_tests::binary_path("relay-routing"))
        .arg("--version")
        .output()
        .expect("run --version");
    assert!(version.status.success());
    assert!(
        String::from_utf8_lossy(&version.stdout).starts_with("relay-routing 0."),
        "{version:?}"
    );
}

#[test]
fn a_missing_required_url_names_its_variable() {
    let output = run_to_exit("relay-intake", &[("RELAY_LISTEN", "127.0.0.1:0")]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("RELAY_DATABASE_URL"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn outside_development_every_service_needs_the_shared_page_token_secret() {
    // Two replicas with random keys refuse each other's page tokens, so a deployment must
    // give every replica the same one: without it, no service starts.
    let database = TestDatabase::new().await;
    for (binary, _) in SERVICES {
        let output = run_to_exit(
            binary,
            &[
                ("RELAY_LISTEN", "127.0.0.1:0"),
                ("RELAY_ADMIN_LISTEN", "127.0.0.1:0"),
                ("RELAY_DATABASE_URL", database.url()),
                ("RELAY_REDIS_URL", "redis://127.0.0.1:6379"),
            ],
        );
        assert!(
            !output.status.success(),
            "{binary} started without a secret"
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("RELAY_PAGE_TOKEN_SECRET"),
            "{binary}: {stderr}"
        );
    }
}

#[test]
fn the_relay_tool_explains_its_commands() {
    let output = run_to_exit("relay", &[("PATH", "/usr/bin:/bin")]);
    assert!(!output.status.success());
    let output = std::process::Command::new(relay_tests::binary_path("relay"))
        .arg("--help")
        .output()
        .expect("run relay --help");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for command in ["dev", "simulate", "directory"] {
        assert!(
            help.contains(command),
            "relay --help lacks {command}: {help}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_creates_each_service_schema_and_exits() {
    use sqlx::Connection;
    let database = TestDatabase::new().await;
    for (binary, _) in SERVICES {
        let output = std::process::Command::new(relay_tests::binary_path(binary))
            .arg("migrate")
            .env_clear()
            .env("RELAY_DATABASE_URL", database.url())
            .env("RELAY_REDIS_URL", redis_url())
            .output()
            .expect("run migrate");
        assert!(
            output.status.success(),
            "{binary} migrate failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut connection = sqlx::PgConnection::connect(database.url())
        .await
        .expect("connect");
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname IN ('intake', 'availability', 'routing', 'directory') ORDER BY 1",
    )
    .fetch_all(&mut connection)
    .await
    .expect("schemas");
    assert_eq!(schemas, ["availability", "directory", "intake", "routing"]);
}
