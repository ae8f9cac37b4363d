//! Routing's writes commit their audit record with the change or not at all (real
//! PostgreSQL): with the trail refusing inserts, AssignTeam fails and records no assignment;
//! without, the record names the incident, the team and the assignment, and a replay adds
//! none.

mod common;

use common::{assign, team, world};
use relay_proto::{common::AssignmentMode, routing::GetAssignmentRequest};
use relay_routing::engine::CALL_AUDIT;
use relay_runtime::{
    audit::{AuditRecord, AuditSink},
    clock::Clock,
    storage::Database,
};
use secrecy::SecretString;

const RPC: &str = "/relay.routing.v1.RoutingService/AssignTeam";

fn call() -> AuditRecord {
    AuditRecord {
        principal: "dispatcher".into(),
        rpc: RPC.into(),
        outcome: "OK".into(),
        ..AuditRecord::default()
    }
}

#[tokio::test]
async fn an_assignment_commits_with_its_record_or_not_at_all() {
    let w = world().await;
    w.fleet
        .upsert_team(&w.region, team("near", 500.0, &[], 10, w.clock.now()));
    let pool = sqlx::PgPool::connect(w.database.url()).await.expect("pg");
    relay_tests::audit::refuse_audit(&pool, "routing").await;
    let request = assign("r1", "inc-1", &w.region, AssignmentMode::AutoAssign, 2, &[]);
    CALL_AUDIT
        .scope(call(), w.engine.assign_team(request.clone()))
        .await
        .expect_err("no assignment without its record");
    let assignments: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM routing.assignments")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(assignments, 0);

    relay_tests::audit::allow_audit(&pool, "routing").await;
    let response = CALL_AUDIT
        .scope(call(), w.engine.assign_team(request.clone()))
        .await
        .expect("assigned");
    CALL_AUDIT
        .scope(call(), w.engine.assign_team(request))
        .await
        .expect("replayed");
    let assignment = response.assignment.expect("assignment");
    w.engine
        .get_assignment(GetAssignmentRequest {
            assignment_id: assignment.assignment_id.clone(),
        })
        .await
        .expect("recorded");
    let url = SecretString::from(w.database.url().to_owned());
    let trail = AuditSink::new(Database::open(&url, relay_routing::SCHEMA, 2).expect("open"));
    let entries = trail
        .entries(0, (i64::MIN, i64::MAX), 100)
        .await
        .expect("read");
    let written: Vec<_> = entries
        .iter()
        .map(|e| (e.record.rpc.as_str(), e.record.resources.clone()))
        .collect();
    assert_eq!(
        written,
        vec![(
            RPC,
            vec![
                "incident:inc-1".to_owned(),
                "team:near".to_owned(),
                format!("assignment:{}", assignment.assignment_id),
            ]
        )]
    );
    trail
        .verify()
        .await
        .expect("database")
        .expect("a valid chain");
}
