//! Black-box tests: the routing server on 127.0.0.1:0, called through the generated client.

mod common;

use std::{sync::Arc, time::Duration};

use common::{INCIDENT, TestFleet, team};
use relay_proto::{
    common::{AssignmentMode, TeamStatus},
    routing::{
        AssignTeamRequest, Assignment, AssignmentEventKind, AssignmentOutcome, ReleaseTeamRequest,
        WatchAssignmentsRequest, WatchAssignmentsResponse,
        routing_service_client::RoutingServiceClient,
    },
};
use relay_routing::Application;
use relay_runtime::Config;
use relay_runtime::clock::{Clock, SystemClock};
use relay_tests::{TestDatabase, status::violated_fields};
use tokio::sync::oneshot;
use tonic::{Code, Streaming, transport::Channel};
use tonic_types::StatusExt;

struct Server {
    client: RoutingServiceClient<Channel>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    app_engine: relay_routing::engine::Engine,
}

impl Server {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.task.await;
    }
}

fn config(database: &TestDatabase) -> Config {
    Config::builder("routing")
        .set("insecure_dev", true)
        .set("listen", "127.0.0.1:0")
        .set("database_url", database.url())
        .set("routing.fleet", "memory")
        .set("routing.maintenance_interval_ms", 50)
        .build()
        .expect("config")
}

async fn start(database: &TestDatabase, fleet: Arc<TestFleet>) -> Server {
    let config = config(database);
    Application::migrate(&config).await.expect("migrate");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let app = Application::build_with_fleet(config, fleet.store(), clock)
        .await
        .expect("build");
    let addr = app.local_addr();
    let app_engine = app.engine().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        app.run_until_stopped(async move {
            let _ = stopped.await;
        })
        .await
        .expect("serve");
    });
    let client = RoutingServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    Server {
        client,
        stop: Some(stop),
        task,
        app_engine,
    }
}

fn request(
    request_id: &str,
    incident_id: &str,
    region: &str,
    required: &[&str],
) -> AssignTeamRequest {
    common::assign(
        request_id,
        incident_id,
        region,
        AssignmentMode::AutoAssign,
        2,
        required,
    )
}

async fn next_event(
    stream: &mut Streaming<WatchAssignmentsResponse>,
) -> relay_proto::routing::AssignmentEvent {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an event within 10 s")
        .expect("stream ok")
        .expect("stream open")
        .event
        .expect("event set")
}

/// A server over a fresh record and an in-process fleet with one AVAILABLE team, t1.
async fn one_team_served() -> (TestDatabase, Arc<TestFleet>, String, Server) {
    let database = TestDatabase::new().await;
    let fleet = Arc::new(TestFleet::default());
    let region = relay_tests::unique_name("region");
    fleet.upsert_team(&region, team("t1", 500.0, &[], 5, chrono::Utc::now()));
    let server = start(&database, fleet.clone()).await;
    (database, fleet, region, server)
}

/// The region's events from the next one on.
async fn watch_from_now(server: &mut Server, region: &str) -> Streaming<WatchAssignmentsResponse> {
    server
        .client
        .watch_assignments(WatchAssignmentsRequest {
            region: region.to_owned(),
            after_event_id: String::new(),
        })
        .await
        .expect("watch")
        .into_inner()
}

#[tokio::test]
async fn assignments_stream_in_order_and_resume_without_gap_across_a_restart() {
    let (database, fleet, region, mut server) = one_team_served().await;
    let mut stream = watch_from_now(&mut server, &region).await;

    let assigned = server
        .client
        .assign_team(request("r1", "inc-1", &region, &[]))
        .await
        .expect("assign")
        .into_inner();
    assert_eq!(assigned.outcome(), AssignmentOutcome::Assigned);
    let queued = server
        .client
        .assign_team(request("r2", "inc-2", &region, &[]))
        .await
        .expect("queue")
        .into_inner();
    assert_eq!(queued.outcome(), AssignmentOutcome::Queued);
    // Releasing the team lets the queue assign it to inc-2.
    server
        .client
        .release_team(ReleaseTeamRequest {
            request_id: "rel-1".into(),
            assignment_id: assigned.assignment.expect("assigned").assignment_id,
            reason: "done".into(),
        })
        .await
        .expect("release");
    let mut seen = Vec::new();
    for _ in 0..4 {
        let event = next_event(&mut stream).await;
        seen.push((
            event.event_id.clone(),
            event.kind(),
            event.incident_id.clone(),
        ));
    }
    let kinds: Vec<(AssignmentEventKind, &str)> =
        seen.iter().map(|(_, k, i)| (*k, i.as_str())).collect();
    assert_eq!(
        kinds,
        [
            (AssignmentEventKind::Assigned, "inc-1"),
            (AssignmentEventKind::Queued, "inc-2"),
            (AssignmentEventKind::Released, "inc-1"),
            (AssignmentEventKind::Assigned, "inc-2"),
        ]
    );
    drop(stream);

    // A restarted server resumes after the first event: the other three, once each.
    server.stop().await;
    let mut server = start(&database, fleet.clone()).await;
    let mut resumed = server
        .client
        .watch_assignments(WatchAssignmentsRequest {
            region: region.clone(),
            after_event_id: seen[0].0.clone(),
        })
        .await
        .expect("resume")
        .into_inner();
    for expected in &seen[1..] {
        let event = next_event(&mut resumed).await;
        assert_eq!(
            &(
                event.event_id.clone(),
                event.kind(),
                event.incident_id.clone()
            ),
            expected
        );
    }
    // The next event is new, not a repeat.
    fleet.set_status("t1", TeamStatus::OnScene);
    fleet.set_status("t1", TeamStatus::Available);
    let event = next_event(&mut resumed).await;
    assert_eq!(event.kind(), AssignmentEventKind::Released);
    assert_eq!(
        event.assignment.expect("assignment").end_reason,
        "team cleared"
    );

    // Once the history is pruned, resuming from before it is refused.
    server
        .app_engine
        .store()
        .prune(chrono::Utc::now() + chrono::Duration::hours(1))
        .await
        .expect("prune");
    let error = server
        .client
        .watch_assignments(WatchAssignmentsRequest {
            region: region.clone(),
            after_event_id: seen[0].0.clone(),
        })
        .await
        .expect_err("expired");
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert_eq!(
        error.get_error_details().error_info().expect("info").reason,
        "EVENT_HISTORY_EXPIRED"
    );
    server.stop().await;
}

#[tokio::test]
async fn errors_carry_their_reason_fields_and_metadata_over_the_wire() {
    let database = TestDatabase::new().await;
    let fleet = Arc::new(TestFleet::default());
    let region = relay_tests::unique_name("region");
    fleet.upsert_team(&region, team("t1", 500.0, &[], 5, chrono::Utc::now()));
    let mut server = start(&database, fleet.clone()).await;

    let mut bad = request("", "inc-1", &region, &["BAD"]);
    bad.location = None;
    let error = server.client.assign_team(bad).await.expect_err("invalid");
    assert_eq!(error.code(), Code::InvalidArgument);
    let details = error.get_error_details();
    assert_eq!(details.error_info().expect("info").reason, "INVALID_FIELD");
    assert_eq!(
        details.error_info().expect("info").domain,
        "relay.routing.v1"
    );
    assert_eq!(
        violated_fields(&error),
        ["request_id", "location", "required_capabilities[0]"]
    );
    assert_eq!(fleet.all_teams()[0].snapshot.status, TeamStatus::Available);

    let first = server
        .client
        .assign_team(request("r1", "inc-1", &region, &[]))
        .await
        .expect("assign")
        .into_inner()
        .assignment
        .expect("assigned");
    let error = server
        .client
        .assign_team(request("r2", "inc-1", &region, &[]))
        .await
        .expect_err("already assigned");
    assert_eq!(error.code(), Code::AlreadyExists);
    let info = error
        .get_error_details()
        .error_info()
        .expect("info")
        .clone();
    assert_eq!(info.reason, "INCIDENT_ALREADY_ASSIGNED");
    assert_eq!(
        info.metadata.get("assignment_id"),
        Some(&first.assignment_id)
    );
    assert_eq!(info.metadata.get("team_id").map(String::as_str), Some("t1"));

    let error = server
        .client
        .watch_assignments(WatchAssignmentsRequest {
            region: region.clone(),
            after_event_id: "not-an-id".into(),
        })
        .await
        .expect_err("bad id");
    assert_eq!(error.code(), Code::InvalidArgument);
    let error = server
        .client
        .get_assignment(relay_proto::routing::GetAssignmentRequest {
            assignment_id: "missing".into(),
        })
        .await
        .expect_err("missing");
    assert_eq!(error.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn the_queue_escalates_on_its_own_and_without_redis_startup_names_the_missing_url() {
    let database = TestDatabase::new().await;
    // Priority 1 waits at most 1 s in this region.
    let config = Config::builder("routing")
        .set("insecure_dev", true)
        .set("listen", "127.0.0.1:0")
        .set("database_url", database.url())
        .build()
        .expect("config");
    // The fleet is availability's store in Redis: without a Redis URL routing cannot start.
    let error = Application::build(config).await.expect_err("no fleet");
    assert!(error.to_string().contains("RELAY_REDIS_URL"), "{error}");

    let fleet = Arc::new(TestFleet::default());
    let region = relay_tests::unique_name("region");
    let config = Config::builder("routing")
        .set("insecure_dev", true)
        .set("listen", "127.0.0.1:0")
        .set("database_url", database.url())
        .set("routing.maintenance_interval_ms", 50)
        .set(
            &format!("routing.regions.{region}.escalation_seconds"),
            [1, 1, 1, 1, 1],
        )
        .build()
        .expect("config");
    Application::migrate(&config).await.expect("migrate");
    let app = Application::build_with_fleet(config, fleet.store(), Arc::new(SystemClock))
        .await
        .expect("build");
    let addr = app.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let mut client = RoutingServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let mut stream = client
        .watch_assignments(WatchAssignmentsRequest {
            region: region.clone(),
            after_event_id: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let mut req = request("r1", "inc-1", &region, &[]);
    req.priority = 1;
    req.location = Some(INCIDENT);
    client.assign_team(req).await.expect("queue");
    let queued = next_event(&mut stream).await;
    assert_eq!(queued.kind(), AssignmentEventKind::Queued);
    // The upkeep escalates it once its escalate_time passes (waiting on the event).
    let escalated = next_event(&mut stream).await;
    assert_eq!(escalated.kind(), AssignmentEventKind::Escalated);
    assert_eq!(escalated.incident_id, "inc-1");
    let _ = stop.send(());
    task.await.expect("join").expect("serve");
}

#[tokio::test]
async fn relay_dev_runs_on_sqlite_with_the_memory_fleet() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("routing.db").display());
    let config = Config::builder("routing")
        .set("insecure_dev", true)
        .set("listen", "127.0.0.1:0")
        .set("database_url", url.as_str())
        .set("routing.fleet", "memory")
        .build()
        .expect("config");
    Application::migrate(&config).await.expect("migrate");
    let fleet = Arc::new(TestFleet::default());
    let region = relay_tests::unique_name("region");
    fleet.upsert_team(&region, team("t1", 500.0, &[], 5, chrono::Utc::now()));
    let app = Application::build_with_fleet(config, fleet.store(), Arc::new(SystemClock))
        .await
        .expect("build");
    let addr = app.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let mut client = RoutingServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let assigned = client
        .assign_team(request("r1", "inc-1", &region, &[]))
        .await
        .expect("assign")
        .into_inner();
    assert_eq!(assigned.outcome(), AssignmentOutcome::Assigned);
    let queued = client
        .assign_team(request("r2", "inc-2", &region, &[]))
        .await
        .expect("queue")
        .into_inner();
    assert_eq!(queued.outcome(), AssignmentOutcome::Queued);
    let list = client
        .list_queue(relay_proto::routing::ListQueueRequest {
            region: region.clone(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.queued_incidents.len(), 1);
    assert_eq!(list.queued_incidents[0].incident_id, "inc-2");
    let _ = stop.send(());
    task.await.expect("join").expect("serve");
}

async fn assigned(server: &mut Server, request: AssignTeamRequest) -> Assignment {
    server
        .client
        .assign_team(request)
        .await
        .expect("assign")
        .into_inner()
        .assignment
        .expect("assigned")
}

#[tokio::test]
async fn a_cad_reads_why_each_assignment_ended_and_its_own_incident_number() {
    use relay_proto::routing::{AssignmentEndCause, GetAssignmentRequest};
    let (_database, fleet, region, mut server) = one_team_served().await;
    let mut stream = watch_from_now(&mut server, &region).await;
    let numbered = |request_id: &str, incident_id: &str, cad: &str| {
        common::with_cad_incident_id(request(request_id, incident_id, &region, &[]), cad)
    };

    // Too long a number is refused, naming the field.
    let status = server
        .client
        .assign_team(numbered("r0", "inc-0", &"x".repeat(129)))
        .await
        .expect_err("too long");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["cad_incident_id"]);

    // Released by a caller who writes "team cleared": RELEASED all the same.
    let first = assigned(&mut server, numbered("r1", "inc-1", "CAD-1")).await;
    assert_eq!(first.cad_incident_id, "CAD-1");
    let released = server
        .client
        .release_team(ReleaseTeamRequest {
            request_id: "rel-1".into(),
            assignment_id: first.assignment_id.clone(),
            reason: "team cleared".into(),
        })
        .await
        .expect("release")
        .into_inner()
        .assignment
        .expect("ended");
    assert_eq!(released.end_cause(), AssignmentEndCause::Released);

    // The team clears to AVAILABLE on its own: TEAM_CLEARED.
    let second = assigned(&mut server, numbered("r2", "inc-2", "CAD-2")).await;
    fleet.set_status("t1", TeamStatus::OnScene);
    fleet.set_status("t1", TeamStatus::Available);

    let mut seen = Vec::new();
    for _ in 0..4 {
        let event = next_event(&mut stream).await;
        let cause = event.assignment.as_ref().map(|a| a.end_cause());
        seen.push((event.kind(), event.cad_incident_id.clone(), cause));
    }
    let cad = |n: &str| format!("CAD-{n}");
    assert_eq!(
        seen,
        [
            (
                AssignmentEventKind::Assigned,
                cad("1"),
                Some(AssignmentEndCause::Unspecified)
            ),
            (
                AssignmentEventKind::Released,
                cad("1"),
                Some(AssignmentEndCause::Released)
            ),
            (
                AssignmentEventKind::Assigned,
                cad("2"),
                Some(AssignmentEndCause::Unspecified)
            ),
            (
                AssignmentEventKind::Released,
                cad("2"),
                Some(AssignmentEndCause::TeamCleared)
            ),
        ]
    );
    let read = server
        .client
        .get_assignment(GetAssignmentRequest {
            assignment_id: second.assignment_id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .assignment
        .expect("assignment");
    assert_eq!(read.end_cause(), AssignmentEndCause::TeamCleared);
    assert_eq!(read.cad_incident_id, "CAD-2");
    server.stop().await;
}
