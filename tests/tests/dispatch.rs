//! No double dispatch, across real processes: one availability and two routing replicas
//! against the machine's Redis and PostgreSQL, with routing claiming teams through
//! availability's keyspace (its Lua claim and fencing counter) and recording assignments in
//! its PostgreSQL schema.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant, SystemTime},
};

use relay_proto::{
    availability::{
        GetTeamRequest, ReportLocationRequest, SetTeamStatusRequest, UpsertTeamRequest,
        availability_service_client::AvailabilityServiceClient,
    },
    common::{AssignmentMode, GeoPoint, TeamStatus},
    routing::{
        AssignTeamRequest, AssignmentOutcome, ConfirmAssignmentRequest, ReleaseTeamRequest,
        routing_service_client::RoutingServiceClient,
    },
};
use relay_tests::{ServiceProcess, TestDatabase, redis_delete_prefix, redis_url, unique_name};
use sqlx::{Connection, PgConnection};
use tonic::{Code, transport::Channel};

struct Suite {
    database: TestDatabase,
    prefix: String,
    region: String,
    availability: ServiceProcess,
    routing: Vec<ServiceProcess>,
}

fn env<'a>(database: &'a TestDatabase, redis: &'a str, prefix: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("RELAY_DATABASE_URL", database.url()),
        ("RELAY_REDIS_URL", redis),
        ("RELAY_AVAILABILITY__KEY_PREFIX", prefix),
        ("RELAY_ROUTING__KEY_PREFIX", prefix),
        ("RELAY_ROUTING__RECONCILE_GRACE_SECONDS", "1"),
        ("RELAY_SERVER__READINESS_INTERVAL_MS", "100"),
        ("RELAY_LOG", "warn"),
    ]
}

impl Suite {
    async fn start(replicas: usize) -> Self {
        let database = TestDatabase::new().await;
        let prefix = unique_name("relay");
        let redis = redis_url();
        let vars = env(&database, &redis, &prefix);
        // As the deployment's init container does: routing's schema before routing starts.
        let migrated = std::process::Command::new(relay_tests::binary_path("relay-routing"))
            .arg("migrate")
            .env_clear()
            .envs(vars.iter().copied())
            .output()
            .expect("run migrate");
        assert!(migrated.status.success(), "{migrated:?}");
        let availability = ServiceProcess::start("relay-availability", &vars);
        let routing: Vec<ServiceProcess> = (0..replicas)
            .map(|_| ServiceProcess::start("relay-routing", &vars))
            .collect();
        availability.wait_until_serving().await;
        for replica in &routing {
            replica.wait_until_serving().await;
        }
        Self {
            database,
            region: unique_name("region"),
            prefix,
            availability,
            routing,
        }
    }

    async fn availability(&self) -> AvailabilityServiceClient<Channel> {
        AvailabilityServiceClient::connect(self.availability.endpoint())
            .await
            .expect("connect availability")
    }

    async fn routing(&self, replica: usize) -> RoutingServiceClient<Channel> {
        RoutingServiceClient::connect(self.routing[replica % self.routing.len()].endpoint())
            .await
            .expect("connect routing")
    }

    async fn record(&self) -> PgConnection {
        PgConnection::connect(self.database.url())
            .await
            .expect("connect record")
    }
}

fn point(index: usize) -> GeoPoint {
    #[allow(clippy::cast_precision_loss)]
    let step = index as f64;
    GeoPoint {
        latitude: 44.04 + 0.002 * (step % 10.0),
        longitude: -123.10 + 0.002 * (step / 10.0).floor(),
    }
}

/// Creates `count` teams, AVAILABLE with a fresh position.
async fn put_teams_on_duty(suite: &Suite, count: usize, create: bool) {
    let mut client = suite.availability().await;
    for index in 0..count {
        let team_id = format!("t{index:02}");
        if create {
            client
                .upsert_team(UpsertTeamRequest {
                    request_id: unique_name("upsert"),
                    team_id: team_id.clone(),
                    display_name: format!("Team {index}"),
                    region: suite.region.clone(),
                    capabilities: vec!["clinician".into(), "emt".into()],
                    ..UpsertTeamRequest::default()
                })
                .await
                .expect("upsert team");
        }
        client
            .set_team_status(SetTeamStatusRequest {
                request_id: unique_name("status"),
                team_id: team_id.clone(),
                status: TeamStatus::Available.into(),
                ..SetTeamStatusRequest::default()
            })
            .await
            .expect("on duty");
        let report = client
            .report_location(ReportLocationRequest {
                team_id,
                location: Some(point(index)),
                recorded_at: Some(prost_types::Timestamp::from(SystemTime::now())),
                ..ReportLocationRequest::default()
            })
            .await
            .expect("position")
            .into_inner();
        assert!(report.accepted);
    }
}

fn assign_request(suite: &Suite, incident: &str, mode: AssignmentMode) -> AssignTeamRequest {
    AssignTeamRequest {
        request_id: unique_name("assign"),
        incident_id: incident.to_owned(),
        region: suite.region.clone(),
        location: Some(point(incident.len() * 3 % 50)),
        required_capabilities: vec!["clinician".into()],
        priority: 3,
        mode: mode.into(),
        cad_system: "cad-test".into(),
        ..AssignTeamRequest::default()
    }
}

/// Assigns as a CAD integration would: the same request again, with backoff, when the record
/// refused a claim (ABORTED, CLAIM_CONFLICT), a store was briefly overloaded (UNAVAILABLE), or
/// the call ran past the server's timeout (CANCELLED, DEADLINE_EXCEEDED).
async fn assign(
    client: &mut RoutingServiceClient<Channel>,
    request: AssignTeamRequest,
) -> Option<relay_proto::routing::AssignTeamResponse> {
    for attempt in 1..=20_u64 {
        match client.assign_team(request.clone()).await {
            Ok(response) => return Some(response.into_inner()),
            Err(status)
                if matches!(
                    status.code(),
                    Code::Aborted | Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded
                ) =>
            {
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
            Err(status) => panic!("AssignTeam {}: {status:?}", request.incident_id),
        }
    }
    panic!("AssignTeam {} kept failing", request.incident_id)
}

/// ACTIVE assignments in the record: team -> incidents.
async fn active_by_team(record: &mut PgConnection) -> BTreeMap<String, Vec<String>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT team_id, incident_id FROM routing.assignments WHERE state = 'ACTIVE' ORDER BY 1, 2",
    )
    .fetch_all(record)
    .await
    .expect("read assignments");
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (team, incident) in rows {
        map.entry(team).or_default().push(incident);
    }
    map
}

/// Checks that the record and the live state agree: every ACTIVE assignment's team is busy
/// on that incident, every busy team has exactly that ACTIVE assignment, and no team or
/// incident has two. Retries while reconciliation settles.
async fn assert_consistent(suite: &Suite, teams: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut availability = suite.availability().await;
    loop {
        let mut record = suite.record().await;
        let active = active_by_team(&mut record).await;
        let mut problems = Vec::new();
        let mut incidents = BTreeSet::new();
        for (team, list) in &active {
            if list.len() > 1 {
                problems.push(format!("{team} has {} ACTIVE assignments", list.len()));
            }
            for incident in list {
                if !incidents.insert(incident.clone()) {
                    problems.push(format!("{incident} has two ACTIVE assignments"));
                }
            }
        }
        for index in 0..teams {
            let team_id = format!("t{index:02}");
            let team = availability
                .get_team(GetTeamRequest {
                    team_id: team_id.clone(),
                })
                .await
                .expect("get team")
                .into_inner()
                .team
                .expect("team");
            let busy = matches!(
                team.status(),
                TeamStatus::Dispatched | TeamStatus::EnRoute | TeamStatus::OnScene
            );
            match (busy, active.get(&team_id)) {
                (true, Some(list)) if list.contains(&team.incident_id) => {}
                (false, None) => {}
                (busy, list) => problems.push(format!(
                    "{team_id}: live {:?} on {:?}, record {list:?} (busy {busy})",
                    team.status(),
                    team.incident_id
                )),
            }
        }
        if problems.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "record and live state disagree: {problems:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_routing_replicas_never_dispatch_a_team_twice() {
    const TEAMS: usize = 50;
    const CALLS: usize = 500;
    let suite = Suite::start(2).await;
    put_teams_on_duty(&suite, TEAMS, true).await;

    // A sampler watches the record throughout: a team with two ACTIVE assignments at any
    // moment fails the test.
    let sampler_url = suite.database.url().to_owned();
    let stop_sampling = tokio_util::sync::CancellationToken::new();
    let sampler = {
        let stop = stop_sampling.clone();
        tokio::spawn(async move {
            let mut record = PgConnection::connect(&sampler_url).await.expect("connect");
            let mut samples = 0_u32;
            while !stop.is_cancelled() {
                let doubled: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT team_id, count(*) FROM routing.assignments WHERE state = 'ACTIVE' \
                     GROUP BY team_id HAVING count(*) > 1",
                )
                .fetch_all(&mut record)
                .await
                .expect("sample");
                assert!(doubled.is_empty(), "double dispatch observed: {doubled:?}");
                samples += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            samples
        })
    };

    let mut calls = tokio::task::JoinSet::new();
    for index in 0..CALLS {
        let mut routing = suite.routing(index).await;
        let mut other = suite.routing(index + 1).await;
        let mut availability = suite.availability().await;
        let incident = format!("inc-{index:03}");
        let recommend = index % 5 == 0;
        let mode = if recommend {
            AssignmentMode::Recommend
        } else {
            AssignmentMode::AutoAssign
        };
        let request = assign_request(&suite, &incident, mode);
        let auto = assign_request(&suite, &incident, AssignmentMode::AutoAssign);
        calls.spawn(async move {
            let mut response = assign(&mut routing, request).await;
            if recommend
                && let Some(answer) = &response
                && answer.outcome() == AssignmentOutcome::Recommended
            {
                // A dispatcher confirms the top candidate on the other replica; if another
                // call took it meanwhile, the CAD routes the call automatically instead.
                let top = answer
                    .candidates
                    .iter()
                    .find(|c| c.eligible)
                    .map(|c| c.team_id.clone());
                let confirmed = match top {
                    Some(team_id) => other
                        .confirm_assignment(ConfirmAssignmentRequest {
                            request_id: unique_name("confirm"),
                            incident_id: incident.clone(),
                            team_id,
                        })
                        .await
                        .ok()
                        .and_then(|r| r.into_inner().assignment),
                    None => None,
                };
                response = match confirmed {
                    Some(_) => None,
                    None => assign(&mut other, auto).await,
                };
            }
            let assignment = response.and_then(|r| r.assignment);
            if let Some(assignment) = assignment {
                if index % 7 == 0 {
                    // The CAD hands the call back: release on either replica.
                    let released = other
                        .release_team(ReleaseTeamRequest {
                            request_id: unique_name("release"),
                            assignment_id: assignment.assignment_id.clone(),
                            reason: "handed back".into(),
                        })
                        .await;
                    assert!(
                        released.is_ok()
                            || released
                                .as_ref()
                                .is_err_and(|s| s.code() == Code::FailedPrecondition),
                        "{released:?}"
                    );
                } else if index % 11 == 0 {
                    // The team works the call and clears through availability, racing the
                    // other calls' claims.
                    for status in [TeamStatus::EnRoute, TeamStatus::Available] {
                        let _ = availability
                            .set_team_status(SetTeamStatusRequest {
                                request_id: unique_name("status"),
                                team_id: assignment.team_id.clone(),
                                status: status.into(),
                                incident_id: assignment.incident_id.clone(),
                                ..SetTeamStatusRequest::default()
                            })
                            .await;
                    }
                }
            }
        });
    }
    while let Some(joined) = calls.join_next().await {
        if let Err(error) = joined {
            let logs: Vec<String> = suite
                .routing
                .iter()
                .flat_map(ServiceProcess::stderr_lines)
                .collect();
            panic!("{error}; routing logs: {logs:#?}");
        }
    }

    assert_consistent(&suite, TEAMS).await;
    stop_sampling.cancel();
    let samples = sampler.await.expect("sampler");
    assert!(samples > 0, "the sampler never ran");

    // Every incident ended assigned (now or after being queued), released, queued or escalated.
    let mut record = suite.record().await;
    let states: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state, count(*) FROM routing.incidents GROUP BY state ORDER BY state",
    )
    .fetch_all(&mut record)
    .await
    .expect("states");
    let total: i64 = states.iter().map(|(_, n)| n).sum();
    assert_eq!(total, i64::try_from(CALLS).expect("small"), "{states:?}");
    for (state, _) in &states {
        assert!(
            ["ASSIGNED", "RELEASED", "QUEUED", "ESCALATED"].contains(&state.as_str()),
            "an incident ended {state}: {states:?}"
        );
    }
    let assigned: i64 = states
        .iter()
        .filter(|(s, _)| s == "ASSIGNED" || s == "RELEASED")
        .map(|(_, n)| n)
        .sum();
    assert!(
        assigned >= i64::try_from(TEAMS).expect("small"),
        "{states:?}"
    );
    redis_delete_prefix(&suite.prefix).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn losing_redis_writes_mid_run_never_gives_a_team_two_active_assignments() {
    const TEAMS: usize = 10;
    let mut suite = Suite::start(1).await;
    put_teams_on_duty(&suite, TEAMS, true).await;
    let mut routing = suite.routing(0).await;
    for index in 0..15 {
        let request = assign_request(
            &suite,
            &format!("before-{index:02}"),
            AssignmentMode::AutoAssign,
        );
        assign(&mut routing, request).await;
    }
    let mut record = suite.record().await;
    let before = active_by_team(&mut record).await;
    assert_eq!(
        before.len(),
        TEAMS,
        "every team was assigned before the loss"
    );

    // A failover that lost recent writes: every key of this deployment's prefix is gone.
    // (The shared Redis serves other tests, so this deletes the prefix instead of FLUSHALL.)
    redis_delete_prefix(&suite.prefix).await;
    // Availability restarts and rebuilds the roster from PostgreSQL; the teams come back on
    // duty and report positions, though the record still holds their earlier assignments.
    let redis = redis_url();
    let vars = env(&suite.database, &redis, &suite.prefix);
    suite.availability = ServiceProcess::start("relay-availability", &vars);
    suite.availability.wait_until_serving().await;
    put_teams_on_duty(&suite, TEAMS, false).await;

    for index in 0..15 {
        let request = assign_request(
            &suite,
            &format!("after-{index:02}"),
            AssignmentMode::AutoAssign,
        );
        assign(&mut routing, request).await;
    }
    assert_consistent(&suite, TEAMS).await;
    let after = active_by_team(&mut record).await;
    assert!(after.values().all(|list| list.len() == 1), "{after:?}");
    redis_delete_prefix(&suite.prefix).await;
}
