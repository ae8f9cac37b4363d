//! Metrics an operator runs Relay by, scraped from the real processes after a short scenario
//! (issue 15): the values, not only the names, and no label carrying an id or caller data.

use std::{collections::HashMap, time::SystemTime};

use relay_proto::{
    availability::{
        ReportLocationRequest, SetTeamStatusRequest, UpsertTeamRequest,
        availability_service_client::AvailabilityServiceClient,
    },
    common::{GeoPoint, TeamStatus},
    intake::{
        IncidentEventKind, SubmitIncidentRequest, intake_service_client::IntakeServiceClient,
    },
};
use relay_tests::{
    suite::{Events, Suite},
    unique_name,
};

const HERE: GeoPoint = GeoPoint {
    latitude: 45.5152,
    longitude: -122.6784,
};

fn now() -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp::from(SystemTime::now()))
}

/// One sample line: metric name, labels, value.
type Sample = (String, HashMap<String, String>, f64);

fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("sample");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let labels = rest
                        .trim_end_matches('}')
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|pair| {
                            let (k, v) = pair.split_once('=').expect("label");
                            (k.to_owned(), v.trim_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
                None => (series.to_owned(), HashMap::new()),
            };
            (name, labels, value.parse().expect("value"))
        })
        .collect()
}

/// The sum of `name`'s samples whose labels include every one of `with`.
fn value(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, labels, _)| {
            n == name
                && with
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
#[allow(clippy::too_many_lines)]
async fn a_scrape_after_three_assignments_says_three() {
    let suite = Suite::start(&[("RELAY_AVAILABILITY__SAMPLE_INTERVAL_SECONDS", "1")]).await;
    let region = unique_name("region");
    let cad = unique_name("cad");
    let mut teams = AvailabilityServiceClient::connect(suite.availability.endpoint())
        .await
        .expect("availability");
    let mut intake = IntakeServiceClient::connect(suite.intake.endpoint())
        .await
        .expect("intake");
    let mut events = Events::watch(intake.clone(), &cad).await;
    for n in 0..3 {
        let team_id = format!("t{n}");
        teams
            .upsert_team(UpsertTeamRequest {
                request_id: unique_name("r"),
                team_id: team_id.clone(),
                display_name: format!("Unit {n}"),
                region: region.clone(),
                capabilities: vec!["clinician".into(), "emt".into(), "peer".into()],
                ..UpsertTeamRequest::default()
            })
            .await
            .expect("upsert");
        teams
            .set_team_status(SetTeamStatusRequest {
                request_id: unique_name("r"),
                team_id: team_id.clone(),
                status: TeamStatus::Available.into(),
                ..SetTeamStatusRequest::default()
            })
            .await
            .expect("on duty");
        teams
            .report_location(ReportLocationRequest {
                team_id,
                location: Some(HERE),
                recorded_at: now(),
                ..ReportLocationRequest::default()
            })
            .await
            .expect("position");
    }
    let call = |n: usize| SubmitIncidentRequest {
        cad_system: cad.clone(),
        cad_incident_id: format!("m-{n}"),
        incident_type: "WELFARE".into(),
        priority: 3,
        location: Some(HERE),
        address: "1 SW Broadway".into(),
        region: region.clone(),
        narrative: "Jane Caller says her brother is confused".into(),
        received_at: now(),
        ..SubmitIncidentRequest::default()
    };
    let mut ids = Vec::new();
    for n in 0..3 {
        let incident = intake
            .submit_incident(call(n))
            .await
            .expect("submit")
            .into_inner()
            .incident
            .expect("incident");
        events
            .until(&incident.incident_id, IncidentEventKind::Assigned)
            .await;
        ids.push(incident.incident_id);
    }
    let mut bad = call(9);
    bad.priority = 9;
    intake.submit_incident(bad).await.expect_err("refused");

    // The sequencer counts what it moved, and the first scrape may race it: wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let samples = loop {
        let samples = parse(&suite.scrape("intake").await);
        // DISPATCHED comes from availability's stream, a moment after routing's ASSIGNED.
        let settled = ["ASSIGNED", "DISPATCHED"].iter().all(|kind| {
            value(
                &samples,
                "relay_incident_events_total",
                &[("region", &region), ("kind", kind)],
            ) >= 3.0
        });
        if settled || std::time::Instant::now() > deadline {
            break samples;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let submit = [
        ("rpc_service", "relay.intake.v1.IntakeService"),
        ("rpc_method", "SubmitIncident"),
    ];
    assert_eq!(
        value(
            &samples,
            "relay_rpc_requests_total",
            &[submit[0], submit[1], ("grpc_code", "OK")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &samples,
            "relay_rpc_requests_total",
            &[submit[0], submit[1], ("grpc_code", "INVALID_ARGUMENT")]
        ),
        1.0
    );
    assert_eq!(
        value(&samples, "relay_rpc_duration_seconds_count", &submit),
        4.0
    );
    for (kind, count) in [("RECEIVED", 3.0), ("ASSIGNED", 3.0), ("DISPATCHED", 3.0)] {
        assert_eq!(
            value(
                &samples,
                "relay_incident_events_total",
                &[("region", &region), ("kind", kind)]
            ),
            count,
            "{kind}"
        );
    }
    assert_eq!(
        value(
            &samples,
            "relay_incidents_triaged_total",
            &[("region", &region), ("disposition", "COMMUNITY_RESPONSE")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &samples,
            "relay_ready",
            &[("service", "relay.intake.v1.IntakeService")]
        ),
        1.0
    );
    assert_eq!(value(&samples, "relay_build_info", &[]), 1.0);
    // This test's own watch of the CAD stream is open; readiness checks ran and answered.
    assert!(
        value(
            &samples,
            "relay_event_stream_watchers",
            &[("stream", "WatchIncidentEvents")]
        ) >= 1.0
    );
    assert!(
        value(
            &samples,
            "relay_dependency_checks_total",
            &[("result", "ok")]
        ) >= 1.0
    );
    assert!(value(&samples, "relay_db_pool_max_connections", &[]) >= 1.0);

    // A report older than the team's position is refused as stale, and counted so.
    teams
        .report_location(ReportLocationRequest {
            team_id: "t0".into(),
            location: Some(HERE),
            recorded_at: Some(prost_types::Timestamp {
                seconds: 1_000_000_000,
                nanos: 0,
            }),
            ..ReportLocationRequest::default()
        })
        .await
        .expect("stale report answered");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let availability = loop {
        let samples = parse(&suite.scrape("availability").await);
        let dispatched = value(
            &samples,
            "relay_teams",
            &[("region", &region), ("status", "DISPATCHED")],
        );
        if dispatched >= 3.0 || std::time::Instant::now() > deadline {
            break samples;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(
        value(
            &availability,
            "relay_location_reports_total",
            &[("outcome", "APPLIED")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &availability,
            "relay_location_reports_total",
            &[("outcome", "STALE")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &availability,
            "relay_teams",
            &[("region", &region), ("status", "DISPATCHED")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &availability,
            "relay_teams_stale_position",
            &[("region", &region)]
        ),
        0.0
    );

    let routing = parse(&suite.scrape("routing").await);
    // Intake follows routing's assignments for the region it serves.
    assert!(
        value(
            &routing,
            "relay_event_stream_watchers",
            &[("stream", "WatchAssignments")]
        ) >= 1.0
    );
    assert_eq!(
        value(
            &routing,
            "relay_routing_assignments_total",
            &[("region", &region), ("source", "AUTO_ASSIGN")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &routing,
            "relay_rpc_requests_total",
            &[("rpc_method", "AssignTeam"), ("grpc_code", "OK")]
        ),
        3.0
    );

    // Labels are bounded enumerations: no id, no caller data, in any service's metrics.
    for service in ["intake", "availability", "routing", "directory"] {
        let text = suite.scrape(service).await;
        assert!(
            text.contains("relay_ready"),
            "{service} has its readiness gauge"
        );
        for (name, labels, _) in parse(&text) {
            for (key, label) in &labels {
                for id in &ids {
                    assert!(
                        !label.contains(id.as_str()),
                        "{name}{{{key}}} carries an id"
                    );
                }
                assert!(
                    !label.contains("Jane") && !label.starts_with("m-") && !label.contains("inc-"),
                    "{name}{{{key}=\"{label}\"}} carries call data"
                );
            }
        }
    }
    suite.clean_up().await;
}

/// Kubernetes' gRPC probes cannot speak the gRPC port's TLS, so the admin endpoint answers
/// them: `/readyz` follows gRPC health (503 while PostgreSQL is unreachable, 200 once it
/// answers), `/healthz` is 200 while the process serves, database or not.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_endpoint_answers_readiness_and_liveness_probes() {
    use relay_tests::{ServiceProcess, TestDatabase, admin_get, proxy::TcpProxy};
    let free = || std::net::SocketAddr::from(([127, 0, 0, 1], relay_tests::free_port()));
    let database = TestDatabase::new().await;
    // A proxy that refuses every connection until it is restored: PostgreSQL is "down".
    let proxy = TcpProxy::start(relay_tests::proxy::socket_addr_of(database.url(), 5432)).await;
    proxy.cut();
    let url = relay_tests::proxy::url_via(database.url(), proxy.addr());
    let admin = free();
    let admin_listen = admin.to_string();
    let service = ServiceProcess::start(
        "relay-directory",
        &[
            ("RELAY_DATABASE_URL", url.as_str()),
            ("RELAY_ADMIN_LISTEN", admin_listen.as_str()),
            ("RELAY_SERVER__READINESS_INTERVAL_MS", "100"),
            ("RELAY_LOG", "error"),
        ],
    );
    let (status, body) = admin_get(admin, "/readyz").await;
    assert_eq!((status, body.trim()), (503, "NOT_SERVING"));
    let (status, _) = admin_get(admin, "/healthz").await;
    assert_eq!(status, 200, "liveness never depends on the database");

    proxy.restore();
    service.wait_until_serving().await;
    let (status, body) = admin_get(admin, "/readyz").await;
    assert_eq!((status, body.trim()), (200, "SERVING"));
    let (status, _) = admin_get(admin, "/metrics").await;
    assert_eq!(status, 200);
}
