//! The directory's writes commit with their audit record or not at all, on PostgreSQL and
//! SQLite: with the trail refusing inserts (a trigger), UpsertService fails and stores
//! nothing; without it, each write leaves one record and a replay none.

mod common;

use common::{Harness, Kind, active_service, start};
use relay_proto::directory::{GetServiceRequest, UpsertServiceRequest};
use relay_runtime::{audit::AuditSink, storage::Database};
use secrecy::SecretString;
use tonic::Code;

fn sink(h: &Harness) -> AuditSink {
    let url = SecretString::from(h.url.clone());
    AuditSink::new(Database::open(&url, relay_directory::SCHEMA, 2).expect("open"))
}

async fn execute(database: &Database, sql: &str) {
    match database {
        Database::Postgres { pool, .. } => sqlx::query(sql).execute(pool).await.map(drop),
        Database::Sqlite(pool) => sqlx::query(sql).execute(pool).await.map(drop),
    }
    .unwrap_or_else(|error| panic!("{sql}: {error}"));
}

async fn refuse_audit(database: &Database, kind: Kind) {
    match kind {
        Kind::Postgres => {
            let Database::Postgres { pool, .. } = database else {
                unreachable!("postgres")
            };
            relay_tests::audit::refuse_audit(pool, "directory").await;
        }
        Kind::Sqlite => {
            execute(
                database,
                "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log \
                 BEGIN SELECT RAISE(ABORT, 'audit refused by the test'); END",
            )
            .await;
        }
    }
}

fn upsert(id: &str, request_id: &str) -> UpsertServiceRequest {
    UpsertServiceRequest {
        request_id: request_id.into(),
        service: Some(active_service(id, "Crisis line", vec![])),
    }
}

async fn a_write_commits_with_its_record_or_not_at_all(kind: Kind) {
    let mut h = start(kind).await;
    let trail = sink(&h);
    refuse_audit(trail.database(), kind).await;
    let refused = h
        .client
        .upsert_service(upsert("svc-a", "r-1"))
        .await
        .expect_err("no change without its record");
    assert_ne!(refused.code(), Code::Ok);
    let missing = h
        .client
        .get_service(GetServiceRequest {
            service_id: "svc-a".into(),
        })
        .await
        .expect_err("nothing stored");
    assert_eq!(missing.code(), Code::NotFound);

    let drop = match kind {
        Kind::Postgres => "DROP TRIGGER refuse_audit ON audit_log",
        Kind::Sqlite => "DROP TRIGGER refuse_audit",
    };
    execute(trail.database(), drop).await;
    h.client
        .upsert_service(upsert("svc-a", "r-2"))
        .await
        .expect("stored");
    h.client
        .upsert_service(upsert("svc-a", "r-2"))
        .await
        .expect("replayed");
    let records: Vec<_> = trail
        .entries(0, (i64::MIN, i64::MAX), 100)
        .await
        .expect("read")
        .into_iter()
        .filter(|e| e.record.outcome == "OK")
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        records[0].record.rpc,
        "/relay.directory.v1.DirectoryService/UpsertService"
    );
    assert_eq!(
        records[0].record.resources,
        vec!["service:svc-a".to_owned()]
    );
    trail
        .verify()
        .await
        .expect("database")
        .expect("a valid chain");
}

both!(a_write_commits_with_its_record_or_not_at_all);
