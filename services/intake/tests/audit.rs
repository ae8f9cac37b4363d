//! Intake's audit trail against a real PostgreSQL: a write commits with its record or not
//! at all, a replay records nothing, and a read of caller details is recorded before it is
//! answered (or refused when it cannot be).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use relay_proto::intake::{GetIncidentRequest, UpdateIncidentRequest};
use relay_runtime::{audit::AuditSink, storage::Database};
use relay_tests::{
    TestDatabase,
    audit::{allow_audit, refuse_audit},
};
use secrecy::SecretString;
use support::{FakeRouting, TestIntake, submission};
use tonic::Code;

async fn count(pool: &sqlx::PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM intake.{table}"))
        .fetch_one(pool)
        .await
        .unwrap()
}

fn sink(url: &str) -> AuditSink {
    let url = SecretString::from(url.to_owned());
    AuditSink::new(Database::open(&url, relay_intake::SCHEMA, 2).unwrap())
}

/// The successful calls recorded: (rpc, principal, resources). The failed write's record,
/// written by the layer's background writer, may come before or after them.
async fn rpcs(sink: &AuditSink) -> Vec<(String, String, Vec<String>)> {
    sink.entries(0, (i64::MIN, i64::MAX), 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.record.outcome == "OK" && !e.record.rpc.starts_with("audit."))
        .map(|e| (e.record.rpc, e.record.principal, e.record.resources))
        .collect()
}

const SUBMIT: &str = "/relay.intake.v1.IntakeService/SubmitIncident";
const UPDATE: &str = "/relay.intake.v1.IntakeService/UpdateIncident";
const GET: &str = "/relay.intake.v1.IntakeService/GetIncident";

#[tokio::test]
async fn a_change_without_its_record_is_impossible_and_a_replay_records_nothing() {
    let db = TestDatabase::new().await;
    let routing = FakeRouting::started().await;
    let mut app = TestIntake::start(db.url(), &routing, None, &[], None).await;
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    refuse_audit(&pool, "intake").await;

    let refused = app
        .client
        .submit_incident(submission("A-1", "WELFARE"))
        .await
        .expect_err("the record cannot be written, so neither can the incident");
    assert_ne!(refused.code(), Code::Ok);
    assert_eq!(count(&pool, "incidents").await, 0);
    assert_eq!(count(&pool, "outbox").await, 0);
    assert_eq!(count(&pool, "pending_events").await, 0);

    allow_audit(&pool, "intake").await;
    let created = app.submit(submission("A-1", "WELFARE")).await;
    let id = created.incident_id.clone();
    // The same incident again: nothing changes, nothing is recorded.
    app.submit(submission("A-1", "WELFARE")).await;
    let update = UpdateIncidentRequest {
        request_id: "audit-update-1".into(),
        incident_id: id.clone(),
        priority: Some(2),
        ..UpdateIncidentRequest::default()
    };
    app.client.update_incident(update.clone()).await.unwrap();
    // A replay of the same request_id answers the remembered response and records nothing.
    app.client.update_incident(update).await.unwrap();

    let trail = sink(db.url());
    let resources = vec![format!("incident:{id}")];
    assert_eq!(
        rpcs(&trail).await,
        vec![
            (
                SUBMIT.to_owned(),
                "development".to_owned(),
                resources.clone()
            ),
            (UPDATE.to_owned(), "development".to_owned(), resources),
        ]
    );
    let entries = trail.entries(0, (i64::MIN, i64::MAX), 100).await.unwrap();
    let first = entries
        .iter()
        .find(|e| e.record.rpc == SUBMIT && e.record.outcome == "OK")
        .unwrap();
    assert_eq!(first.record.credential, "development");
    assert!(!first.record.request_id.is_empty());
    assert!(
        first.record.peer.starts_with("127.0.0.1:"),
        "{:?}",
        first.record
    );
    let verified = trail.verify().await.unwrap().expect("a valid chain");
    assert!(verified.records >= 2, "{verified:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_caller_details_read_is_recorded_first_or_refused() {
    let db = TestDatabase::new().await;
    let routing = FakeRouting::started().await;
    let mut app = TestIntake::start(db.url(), &routing, None, &[], None).await;
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let id = app.submit(submission("R-1", "WELFARE")).await.incident_id;
    let get = GetIncidentRequest {
        incident_id: id.clone(),
        ..GetIncidentRequest::default()
    };
    // In development every caller may read caller details: each read is recorded.
    let read = app
        .client
        .get_incident(get.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(!read.incident.unwrap().caller_details_withheld);
    let trail = sink(db.url());
    let last = rpcs(&trail).await.pop().unwrap();
    assert_eq!(
        last,
        (
            GET.to_owned(),
            "development".to_owned(),
            vec![format!("incident:{id}")]
        )
    );

    refuse_audit(&pool, "intake").await;
    let refused = app
        .client
        .get_incident(get)
        .await
        .expect_err("no unaudited read");
    assert_eq!(refused.code(), Code::Unavailable);
    app.stop().await;
}
