//! UpsertTeam commits its audit record with the roster change or not at all (real PostgreSQL
//! and Redis): with the trail refusing inserts, the upsert fails and the team does not exist;
//! without, it leaves one record, and a replay none. Status and location reports, which change
//! the live store in Redis, are recorded before they are applied, and not applied when their
//! record cannot be written.

#[allow(unused_imports)] // The shared helpers this test does not need.
mod common;

use std::{collections::BTreeMap, sync::Arc};

use common::{RedisEnv, TestApp, reason, start_time, upsert};
use relay_proto::{
    availability::{
        GetTeamRequest, ReportLocationRequest, SetTeamStatusRequest, StreamLocationsRequest, Team,
        availability_service_client::AvailabilityServiceClient,
    },
    common::{GeoPoint, TeamStatus},
};
use relay_runtime::{
    audit::AuditSink,
    clock::{Clock, ManualClock},
    storage::Database,
    validate::to_timestamp,
};
use secrecy::SecretString;
use tonic::{Code, transport::Channel};

/// The method names of the service, as records name them.
fn method(name: &str) -> String {
    format!("/relay.availability.v1.AvailabilityService/{name}")
}

/// The trail of the service on `env`'s database.
fn trail(env: &RedisEnv) -> AuditSink {
    let url = SecretString::from(env.database.url().to_owned());
    AuditSink::new(Database::open(&url, relay_availability::SCHEMA, 2).expect("open"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roster_write_commits_with_its_record_or_not_at_all() {
    let env = RedisEnv::new().await;
    let mut app = TestApp::start(&env.setup, Arc::new(ManualClock::new(start_time()))).await;
    let pool = sqlx::PgPool::connect(env.database.url()).await.expect("pg");
    relay_tests::audit::refuse_audit(&pool, "availability").await;
    let request = upsert("t-audit", "north");
    let refused = app
        .client
        .upsert_team(request.clone())
        .await
        .expect_err("no change without its record");
    assert_ne!(refused.code(), Code::Ok);
    let missing = app
        .client
        .get_team(GetTeamRequest {
            team_id: "t-audit".into(),
        })
        .await
        .expect_err("the creation was undone");
    assert_eq!(missing.code(), Code::NotFound);

    relay_tests::audit::allow_audit(&pool, "availability").await;
    app.client
        .upsert_team(request.clone())
        .await
        .expect("created");
    app.client.upsert_team(request).await.expect("replayed");
    let trail = trail(&env);
    let written: Vec<_> = trail
        .entries(0, (i64::MIN, i64::MAX), 100)
        .await
        .expect("read")
        .into_iter()
        .filter(|e| e.record.outcome == "OK")
        .map(|e| (e.record.rpc, e.record.resources))
        .collect();
    assert_eq!(
        written,
        vec![(
            "/relay.availability.v1.AvailabilityService/UpsertTeam".to_owned(),
            vec!["team:t-audit".to_owned()]
        )]
    );
    check_and_stop(&trail, app, &env).await;
}

/// Checks the whole chain, then stops the service and deletes the test's Redis keys.
async fn check_and_stop(trail: &AuditSink, app: TestApp, env: &RedisEnv) {
    trail
        .verify()
        .await
        .expect("database")
        .expect("a valid chain");
    app.stop().await;
    env.cleanup().await;
}

/// The three reports (SetTeamStatus on t-a; ReportLocation on t-a; StreamLocations on t-a
/// and t-b), with positions at `at`, each answered with its code.
async fn report_all(
    client: &mut AvailabilityServiceClient<Channel>,
    at: chrono::DateTime<chrono::Utc>,
) -> Vec<Result<(), tonic::Status>> {
    let location = Some(GeoPoint {
        latitude: 45.5,
        longitude: -122.6,
    });
    let status = client
        .set_team_status(SetTeamStatusRequest {
            request_id: relay_tests::unique_name("req"),
            team_id: "t-a".into(),
            status: TeamStatus::Available as i32,
            incident_id: String::new(),
            expected_revision: 0,
        })
        .await
        .map(drop);
    let reported = client
        .report_location(ReportLocationRequest {
            team_id: "t-a".into(),
            location,
            recorded_at: Some(to_timestamp(at)),
            heading_degrees: None,
            speed_meters_per_second: None,
            accuracy_meters: None,
        })
        .await
        .map(drop);
    let streamed = ["t-b", "t-a"].map(|team| StreamLocationsRequest {
        team_id: team.into(),
        location,
        recorded_at: Some(to_timestamp(at + chrono::Duration::seconds(1))),
        heading_degrees: None,
        speed_meters_per_second: None,
        accuracy_meters: None,
    });
    let streamed = client
        .stream_locations(tokio_stream::iter(streamed))
        .await
        .map(drop);
    vec![status, reported, streamed]
}

async fn teams(client: &mut AvailabilityServiceClient<Channel>) -> Vec<Team> {
    let mut teams = Vec::new();
    for team_id in ["t-a", "t-b"] {
        let team = client
            .get_team(GetTeamRequest {
                team_id: team_id.into(),
            })
            .await
            .expect("read")
            .into_inner()
            .team;
        teams.push(team.expect("a team"));
    }
    teams
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_is_recorded_before_it_is_applied_or_not_applied() {
    let env = RedisEnv::new().await;
    let mut app = TestApp::start(&env.setup, Arc::new(ManualClock::new(start_time()))).await;
    for team in ["t-a", "t-b"] {
        app.client
            .upsert_team(upsert(team, "north"))
            .await
            .expect("created");
    }
    let before = teams(&mut app.client).await;
    let pool = sqlx::PgPool::connect(env.database.url()).await.expect("pg");
    relay_tests::audit::refuse_audit(&pool, "availability").await;
    let now = app.clock.now();
    for answer in report_all(&mut app.client, now).await {
        let refused = answer.expect_err("no report without its record");
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert_eq!(reason(&refused), "STORE_UNAVAILABLE");
    }
    assert_eq!(teams(&mut app.client).await, before, "nothing was applied");

    relay_tests::audit::allow_audit(&pool, "availability").await;
    for answer in report_all(&mut app.client, now).await {
        answer.expect("recorded and applied");
    }
    let after = teams(&mut app.client).await;
    assert!(
        after.iter().all(|team| team.location.is_some()),
        "{after:?}"
    );
    let trail = trail(&env);
    // The teams each report RPC was recorded for (a stream's reports may arrive in one
    // batch, one record, or in two).
    let mut reports: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in trail
        .entries(0, (i64::MIN, i64::MAX), 100)
        .await
        .expect("read")
    {
        let record = entry.record;
        if record.outcome == "OK" && record.rpc != method("UpsertTeam") {
            reports
                .entry(record.rpc)
                .or_default()
                .extend(record.resources);
        }
    }
    reports.values_mut().for_each(|teams| teams.sort());
    let teams = |ids: &[&str]| ids.iter().map(|id| format!("team:{id}")).collect();
    assert_eq!(
        reports
            .into_iter()
            .filter(|(rpc, _)| rpc.starts_with('/'))
            .collect::<Vec<_>>(),
        vec![
            (method("ReportLocation"), teams(&["t-a"])),
            (method("SetTeamStatus"), teams(&["t-a"])),
            (method("StreamLocations"), teams(&["t-a", "t-b"])),
        ]
    );
    check_and_stop(&trail, app, &env).await;
}
