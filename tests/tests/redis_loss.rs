//! Issue 18, defect 1: Redis losing its data mid-run is detected, the live state rebuilt from
//! the roster without a restart, interrupted assignments end truthfully (LIVE_STATE_LOST,
//! never TEAM_CLEARED), the CAD is told, and a team restores its call from its device.
//!
//! The suite runs on a Redis server of the test's own (never the shared one, which other
//! tests use): four teams on duty, three calls assigned and their teams EN_ROUTE, then
//! FLUSHALL. The test measures how long detection, reconciliation and the CAD's news take,
//! then checks that a team can restore its call (new fencing token) and that a call given to
//! another team meanwhile is refused, that intake and routing agree, that no team was ever
//! on two calls at once, and that every acknowledged call is still there once.

use std::time::{Duration, Instant, SystemTime};

use relay_proto::{
    availability::{
        GetTeamRequest, ListTeamsRequest, ReportLocationRequest, SetTeamStatusRequest,
        UpsertTeamRequest, availability_service_client::AvailabilityServiceClient,
    },
    common::{GeoPoint, TeamStatus},
    intake::{
        GetIncidentRequest, Incident, IncidentEventKind, ListIncidentsRequest, RoutingState,
        SubmitIncidentRequest, intake_service_client::IntakeServiceClient,
    },
    routing::{
        AssignmentSource, ConfirmAssignmentRequest, RestoreAssignmentRequest,
        routing_service_client::RoutingServiceClient,
    },
};
use relay_tests::{
    chaos::{assignments, disagreements, lost_or_doubled, metric_sum, overlaps},
    redis_server::RedisServer,
    suite::{Events, Suite},
    unique_name,
};
use sqlx::{Connection, PgConnection};
use tonic::{Code, transport::Channel};

const HERE: GeoPoint = GeoPoint {
    latitude: 45.5152,
    longitude: -122.6784,
};
const TEAMS: usize = 4;
const CALLS: usize = 3;
/// relay.routing.v1.AssignmentEndCause numbers as the record stores them.
const TEAM_CLEARED: i32 = 1;
const LIVE_STATE_LOST: i32 = 4;

fn now() -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp::from(SystemTime::now()))
}

fn team(n: usize) -> String {
    format!("t{n}")
}

/// Polls `check` every 50 ms until it answers `Some`, for at most `limit`; returns the answer
/// and how long it took.
async fn poll<T, F: Future<Output = Option<T>>>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> F,
) -> (T, Duration) {
    let start = Instant::now();
    loop {
        if let Some(answer) = check().await {
            return (answer, start.elapsed());
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn set_status(
    teams: &mut AvailabilityServiceClient<Channel>,
    team_id: &str,
    status: TeamStatus,
    incident_id: &str,
) -> Result<(), tonic::Status> {
    teams
        .set_team_status(SetTeamStatusRequest {
            request_id: unique_name("r"),
            team_id: team_id.to_owned(),
            status: status.into(),
            incident_id: incident_id.to_owned(),
            ..SetTeamStatusRequest::default()
        })
        .await
        .map(drop)
}

async fn incident(intake: &mut IntakeServiceClient<Channel>, id: &str) -> Incident {
    intake
        .get_incident(GetIncidentRequest {
            incident_id: id.to_owned(),
            ..GetIncidentRequest::default()
        })
        .await
        .expect("get incident")
        .into_inner()
        .incident
        .expect("incident")
}

/// (team, incident, end_cause, fencing token) of every assignment, oldest first.
async fn record(database_url: &str) -> Vec<(String, String, String, i32, i64)> {
    let mut db = PgConnection::connect(database_url).await.expect("connect");
    sqlx::query_as(
        "SELECT team_id, incident_id, state, end_cause, fencing_token FROM routing.assignments \
         ORDER BY assigned_at, assignment_id",
    )
    .fetch_all(&mut db)
    .await
    .expect("read the record")
}

/// What both tests start from: the suite on a Redis server of the test's own (routing
/// reconciling after one second), a client of each service, and the CAD's event stream.
struct Setup {
    redis: RedisServer,
    suite: Suite,
    teams: AvailabilityServiceClient<Channel>,
    routing: RoutingServiceClient<Channel>,
    intake: IntakeServiceClient<Channel>,
    events: Events,
}

async fn setup(cad: &str) -> Setup {
    let redis = RedisServer::start(None).await;
    let url = redis.url();
    let suite = Suite::start(&[
        ("RELAY_REDIS_URL", url.as_str()),
        ("RELAY_ROUTING__RECONCILE_GRACE_SECONDS", "1"),
    ])
    .await;
    let teams = AvailabilityServiceClient::connect(suite.availability.endpoint())
        .await
        .expect("availability");
    let routing = RoutingServiceClient::connect(suite.routing.endpoint())
        .await
        .expect("routing");
    let intake = IntakeServiceClient::connect(suite.intake.endpoint())
        .await
        .expect("intake");
    let events = Events::watch(intake.clone(), cad).await;
    Setup {
        redis,
        suite,
        teams,
        routing,
        intake,
        events,
    }
}

/// Puts a team of `region` on duty (AVAILABLE).
async fn on_duty(teams: &mut AvailabilityServiceClient<Channel>, team_id: &str, region: &str) {
    teams
        .upsert_team(UpsertTeamRequest {
            request_id: unique_name("r"),
            team_id: team_id.to_owned(),
            display_name: format!("Unit {team_id}"),
            region: region.to_owned(),
            capabilities: vec!["clinician".into(), "emt".into(), "peer".into()],
            ..UpsertTeamRequest::default()
        })
        .await
        .expect("upsert team");
    set_status(teams, team_id, TeamStatus::Available, "")
        .await
        .expect("on duty");
}

/// Reports a team's position [`HERE`].
async fn report_here(teams: &mut AvailabilityServiceClient<Channel>, team_id: &str) {
    teams
        .report_location(ReportLocationRequest {
            team_id: team_id.to_owned(),
            location: Some(HERE),
            recorded_at: now(),
            ..ReportLocationRequest::default()
        })
        .await
        .expect("position");
}

/// Submits a call [`HERE`] and follows it until its dispatched team is EN_ROUTE; returns the
/// incident and the team.
async fn dispatch_en_route(
    setup: &mut Setup,
    cad: &str,
    cad_incident_id: &str,
    region: &str,
) -> (String, String) {
    let id = setup
        .intake
        .submit_incident(SubmitIncidentRequest {
            cad_system: cad.to_owned(),
            cad_incident_id: cad_incident_id.to_owned(),
            incident_type: "WELFARE".into(),
            priority: 3,
            location: Some(HERE),
            address: "1 SW Broadway".into(),
            region: region.to_owned(),
            received_at: now(),
            ..SubmitIncidentRequest::default()
        })
        .await
        .expect("submit")
        .into_inner()
        .incident
        .expect("incident")
        .incident_id;
    setup.events.until(&id, IncidentEventKind::Dispatched).await;
    let team_id = incident(&mut setup.intake, &id)
        .await
        .routing
        .expect("routing")
        .team_id;
    set_status(&mut setup.teams, &team_id, TeamStatus::EnRoute, &id)
        .await
        .expect("en route");
    setup.events.until(&id, IncidentEventKind::EnRoute).await;
    (id, team_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)]
async fn a_redis_flush_is_detected_rebuilt_and_recorded_truthfully_and_a_team_restores_its_call() {
    let region = unique_name("region");
    let cad = unique_name("cad");
    let mut setup = setup(&cad).await;

    // Four teams on duty; three calls, each assigned and its team EN_ROUTE.
    for n in 0..TEAMS {
        on_duty(&mut setup.teams, &team(n), &region).await;
    }
    let mut calls = Vec::new();
    let mut acknowledged = Vec::new();
    for n in 0..CALLS {
        for t in 0..TEAMS {
            report_here(&mut setup.teams, &team(t)).await;
        }
        let cad_incident_id = format!("cad-{n}");
        let (id, team_id) = dispatch_en_route(&mut setup, &cad, &cad_incident_id, &region).await;
        acknowledged.push((cad_incident_id, id.clone()));
        calls.push((id, team_id));
    }
    let Setup {
        redis,
        suite,
        mut teams,
        mut routing,
        mut intake,
        mut events,
    } = setup;
    let before = record(suite.database().url()).await;

    // Redis loses everything.
    let _: String = redis.query(&["FLUSHALL"]).await.expect("FLUSHALL");

    // Availability notices and rebuilds its live state by itself: every team back, OFF_DUTY.
    // (ListTeams, unlike a GetTeam of a missing team, does not wake the check: this measures
    // the periodic check, the slower of the two ways a loss is found.)
    let (_, rebuilt) = poll("the live state rebuilt", Duration::from_secs(15), || {
        let mut teams = teams.clone();
        let region = region.clone();
        async move {
            let listed = teams
                .list_teams(ListTeamsRequest {
                    region,
                    page_size: 100,
                    ..ListTeamsRequest::default()
                })
                .await
                .ok()?
                .into_inner()
                .teams;
            (listed.len() == TEAMS && listed.iter().all(|t| t.status() == TeamStatus::OffDuty))
                .then_some(())
        }
    })
    .await;
    let missing = teams
        .get_team(GetTeamRequest { team_id: team(0) })
        .await
        .expect("every team is back");
    assert!(missing.into_inner().team.is_some());
    // Routing ends each interrupted assignment as LIVE_STATE_LOST.
    let (ended, reconciled) = poll(
        "interrupted assignments ended",
        Duration::from_secs(20),
        || {
            let url = suite.database().url().to_owned();
            async move {
                let rows = record(&url).await;
                rows.iter()
                    .all(|(_, _, state, _, _)| state != "ACTIVE")
                    .then_some(rows)
            }
        },
    )
    .await;
    // The CAD hears of it on the incident's stream.
    let told_start = Instant::now();
    for (id, team_id) in &calls {
        events.until(id, IncidentEventKind::Released).await;
        let released = events
            .seen
            .iter()
            .find(|e| e.incident_id == *id && e.kind() == IncidentEventKind::Released)
            .expect("released event");
        assert_eq!(released.team_id, *team_id);
        assert!(
            released.detail.contains("live state was lost"),
            "the CAD is told why: {:?}",
            released.detail
        );
        let shown = incident(&mut intake, id).await.routing.expect("routing");
        assert_eq!(
            shown.state(),
            RoutingState::Recommended,
            "{id} waits for a dispatcher"
        );
    }
    let told = reconciled + told_start.elapsed();
    eprintln!(
        "after FLUSHALL: live state rebuilt in {:.2} s, assignments ended in {:.2} s, the CAD \
         told within {:.2} s",
        rebuilt.as_secs_f64(),
        reconciled.as_secs_f64(),
        told.as_secs_f64()
    );
    assert_eq!(ended.len(), CALLS);
    for (team_id, incident_id, state, cause, _) in &ended {
        assert_ne!(
            *cause, TEAM_CLEARED,
            "{team_id} on {incident_id}: TEAM_CLEARED"
        );
        assert_eq!(
            (state.as_str(), *cause),
            ("RELEASED", LIVE_STATE_LOST),
            "{team_id} on {incident_id}"
        );
    }
    let availability_metrics = suite.scrape("availability").await;
    assert_eq!(
        metric_sum(&availability_metrics, "relay_live_state_losses_total", ""),
        1.0,
        "one loss counted"
    );

    // A team that was working a call cannot simply go back to it...
    let (restored_id, restored_team) = calls[0].clone();
    let refused = set_status(
        &mut teams,
        &restored_team,
        TeamStatus::EnRoute,
        &restored_id,
    )
    .await
    .expect_err("OFF_DUTY to EN_ROUTE");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    // ... but restores it from its device: AVAILABLE, then RestoreAssignment.
    set_status(&mut teams, &restored_team, TeamStatus::Available, "")
        .await
        .expect("available");
    let restore = |request_id: &str, incident_id: &str, team_id: &str| RestoreAssignmentRequest {
        request_id: request_id.to_owned(),
        incident_id: incident_id.to_owned(),
        team_id: team_id.to_owned(),
    };
    let request_id = unique_name("r");
    let restored = routing
        .restore_assignment(restore(&request_id, &restored_id, &restored_team))
        .await
        .expect("restore")
        .into_inner()
        .assignment
        .expect("assignment");
    assert_eq!(restored.source(), AssignmentSource::Restored);
    assert_eq!(restored.team_id, restored_team);
    let old_token = before
        .iter()
        .find(|(t, i, _, _, _)| *t == restored_team && *i == restored_id)
        .map(|r| r.4)
        .expect("the lost assignment");
    assert!(restored.fencing_token > old_token, "a new fencing token");
    // The retry answers the same; the team's statuses are legal again.
    let again = routing
        .restore_assignment(restore(&request_id, &restored_id, &restored_team))
        .await
        .expect("retry")
        .into_inner()
        .assignment
        .expect("assignment");
    assert_eq!(again.assignment_id, restored.assignment_id);
    set_status(
        &mut teams,
        &restored_team,
        TeamStatus::EnRoute,
        &restored_id,
    )
    .await
    .expect("en route again");
    events
        .until_count(&restored_id, &[IncidentEventKind::Assigned], 2)
        .await;

    // A call given to another team meanwhile is not restored.
    let (taken_id, taken_team) = calls[1].clone();
    let other = team(TEAMS - 1);
    assert!(calls.iter().all(|(_, t)| *t != other), "t3 was free");
    set_status(&mut teams, &other, TeamStatus::Available, "")
        .await
        .expect("available");
    routing
        .confirm_assignment(ConfirmAssignmentRequest {
            request_id: unique_name("r"),
            incident_id: taken_id.clone(),
            team_id: other.clone(),
        })
        .await
        .expect("the dispatcher sends another team");
    set_status(&mut teams, &taken_team, TeamStatus::Available, "")
        .await
        .expect("available");
    let refused = routing
        .restore_assignment(restore(&unique_name("r"), &taken_id, &taken_team))
        .await
        .expect_err("given to another team");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    // Nor is a call the team never had.
    let (third_id, _) = calls[2].clone();
    let refused = routing
        .restore_assignment(restore(&unique_name("r"), &third_id, &taken_team))
        .await
        .expect_err("not its call");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");

    // Intake and routing agree; no team on two calls; nothing acknowledged lost.
    let url = suite.database().url().to_owned();
    let (incidents, _) = poll(
        "intake agrees with routing",
        Duration::from_secs(20),
        || {
            let mut intake = intake.clone();
            let (url, cad) = (url.clone(), cad.clone());
            async move {
                let incidents = intake
                    .list_incidents(ListIncidentsRequest {
                        cad_system: cad,
                        page_size: 100,
                        ..ListIncidentsRequest::default()
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .incidents;
                disagreements(&url, &incidents)
                    .await
                    .is_empty()
                    .then_some(incidents)
            }
        },
    )
    .await;
    let lost = lost_or_doubled(&acknowledged, &incidents);
    assert!(lost.is_empty(), "{lost:?}");
    let overlapping = overlaps(&assignments(&url).await);
    assert!(overlapping.is_empty(), "{overlapping:?}");
    if let Some(violation) = events.causal_violation() {
        panic!("{violation}");
    }
    let errors: Vec<String> = suite
        .availability
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("ERROR") && l.contains("lost the live state"))
        .collect();
    assert_eq!(errors.len(), 1, "one ERROR line per loss: {errors:?}");
    drop(suite);
    drop(redis);
}

/// One region's keys lost alone, as a Redis Cluster primary failing over to a replica without
/// its data loses the regions it held, while the keyspace's own epoch (on another primary)
/// survives: the region's stamp is gone, so availability rebuilds it (and only its teams
/// change), routing ends its call LIVE_STATE_LOST, and the team restores the call straight
/// from OFF_DUTY, with no moment AVAILABLE in which the queue could take it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)]
async fn a_region_losing_its_keys_alone_is_rebuilt_and_its_team_restores_from_off_duty() {
    let lost_region = unique_name("lost");
    let kept_region = unique_name("kept");
    let cad = unique_name("cad");
    let mut setup = setup(&cad).await;
    let in_region = |region: &str, n: usize| format!("{region}-t{n}");
    for region in [&lost_region, &kept_region] {
        for n in 0..2 {
            on_duty(&mut setup.teams, &in_region(region, n), region).await;
            report_here(&mut setup.teams, &in_region(region, n)).await;
        }
    }
    let (id, team_id) = dispatch_en_route(&mut setup, &cad, "cad-1", &lost_region).await;
    let Setup {
        redis,
        suite,
        mut teams,
        mut routing,
        intake: _intake,
        events: _events,
    } = setup;
    // The stamps are written by the periodic check once it has seen the regions' teams.
    let stamp = format!("{}:{{{lost_region}}}:live_epoch", suite.prefix);
    poll("the region's stamp", Duration::from_secs(10), || {
        let stamp = stamp.clone();
        let redis = &redis;
        async move {
            let value: Option<String> = redis.query(&["GET", &stamp]).await.ok()?;
            value.map(drop)
        }
    })
    .await;

    // Every key of the lost region goes; the keyspace's epoch and the other region stay.
    let pattern = format!("{}:{{{lost_region}}}:*", suite.prefix);
    let deleted: i64 = redis
        .query(&[
            "EVAL",
            "local n = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1])) do \
             n = n + redis.call('DEL', k) end return n",
            "0",
            &pattern,
        ])
        .await
        .expect("delete the region's keys");
    assert!(deleted >= 4, "the region's keys: {deleted}");
    let epoch: Option<String> = redis
        .query(&["GET", &format!("{}:live_epoch", suite.prefix)])
        .await
        .expect("GET");
    assert!(epoch.is_some(), "the keyspace's epoch survives");

    let list = |region: String| {
        let mut teams = teams.clone();
        async move {
            teams
                .list_teams(ListTeamsRequest {
                    region,
                    page_size: 100,
                    ..ListTeamsRequest::default()
                })
                .await
                .ok()
                .map(|r| r.into_inner().teams)
        }
    };
    let (_, rebuilt) = poll("the lost region rebuilt", Duration::from_secs(15), || {
        let list = list(lost_region.clone());
        async move {
            let listed = list.await?;
            (listed.len() == 2 && listed.iter().all(|t| t.status() == TeamStatus::OffDuty))
                .then_some(())
        }
    })
    .await;
    let kept = list(kept_region.clone()).await.expect("the kept region");
    assert_eq!(kept.len(), 2);
    assert!(
        kept.iter().all(|t| t.status() == TeamStatus::Available),
        "the other region's teams are untouched: {kept:?}"
    );
    let (ended, reconciled) = poll(
        "the interrupted assignment ended",
        Duration::from_secs(20),
        || {
            let url = suite.database().url().to_owned();
            async move {
                let rows = record(&url).await;
                rows.iter()
                    .all(|(_, _, state, _, _)| state != "ACTIVE")
                    .then_some(rows)
            }
        },
    )
    .await;
    eprintln!(
        "after one region's keys were deleted: rebuilt in {:.2} s, its assignment ended in \
         {:.2} s",
        rebuilt.as_secs_f64(),
        reconciled.as_secs_f64()
    );
    assert_eq!(ended.len(), 1);
    assert_eq!(
        (ended[0].2.as_str(), ended[0].3),
        ("RELEASED", LIVE_STATE_LOST),
        "{ended:?}"
    );
    assert_ne!(ended[0].3, TEAM_CLEARED);
    let metrics = suite.scrape("availability").await;
    assert_eq!(
        metric_sum(&metrics, "relay_live_state_losses_total", ""),
        1.0,
        "one loss counted"
    );

    // The team restores its call as the rebuild left it, OFF_DUTY.
    let restored = routing
        .restore_assignment(RestoreAssignmentRequest {
            request_id: unique_name("r"),
            incident_id: id.clone(),
            team_id: team_id.clone(),
        })
        .await
        .expect("restore from OFF_DUTY")
        .into_inner()
        .assignment
        .expect("assignment");
    assert_eq!(restored.source(), AssignmentSource::Restored);
    assert!(restored.fencing_token > ended[0].4, "a new fencing token");
    set_status(&mut teams, &team_id, TeamStatus::EnRoute, &id)
        .await
        .expect("en route again");
    let errors: Vec<String> = suite
        .availability
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("ERROR") && l.contains("lost the live state"))
        .collect();
    assert_eq!(errors.len(), 1, "one ERROR line per loss: {errors:?}");
    assert!(
        errors[0].contains(&lost_region),
        "it names the region: {errors:?}"
    );
    drop(suite);
    drop(redis);
}
