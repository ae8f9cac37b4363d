//! UpsertTeam commits its audit record with the roster change or not at all (real PostgreSQL
//! and Redis): with the trail refusing inserts, the upsert fails and the team does not exist;
//! without, it leaves one record, and a replay none.

#[allow(unused_imports)] // The shared helpers this test does not need.
mod common;

use std::sync::Arc;

use common::{RedisEnv, TestApp, start_time, upsert};
use relay_proto::availability::GetTeamRequest;
use relay_runtime::{audit::AuditSink, clock::ManualClock, storage::Database};
use secrecy::SecretString;
use tonic::Code;

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
    let url = SecretString::from(env.database.url().to_owned());
    let trail = AuditSink::new(Database::open(&url, relay_availability::SCHEMA, 2).expect("open"));
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
    trail
        .verify()
        .await
        .expect("database")
        .expect("a valid chain");
    app.stop().await;
    env.cleanup().await;
}
