//! One conformance suite for the `IncidentStore` trait, run on both backends: real PostgreSQL
//! (a database per test) and SQLite (a file per test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use relay_intake::store::{
    Change, ChangeOutcome, Consumed, CreateOutcome, IncidentStore, ListFilter, OutboxItem,
    OutboxKind, PostgresStore, Sequenced, SqliteStore, StoredIncident, timestamp_of,
};
use relay_proto::intake::{
    CallerContact, Incident, IncidentEvent, IncidentNote, RoutingOutcome, TriageDecision,
};
use relay_runtime::{idempotency::RequestRecord, storage};
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
    assert_eq!(created, CreateOutcome::Created);
    // Committed events wait for the sequencer: not on the stream yet.
    assert_eq!(store.pending_events().await.unwrap(), (2, Some(5)));
    assert_eq!(store.sequence_bounds("cad").await.unwrap(), (0, None));
    assert!(store.events_after("cad", 0, 100).await.unwrap().is_empty());
    let sequenced = store.sequence_events(100).await.unwrap();
    assert_eq!(
        sequenced,
        Sequenced {
            events: 2,
            cad_systems: vec!["cad".into()],
            oldest_event_time: Some(5),
            moved: vec![ev("a"), ev("a")],
        }
    );
    assert_eq!(store.pending_events().await.unwrap(), (0, None));
    assert_eq!(
        store.sequence_events(100).await.unwrap(),
        Sequenced::default(),
        "nothing left"
    );
    assert_eq!(
        store
            .events_after("cad", 0, 100)
            .await
            .unwrap()
            .iter()
            .map(|e| e.sequence)
            .collect::<Vec<_>>(),
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
    assert_eq!(
        store.apply_change(change(1, Some("req-1"))).await.unwrap(),
        ChangeOutcome::Applied(1)
    );
    assert_eq!(store.sequence_events(100).await.unwrap().events, 1);
    assert_eq!(
        store.events_after("cad", 2, 100).await.unwrap()[0].sequence,
        3
    );
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
        ChangeOutcome::Applied(0)
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

/// A migrated pool on the test database; each call opens its own pool (its own replica).
async fn pg_pool(db: &TestDatabase, connections: u32) -> sqlx::PgPool {
    let url = SecretString::from(db.url().to_owned());
    let pool = storage::postgres_pool(&url, relay_intake::SCHEMA, connections).unwrap();
    storage::migrate_postgres(&pool, relay_intake::SCHEMA, &relay_intake::MIGRATOR)
        .await
        .unwrap();
    pool
}

/// A migrated pool on `dir/intake.db`; each call opens its own pool.
async fn sqlite_pool(dir: &std::path::Path) -> sqlx::SqlitePool {
    let url = SecretString::from(format!("sqlite://{}", dir.join("intake.db").display()));
    let pool = storage::sqlite_pool(&url, 4).unwrap();
    relay_intake::SQLITE_MIGRATOR.run(&pool).await.unwrap();
    pool
}

#[tokio::test]
async fn postgres_store_conforms() {
    let db = TestDatabase::new().await;
    conformance(Arc::new(PostgresStore::new(pg_pool(&db, 4).await))).await;
}

#[tokio::test]
async fn sqlite_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    conformance(Arc::new(SqliteStore::new(sqlite_pool(dir.path()).await))).await;
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

/// An event of step `change` (0: the creation) of incident `id`, `index` within the change.
fn step(id: &str, change: i64, index: usize) -> IncidentEvent {
    IncidentEvent {
        incident_id: id.into(),
        kind: 1,
        incident_revision: change + 1,
        detail: format!("{change}.{index}"),
        ..IncidentEvent::default()
    }
}

/// Two stores on one database stand in for two intake replicas. Many incidents of one CAD
/// change at once, each incident's changes alternating between the replicas, while both
/// replicas' sequencers run in small batches. The stream must end up gapless, with every
/// event exactly once, and each incident's events in the order they happened.
async fn replicas_sequence_gapless_and_in_order(stores: [Arc<dyn IncidentStore>; 2]) {
    use std::sync::atomic::{AtomicBool, Ordering};
    const INCIDENTS: usize = 24;
    const CHANGES: i64 = 6;
    const PER_CHANGE: usize = 2;
    let writing = Arc::new(AtomicBool::new(true));
    let mut sequencers = tokio::task::JoinSet::new();
    for store in &stores {
        let store = Arc::clone(store);
        let writing = Arc::clone(&writing);
        sequencers.spawn(async move {
            loop {
                let last_round = !writing.load(Ordering::SeqCst);
                let moved = store.sequence_events(7).await.unwrap();
                if moved.events == 0 {
                    if last_round {
                        return;
                    }
                    tokio::task::yield_now().await;
                }
            }
        });
    }
    let mut writers = tokio::task::JoinSet::new();
    for n in 0..INCIDENTS {
        let stores = stores.clone();
        writers.spawn(async move {
            let id = format!("r{n}");
            let mut current = incident(&id, &format!("R{n}"), 1);
            let created = stores[n % 2]
                .create_incident(&current, vec![step(&id, 0, 0), step(&id, 0, 1)], vec![], 1)
                .await
                .unwrap();
            assert_eq!(created, CreateOutcome::Created);
            for change in 1..=CHANGES {
                let mut next = current.clone();
                next.incident.revision += 1;
                let events = (0..PER_CHANGE).map(|i| step(&id, change, i)).collect();
                let replica = (n + usize::try_from(change).unwrap()) % 2;
                let outcome = stores[replica]
                    .apply_change(Change {
                        incident: Some(next.clone()),
                        expected_revision: current.incident.revision,
                        events,
                        now: 1 + change,
                        ..Change::default()
                    })
                    .await
                    .unwrap();
                assert_eq!(outcome, ChangeOutcome::Applied(PER_CHANGE));
                current = next;
            }
        });
    }
    while let Some(result) = writers.join_next().await {
        result.unwrap();
    }
    writing.store(false, Ordering::SeqCst);
    while let Some(result) = sequencers.join_next().await {
        result.unwrap();
    }
    assert_eq!(stores[1].pending_events().await.unwrap(), (0, None));
    let events = stores[0].events_after("cad", 0, 100_000).await.unwrap();
    let total = INCIDENTS * (1 + usize::try_from(CHANGES).unwrap()) * PER_CHANGE;
    assert_eq!(
        events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        (1..=i64::try_from(total).unwrap()).collect::<Vec<_>>(),
        "gapless, each event once"
    );
    assert_eq!(
        stores[1].sequence_bounds("cad").await.unwrap(),
        (i64::try_from(total).unwrap(), Some(1))
    );
    for n in 0..INCIDENTS {
        let id = format!("r{n}");
        let seen: Vec<&str> = events
            .iter()
            .filter(|e| e.incident_id == id)
            .map(|e| e.detail.as_str())
            .collect();
        let happened: Vec<String> = (0..=CHANGES)
            .flat_map(|c| (0..PER_CHANGE).map(move |i| format!("{c}.{i}")))
            .collect();
        assert_eq!(seen, happened, "incident {id} out of order");
    }
}

#[tokio::test]
async fn postgres_replicas_sequence_one_cad_gapless_and_in_incident_order() {
    let db = TestDatabase::new().await;
    replicas_sequence_gapless_and_in_order([
        Arc::new(PostgresStore::new(pg_pool(&db, 8).await)),
        Arc::new(PostgresStore::new(pg_pool(&db, 8).await)),
    ])
    .await;
}

#[tokio::test]
async fn sqlite_replicas_sequence_one_cad_gapless_and_in_incident_order() {
    let dir = tempfile::tempdir().unwrap();
    replicas_sequence_gapless_and_in_order([
        Arc::new(SqliteStore::new(sqlite_pool(dir.path()).await)),
        Arc::new(SqliteStore::new(sqlite_pool(dir.path()).await)),
    ])
    .await;
}

/// A pending event whose transaction is still open when a later-id event commits does not
/// hold the stream back, and takes the next sequence once it commits: no gap, no reuse.
#[tokio::test]
async fn an_event_committed_late_with_a_lower_id_takes_the_next_sequence() {
    let db = TestDatabase::new().await;
    let pool = pg_pool(&db, 4).await;
    let store = PostgresStore::new(pool.clone());
    let mut slow = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO pending_events (cad_system, incident_id, event_time, body) \
         VALUES ('cad', 'slow', 1, '')",
    )
    .execute(&mut *slow)
    .await
    .unwrap();
    store
        .create_incident(&incident("fast", "F", 1), vec![ev("fast")], vec![], 2)
        .await
        .unwrap();
    assert_eq!(store.sequence_events(100).await.unwrap().events, 1);
    slow.commit().await.unwrap();
    assert_eq!(store.sequence_events(100).await.unwrap().events, 1);
    let events = store.events_after("cad", 0, 100).await.unwrap();
    let order: Vec<(i64, &str)> = events
        .iter()
        .map(|e| (e.sequence, e.incident_id.as_str()))
        .collect();
    assert_eq!(order, vec![(1, "fast"), (2, "")]);
}
