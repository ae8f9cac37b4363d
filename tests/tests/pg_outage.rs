//! Issue 18: PostgreSQL unreachable for the whole suite, under load (part of `make chaos`).
//!
//! The four services reach PostgreSQL through a TCP proxy the test controls; CADs submit calls
//! and teams clear them throughout. Twice the database goes away for a few seconds: first an
//! outage (the proxy resets every connection and refuses new ones), then a partition (the
//! proxy keeps every connection open and forwards nothing). Throughout, one probe per service
//! calls an RPC that needs PostgreSQL. Checked: a probe call made while the database is away,
//! in the outage and in the partition, fails UNAVAILABLE within [`PROMISED`]; each service's health
//! turns NOT_SERVING after the readiness dampening and SERVING again after recovery; and
//! afterwards every guarantee the kill test checks holds (nothing acknowledged lost or
//! doubled, no team on two calls, intake agrees with routing, nothing stuck), a failed
//! SubmitIncident sent again gives one incident, and every team availability lists has its
//! roster row (nothing half-written).

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use relay_proto::{
    availability::{ListTeamsRequest, availability_service_client::AvailabilityServiceClient},
    directory::{GetServiceRequest, directory_service_client::DirectoryServiceClient},
    intake::intake_service_client::IntakeServiceClient,
    routing::{GetAssignmentRequest, routing_service_client::RoutingServiceClient},
};
use relay_tests::{
    TestDatabase,
    chaos::{Load, Verdict, incidents_of, metric_sum},
    outage::{
        self, HealthMonitor, Outcome, Probe, code_of, lazy_channel, probe_submission, probe_team,
        spread,
    },
    proxy::{TcpProxy, socket_addr_of, url_via},
    suite::Suite,
    unique_name,
};
use sqlx::{Connection, PgConnection};
use tonic::Code;

/// How long the database stays away in each phase.
const AWAY: Duration = Duration::from_secs(8);
/// The deadline every probe call carries.
const DEADLINE: Duration = Duration::from_secs(4);
/// What the services promise a caller while PostgreSQL is away: UNAVAILABLE within the bound
/// of a database operation (`database.query_timeout_ms`, 3 s, which also bounds the wait for a
/// pooled connection), with room for a loaded machine.
const PROMISED: Duration = Duration::from_millis(3_500);
/// The readiness settings: checks every 200 ms (each bounded by the interval), NOT_SERVING
/// after 3 failures in a row.
const READINESS_INTERVAL: Duration = Duration::from_millis(200);
const READINESS_THRESHOLD: u32 = 3;

fn with_deadline<T>(message: T) -> tonic::Request<T> {
    outage::with_deadline(message, DEADLINE)
}

/// One probe per service, each on an RPC that needs PostgreSQL.
fn start_probes(
    suite: &Suite,
    cad: &str,
    region: &str,
    team_region: &str,
) -> Vec<(&'static str, Probe)> {
    let intake = IntakeServiceClient::new(lazy_channel(&suite.intake.endpoint()));
    let availability = AvailabilityServiceClient::new(lazy_channel(&suite.availability.endpoint()));
    let routing = RoutingServiceClient::new(lazy_channel(&suite.routing.endpoint()));
    let directory = DirectoryServiceClient::new(lazy_channel(&suite.directory.endpoint()));
    let (cad, region, team_region) = (cad.to_owned(), region.to_owned(), team_region.to_owned());
    vec![
        (
            "intake SubmitIncident",
            Probe::start(move |n| {
                let (mut client, request) = (intake.clone(), probe_submission(&cad, &region, n));
                async move { code_of(&client.submit_incident(with_deadline(request)).await) }
            }),
        ),
        (
            "availability UpsertTeam",
            Probe::start(move |n| {
                let (mut client, request) = (availability.clone(), probe_team(&team_region, n));
                async move { code_of(&client.upsert_team(with_deadline(request)).await) }
            }),
        ),
        (
            "routing GetAssignment",
            Probe::start(move |_| {
                let mut client = routing.clone();
                let request = GetAssignmentRequest {
                    assignment_id: uuid::Uuid::new_v4().to_string(),
                };
                async move { code_of(&client.get_assignment(with_deadline(request)).await) }
            }),
        ),
        (
            "directory GetService",
            Probe::start(move |_| {
                let mut client = directory.clone();
                let request = GetServiceRequest {
                    service_id: uuid::Uuid::new_v4().to_string(),
                };
                async move { code_of(&client.get_service(with_deadline(request)).await) }
            }),
        ),
    ]
}

/// One fault: when it began and ended.
struct Window {
    name: &'static str,
    began: Instant,
    ended: Instant,
}

/// Takes the database away for [`AWAY`] (`cut` or `stall`), restores it, and waits until every
/// service is SERVING again; checks and prints how health followed.
async fn fault(
    name: &'static str,
    proxy: &TcpProxy,
    monitors: &[(&'static str, HealthMonitor)],
    stall: bool,
) -> Window {
    // A loaded machine can make a service miss a few checks in a row: start from SERVING.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !monitors.iter().all(|(_, m)| m.serving()) {
        assert!(
            Instant::now() < deadline,
            "a service is not SERVING before the {name}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let began = Instant::now();
    if stall {
        proxy.stall();
    } else {
        proxy.cut();
    }
    tokio::time::sleep(AWAY).await;
    let ended = Instant::now();
    proxy.restore();
    // Three failed checks in a row, each taking at most the check timeout (the interval) and
    // followed by the interval: 1.2 s; with room for a loaded machine. (No lower bound: checks
    // that failed just before the fault, slow on a busy machine, count towards the three.)
    let damping = READINESS_INTERVAL * 2 * READINESS_THRESHOLD;
    let bound = damping + Duration::from_millis(1_800);
    for (service, monitor) in monitors {
        let down = monitor.first_after(began, false);
        let up = monitor.wait_for(ended, true, Duration::from_secs(30)).await;
        eprintln!(
            "{name}: {service} NOT_SERVING {:?} after the fault began, SERVING {:?} after recovery",
            down.map(|d| d.as_millis()),
            up.map(|d| d.as_millis())
        );
        let down = down.unwrap_or_else(|| panic!("{service} stayed SERVING through the {name}"));
        assert!(
            down <= bound,
            "{service} went NOT_SERVING only {down:?} into the {name} (dampening {damping:?})"
        );
        assert!(
            up.is_some(),
            "{service} did not become SERVING within 30 s of recovery from the {name}"
        );
    }
    Window { name, began, ended }
}

/// Checks that every probe call sent while the database was away (from 100 ms after the fault
/// began to 500 ms before it ended) failed as `allowed` says, within `within`, unless it was
/// still waiting when the database came back and then succeeded; prints the codes and the
/// spread.
fn check_calls(
    window: &Window,
    probes: &[(&'static str, Vec<Outcome>)],
    allowed: &[Code],
    within: Duration,
) {
    for (rpc, outcomes) in probes {
        let inside: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| {
                o.started >= window.began + Duration::from_millis(100)
                    && o.started + Duration::from_millis(500) <= window.ended
            })
            .collect();
        let all: Vec<String> = outcomes
            .iter()
            .filter(|o| o.ended() >= window.began && o.started <= window.ended)
            .map(|o| {
                format!(
                    "{:?}@{}+{}",
                    o.code,
                    o.started
                        .saturating_duration_since(window.began)
                        .as_millis(),
                    o.elapsed.as_millis()
                )
            })
            .collect();
        eprintln!("{}: {rpc}: all {all:?}", window.name);
        let mut codes: HashMap<String, usize> = HashMap::new();
        for outcome in &inside {
            *codes.entry(format!("{:?}", outcome.code)).or_default() += 1;
        }
        let latencies: Vec<Duration> = inside.iter().map(|o| o.elapsed).collect();
        eprintln!("{}: {rpc}: {codes:?}, {}", window.name, spread(&latencies));
        assert!(
            !inside.is_empty(),
            "{rpc}: no call wholly inside the {}",
            window.name
        );
        let wrong: Vec<String> = inside
            .iter()
            .filter(|o| {
                let answered_after_recovery = o.ended() > window.ended;
                let succeeded = matches!(o.code, Code::Ok | Code::NotFound);
                !(answered_after_recovery && succeeded)
                    && (!allowed.contains(&o.code) || o.elapsed > within)
            })
            .map(|o| format!("{:?} after {:?}", o.code, o.elapsed))
            .collect();
        assert!(
            wrong.is_empty(),
            "{rpc} during the {}: calls not {allowed:?} within {within:?}: {wrong:?}",
            window.name
        );
    }
}

/// Sends again every probe submission that did not succeed (as a CAD would) and checks each
/// probe call is in intake exactly once.
async fn check_probe_incidents(suite: &Suite, cad: &str, region: &str, sent: usize) {
    let mut intake = IntakeServiceClient::new(lazy_channel(&suite.intake.endpoint()));
    let held: BTreeSet<String> = incidents_of(&suite.intake.endpoint(), cad)
        .await
        .into_iter()
        .map(|i| i.cad_incident_id)
        .collect();
    for n in 1..=sent as u64 {
        let request = probe_submission(cad, region, n);
        if !held.contains(&request.cad_incident_id) {
            intake
                .submit_incident(request)
                .await
                .expect("a probe call sent again after recovery");
        }
    }
    let incidents = incidents_of(&suite.intake.endpoint(), cad).await;
    let mut count: HashMap<String, usize> = HashMap::new();
    for incident in &incidents {
        *count.entry(incident.cad_incident_id.clone()).or_default() += 1;
    }
    let doubled: Vec<_> = count.iter().filter(|(_, c)| **c > 1).collect();
    assert!(doubled.is_empty(), "probe calls held twice: {doubled:?}");
    assert_eq!(count.len(), sent, "every probe call is held once");
}

/// The probe teams in Redis or in the roster only (half-written).
async fn half_written(suite: &Suite, region: &str) -> Vec<String> {
    let mut client = AvailabilityServiceClient::new(lazy_channel(&suite.availability.endpoint()));
    let mut listed = BTreeSet::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_teams(ListTeamsRequest {
                region: region.to_owned(),
                status: 0,
                page_size: 100,
                page_token: page_token.clone(),
            })
            .await
            .expect("list teams")
            .into_inner();
        listed.extend(page.teams.into_iter().map(|t| t.team_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let mut db = PgConnection::connect(suite.database().url())
        .await
        .expect("connect");
    let roster: BTreeSet<String> =
        sqlx::query_scalar("SELECT team_id FROM availability.teams WHERE region = $1")
            .bind(region)
            .fetch_all(&mut db)
            .await
            .expect("roster")
            .into_iter()
            .collect();
    eprintln!(
        "probe teams: {} listed, {} in the roster",
        listed.len(),
        roster.len()
    );
    listed.symmetric_difference(&roster).cloned().collect()
}

/// Every team availability lists in `region` has its roster row, and the reverse, once the
/// CAD has sent again the upserts whose answer was a failure (docs/faults.md: a failure
/// between the Redis change and the commit leaves the team in Redis until the retry).
async fn check_roster(suite: &Suite, region: &str) {
    let half = half_written(suite, region).await;
    eprintln!("half-written probe teams before the CAD's retry: {half:?}");
    let mut client = AvailabilityServiceClient::new(lazy_channel(&suite.availability.endpoint()));
    for team in &half {
        let n: u64 = team
            .strip_prefix("probe-")
            .and_then(|n| n.parse().ok())
            .expect("a probe team");
        client
            .upsert_team(probe_team(region, n))
            .await
            .expect("an upsert sent again after recovery");
    }
    let half = half_written(suite, region).await;
    assert!(
        half.is_empty(),
        "teams in Redis or the roster only: {half:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_outage_and_partition_fail_fast_flip_health_and_lose_nothing() {
    let began = Instant::now();
    let database = TestDatabase::new().await;
    let proxy = TcpProxy::start(socket_addr_of(database.url(), 5432)).await;
    let proxied = url_via(database.url(), proxy.addr());
    let suite = Suite::start_on(
        database,
        &[
            ("RELAY_DATABASE_URL", proxied.as_str()),
            ("RELAY_ROUTING__RECONCILE_GRACE_SECONDS", "1"),
            ("RELAY_SERVER__READINESS_INTERVAL_MS", "200"),
        ],
        1,
    )
    .await;
    let monitors: Vec<(&'static str, HealthMonitor)> = [
        ("intake", &suite.intake),
        ("availability", &suite.availability),
        ("routing", &suite.routing),
        ("directory", &suite.directory),
    ]
    .into_iter()
    .map(|(name, process)| (name, HealthMonitor::start(&process.endpoint())))
    .collect();
    let mut load = Load::on(&suite).await;
    let (probe_cad, team_region) = (unique_name("probe_cad"), unique_name("probe_region"));
    let probes = start_probes(&suite, &probe_cad, &load.region, &team_region);
    for (_, monitor) in &monitors {
        monitor.wait_for(began, true, Duration::from_secs(30)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let outage = fault("outage", &proxy, &monitors, false).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let partition = fault("partition", &proxy, &monitors, true).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut outcomes = Vec::new();
    for (rpc, probe) in probes {
        outcomes.push((rpc, probe.stop().await));
    }
    let submitted = outcomes[0].1.len();
    let verdict = Verdict::after(&mut load, suite.database().url(), Duration::from_secs(120)).await;
    if !verdict.disagree.is_empty() {
        dump_disagreements(suite.database().url(), &verdict.disagree).await;
    }
    let text = suite.scrape("routing").await;
    verdict.report_and_check(
        "PostgreSQL outage and partition under load",
        began.elapsed().as_secs_f64(),
        metric_sum(
            &text,
            "relay_routing_claims_refused_total",
            "STALE_FENCING_TOKEN",
        ),
        metric_sum(&text, "relay_routing_claims_refused_total", "TEAM_BUSY"),
    );
    check_calls(&outage, &outcomes, &[Code::Unavailable], PROMISED);
    // Every database operation is bounded (`database.query_timeout_ms`, 3 s): a call whose
    // pooled connection went silent fails as soon as the calls after it do.
    check_calls(&partition, &outcomes, &[Code::Unavailable], PROMISED);
    check_probe_incidents(&suite, &probe_cad, &load.region, submitted).await;
    check_roster(&suite, &team_region).await;
    drop(proxy);
    suite.clean_up().await;
}

/// Prints, for each incident intake and routing disagree on, routing's events of it and
/// intake's outbox rows, to tell a lost event from a late one.
async fn dump_disagreements(url: &str, disagree: &[String]) {
    use prost::Message;
    let mut db = PgConnection::connect(url).await.expect("connect");
    let rows: Vec<(String, i64, Vec<u8>)> =
        sqlx::query_as("SELECT region, seq, payload FROM routing.events ORDER BY region, seq")
            .fetch_all(&mut db)
            .await
            .expect("events");
    let cursors: Vec<(String, String, String)> =
        sqlx::query_as("SELECT source, region, last_event_id FROM intake.stream_cursors")
            .fetch_all(&mut db)
            .await
            .expect("cursors");
    eprintln!("cursors {cursors:?}; routing events {}", rows.len());
    for line in disagree {
        let id = line.split(':').next().unwrap_or_default();
        for (region, seq, payload) in &rows {
            let event =
                relay_proto::routing::AssignmentEvent::decode(payload.as_slice()).expect("decode");
            if event.incident_id == id {
                eprintln!(
                    "{id} {region} seq {seq} {:?} assignment {:?}",
                    event.kind(),
                    event
                        .assignment
                        .as_ref()
                        .map(|a| (&a.assignment_id, &a.team_id))
                );
            }
        }
        let outbox: Vec<(String,)> = sqlx::query_as("SELECT row_to_json(o)::text FROM intake.outbox o WHERE row_to_json(o)::text LIKE '%' || $1 || '%'")
            .bind(id).fetch_all(&mut db).await.unwrap_or_default();
        eprintln!("{id} outbox {outbox:?}");
    }
}
