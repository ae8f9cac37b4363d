//! One conformance suite for the `IncidentStore` trait, run on both backends: real PostgreSQL
//! (a database per test) and SQLite (a file per test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use relay_intake::store::{
    Change, ChangeOutcome, Consumed, CreateOutcome, IncidentStore, ListFilter, OutboxItem,
    OutboxKind, RequestRecord, StoredIncident, postgres::PgStore, sqlite::SqliteStore,
    timestamp_of,
};
use relay_proto::intake::{
    CallerContact, Incident, IncidentEvent, IncidentNote, RoutingOutcome, TriageDecision,
};
use relay_runtime::storage;
use relay_tests::TestDatabase;
use secrecy::SecretString;

fn incident(id: &str, cad_incident_id: &str, received: i64) -> StoredIncident {
    StoredIncident {
        incident: Incident {
            incident_id: id.into(),
            cad_system: "cad".into(),
            cad_incident_id: cad_incident_id.into(),
            incident_type: "WELFARE".into(),
            region: "r".into(),
            priority: 3,
            narrative: "private narrative".into(),
            caller: Some(CallerContact {
                name: "Private Name".into(),
                phone: "+15415550100".into(),
                callback_number: None,
            }),
            notes: vec![IncidentNote {
                text: "private note".into(),
                create_time: None,
            }],
            received_at: Some(timestamp_of(received)),
            state: 1,
            triage: Some(TriageDecision {
                disposition: 1,
                ..TriageDecision::default()
            }),
            routing: Some(RoutingOutcome {
                state: 2,
                team_id: format!("team-{id}"),
                ..RoutingOutcome::default()
            }),
            revision: 1,
            ..Incident::default()
        },
        override_disposition: 0,
        team_status: 3,
    }
}

fn ev(id: &str) -> IncidentEvent {
    IncidentEvent {
        incident_id: id.into(),
        kind: 1,
        ..IncidentEvent::default()
    }
}

fn outbox(id: &str, incident_id: &str, at: i64) -> OutboxItem {
    OutboxItem {
        outbox_id: id.into(),
        incident_id: incident_id.into(),
        kind: OutboxKind::Assign,
        payload: vec![1, 2, 3],
        attempts: 0,
        next_attempt_at: at,
    }
}

#[allow(clippy::too_many_lines)]
async fn conformance(store: Arc<dyn IncidentStore>) {
    // Create, and the idempotency key.
    let a = incident("a", "A", 1_000);
    let created = store
        .create_incident(&a, vec![ev("a"), ev("a")], vec![outbox("0001", "a", 0)], 5)
        .await
        .unwrap();
    let CreateOutcome::Created(events) = created else {
        panic!("created")
    };
    assert_eq!(
        events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let mut again = incident("a2", "A", 1_000);
    again.incident.incident_type = "EDP".into();
    let existing = store
        .create_incident(&again, vec![ev("a2")], vec![outbox("0002", "a2", 0)], 5)
        .await
        .unwrap();
    assert_eq!(
        existing,
        CreateOutcome::Existing(Box::new(a.clone())),
        "the first one, unchanged"
    );
    assert_eq!(
        store.pending_outbox().await.unwrap(),
        1,
        "the duplicate wrote no outbox row"
    );
    assert_eq!(store.get_incident("a").await.unwrap(), Some(a.clone()));
    assert_eq!(store.get_by_cad("cad", "A").await.unwrap(), Some(a.clone()));
    assert_eq!(store.get_incident("a2").await.unwrap(), None);
    assert_eq!(store.sequence_bounds("cad").await.unwrap(), (2, Some(1)));
    assert_eq!(store.sequence_bounds("other").await.unwrap(), (0, None));

    // Optimistic concurrency, request ids, settled outbox rows, consumed events.
    let mut next = a.clone();
    next.incident.revision = 2;
    next.incident.priority = 1;
    let change = |expected: i64, request: Option<&str>| Change {
        incident: Some(next.clone()),
        expected_revision: expected,
        events: vec![ev("a")],
        request: request.map(|r| RequestRecord {
            request_id: r.into(),
            rpc: "UpdateIncident".into(),
            fingerprint: "fp".into(),
            response: vec![9],
        }),
        now: 10,
        ..Change::default()
    };
    assert_eq!(
        store.apply_change(change(7, None)).await.unwrap(),
        ChangeOutcome::Conflict
    );
    let ChangeOutcome::Applied(events) =
        store.apply_change(change(1, Some("req-1"))).await.unwrap()
    else {
        panic!("applied")
    };
    assert_eq!(events[0].sequence, 3);
    let ChangeOutcome::RequestExists(record) =
        store.apply_change(change(2, Some("req-1"))).await.unwrap()
    else {
        panic!("request exists")
    };
    assert_eq!(record.response, vec![9]);
    assert_eq!(
        store
            .find_request("req-1")
            .await
            .unwrap()
            .unwrap()
            .fingerprint,
        "fp"
    );
    assert_eq!(
        store
            .get_incident("a")
            .await
            .unwrap()
            .unwrap()
            .incident
            .priority,
        1
    );

    let settle = Change {
        settles_outbox: Some("0001".into()),
        now: 11,
        ..Change::default()
    };
    assert_eq!(
        store.apply_change(settle.clone()).await.unwrap(),
        ChangeOutcome::Applied(vec![])
    );
    assert_eq!(
        store.apply_change(settle).await.unwrap(),
        ChangeOutcome::AlreadySettled
    );
    assert_eq!(store.pending_outbox().await.unwrap(), 0);

    let consumed = Consumed {
        source: "routing",
        region: "r".into(),
        event_id: "e1".into(),
    };
    assert!(store.record_consumed(&consumed, 12).await.unwrap());
    assert!(!store.record_consumed(&consumed, 12).await.unwrap());
    let with_consumed = Change {
        consumed: Some(consumed.clone()),
        now: 12,
        ..Change::default()
    };
    assert_eq!(
        store.apply_change(with_consumed).await.unwrap(),
        ChangeOutcome::AlreadyConsumed
    );
    assert_eq!(
        store
            .stream_cursor("routing", "r")
            .await
            .unwrap()
            .as_deref(),
        Some("e1")
    );
    assert_eq!(
        store.stream_cursor("availability", "r").await.unwrap(),
        None
    );

    // Outbox: due rows only, leased, one row per incident at a time, in order.
    let b = incident("b", "B", 2_000);
    store
        .create_incident(
            &b,
            vec![],
            vec![
                outbox("0003", "b", 100),
                outbox("0004", "b", 100),
                outbox("0005", "b", 900),
            ],
            20,
        )
        .await
        .unwrap();
    assert!(
        store.claim_outbox(50, 500, 10).await.unwrap().is_empty(),
        "not due yet"
    );
    let claimed = store.claim_outbox(200, 500, 10).await.unwrap();
    assert_eq!(
        claimed
            .iter()
            .map(|i| i.outbox_id.as_str())
            .collect::<Vec<_>>(),
        vec!["0003"]
    );
    assert_eq!(claimed[0].attempts, 1);
    assert!(
        store.claim_outbox(200, 500, 10).await.unwrap().is_empty(),
        "leased"
    );
    store
        .reschedule_outbox("0003", 300, "UNAVAILABLE")
        .await
        .unwrap();
    let claimed = store.claim_outbox(300, 800, 10).await.unwrap();
    assert_eq!(claimed[0].outbox_id, "0003");
    assert_eq!(claimed[0].attempts, 2);

    // Events and listing.
    let all = store.events_after("cad", 0, 100).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(store.events_after("cad", 2, 100).await.unwrap().len(), 1);
    for n in 0..5 {
        let c = incident(&format!("c{n}"), &format!("C{n}"), 3_000 + n);
        store.create_incident(&c, vec![], vec![], 30).await.unwrap();
    }
    let page = store
        .list_incidents(&ListFilter {
            limit: 3,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    let ids: Vec<_> = page
        .iter()
        .map(|s| s.incident.incident_id.as_str())
        .collect();
    assert_eq!(ids, vec!["c4", "c3", "c2"]);
    let rest = store
        .list_incidents(&ListFilter {
            limit: 10,
            after: Some((3_002, "c2".into())),
            received_after: Some(1_000),
            received_before: Some(3_004),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    let ids: Vec<_> = rest
        .iter()
        .map(|s| s.incident.incident_id.as_str())
        .collect();
    assert_eq!(ids, vec!["c1", "c0", "b", "a"]);
    let none = store
        .list_incidents(&ListFilter {
            limit: 10,
            region: "elsewhere".into(),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
    assert_eq!(
        store
            .incident_for_team("team-b")
            .await
            .unwrap()
            .map(|s| s.incident.incident_id),
        Some("b".to_owned())
    );

    // Retention: personal data goes, the rest stays; later writes cannot bring it back.
    assert_eq!(store.purge_personal_data(2_500, 40).await.unwrap(), 2);
    let purged = store.get_incident("a").await.unwrap().unwrap().incident;
    assert!(purged.narrative.is_empty() && purged.caller.is_none() && purged.notes.is_empty());
    assert_eq!(purged.incident_type, "WELFARE");
    let mut write_back = StoredIncident {
        incident: purged.clone(),
        override_disposition: 0,
        team_status: 0,
    };
    write_back.incident.narrative = "again".into();
    write_back.incident.revision += 1;
    let change = Change {
        incident: Some(write_back),
        expected_revision: purged.revision,
        now: 41,
        ..Change::default()
    };
    assert!(matches!(
        store.apply_change(change).await.unwrap(),
        ChangeOutcome::Applied(_)
    ));
    assert!(
        store
            .get_incident("a")
            .await
            .unwrap()
            .unwrap()
            .incident
            .narrative
            .is_empty()
    );
    let kept = store.get_incident("c0").await.unwrap().unwrap().incident;
    assert_eq!(kept.narrative, "private narrative");
    assert!(store.purge_history(1_000_000).await.unwrap() >= 3);
    assert_eq!(
        store.sequence_bounds("cad").await.unwrap(),
        (3, None),
        "the sequence never goes back"
    );
}

#[tokio::test]
async fn postgres_store_conforms() {
    let db = TestDatabase::new().await;
    let url = SecretString::from(db.url().to_owned());
    let pool = storage::postgres_pool(&url, relay_intake::SCHEMA, 4).unwrap();
    storage::migrate_postgres(&pool, relay_intake::SCHEMA, &relay_intake::MIGRATOR)
        .await
        .unwrap();
    conformance(Arc::new(PgStore::new(pool))).await;
}

#[tokio::test]
async fn sqlite_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let url = SecretString::from(format!(
        "sqlite://{}",
        dir.path().join("intake.db").display()
    ));
    let pool = storage::sqlite_pool(&url, 4).unwrap();
    relay_intake::SQLITE_MIGRATOR.run(&pool).await.unwrap();
    conformance(Arc::new(SqliteStore::new(pool))).await;
}

#[tokio::test]
async fn intake_serves_on_sqlite_for_relay_dev() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("dev.db").display());
    let routing = support::FakeRouting::started().await;
    let mut app = support::TestIntake::start(&url, &routing, None, &[], None).await;
    let response = app
        .client
        .submit_incident(support::submission("DEV-1", "WELFARE"))
        .await
        .unwrap()
        .into_inner();
    assert!(response.created);
    assert_eq!(
        response.routing.unwrap().state,
        relay_proto::intake::RoutingState::Assigned as i32
    );
    app.stop().await;
}
