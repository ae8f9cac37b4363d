//! The conformance suite of the `Store` trait: every check runs against PostgreSQL (a
//! database per test) and SQLite (a file per test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Duration, TimeZone, Utc};
use relay_proto::{
    common::GeoPoint,
    routing::{
        Assignment, AssignmentEndCause, AssignmentEvent, AssignmentEventKind, AssignmentSource,
        AssignmentState,
    },
};

use relay_routing::store::{
    EndAssignment, IncidentRecord, IncidentState, IncidentWrite, PostgresStore, QueueCursor,
    RequestRecord, SqliteStore, Store, StoreError, TEAM_CLEARED, Write,
};
use relay_runtime::validate::to_timestamp as timestamp;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0)
        .single()
        .expect("valid")
}

fn incident(id: &str, region: &str, state: IncidentState) -> IncidentRecord {
    IncidentRecord {
        incident_id: id.to_owned(),
        region: region.to_owned(),
        cad_system: "cad".into(),
        priority: 3,
        location: GeoPoint {
            latitude: 44.05,
            longitude: -123.09,
        },
        required_capabilities: vec!["clinician".into(), "lang:es".into()],
        preferred_capabilities: vec![],
        expected_duration_seconds: Some(600),
        state,
        queued_time: None,
        escalate_time: None,
        unserved_reason: 0,
        version: 0,
        update_time: t0(),
        cad_incident_id: String::new(),
    }
}

fn queued(id: &str, region: &str, priority: i32, at: DateTime<Utc>) -> IncidentRecord {
    let mut record = incident(id, region, IncidentState::Queued);
    record.priority = priority;
    record.queued_time = Some(at);
    record.escalate_time = Some(at + Duration::minutes(10));
    record.unserved_reason = 3;
    record
}

fn assignment(id: &str, incident_id: &str, team_id: &str, token: i64) -> Assignment {
    Assignment {
        assignment_id: id.to_owned(),
        incident_id: incident_id.to_owned(),
        team_id: team_id.to_owned(),
        region: "r".into(),
        distance_meters: 1234.5,
        eta_seconds: 99,
        assigned_at: Some(timestamp(t0())),
        fencing_token: token,
        state: AssignmentState::Active.into(),
        source: AssignmentSource::Queue.into(),
        cad_system: "cad".into(),
        end_time: None,
        end_reason: String::new(),
        end_cause: 0,
        cad_incident_id: String::new(),
    }
}

fn event(incident_id: &str) -> AssignmentEvent {
    AssignmentEvent {
        event_id: String::new(),
        kind: AssignmentEventKind::Queued.into(),
        incident_id: incident_id.to_owned(),
        cad_system: "cad".into(),
        assignment: None,
        queued: None,
        reason: 3,
        event_time: Some(timestamp(t0())),
        cad_incident_id: String::new(),
    }
}

async fn create(store: &dyn Store, record: IncidentRecord) {
    store
        .write(Write {
            region: record.region.clone(),
            incident: Some(IncidentWrite {
                record,
                expected_version: 0,
            }),
            ..Write::default()
        })
        .await
        .expect("create incident");
}

async fn assign(store: &dyn Store, a: Assignment) -> Result<(), StoreError> {
    store
        .write(Write {
            region: a.region.clone(),
            new_assignment: Some(a),
            ..Write::default()
        })
        .await
}

async fn incidents_round_trip_and_refuse_stale_versions(store: &dyn Store) {
    let record = incident("i1", "r", IncidentState::Routed);
    create(store, record.clone()).await;
    let read = store.incident("i1").await.expect("read").expect("exists");
    assert_eq!(read.version, 1);
    assert_eq!(read.required_capabilities, record.required_capabilities);
    assert_eq!(read.expected_duration_seconds, Some(600));
    assert!(matches!(
        store
            .write(Write {
                region: "r".into(),
                incident: Some(IncidentWrite {
                    record: record.clone(),
                    expected_version: 0
                }),
                ..Write::default()
            })
            .await,
        Err(StoreError::VersionConflict)
    ));
    let mut next = read.clone();
    next.state = IncidentState::Cancelled;
    let stale = Write {
        region: "r".into(),
        incident: Some(IncidentWrite {
            record: next.clone(),
            expected_version: 7,
        }),
        events: vec![event("i1")],
        ..Write::default()
    };
    assert!(matches!(
        store.write(stale).await,
        Err(StoreError::VersionConflict)
    ));
    assert_eq!(
        store.event_bounds("r").await.expect("bounds"),
        (1, 0),
        "a refused write appends no event"
    );
    store
        .write(Write {
            region: "r".into(),
            incident: Some(IncidentWrite {
                record: next,
                expected_version: 1,
            }),
            ..Write::default()
        })
        .await
        .expect("current version");
    let read = store.incident("i1").await.expect("read").expect("exists");
    assert_eq!((read.version, read.state), (2, IncidentState::Cancelled));
    assert!(store.incident("nope").await.expect("read").is_none());
}

async fn one_active_assignment_per_team_and_per_incident(store: &dyn Store) {
    for id in ["i1", "i2", "i3"] {
        create(store, incident(id, "r", IncidentState::Routed)).await;
    }
    assign(store, assignment("a1", "i1", "t1", 1))
        .await
        .expect("first");
    assert!(matches!(
        assign(store, assignment("a2", "i2", "t1", 2)).await,
        Err(StoreError::TeamBusy)
    ));
    assert!(matches!(
        assign(store, assignment("a3", "i1", "t2", 1)).await,
        Err(StoreError::IncidentBusy)
    ));
    let active = store
        .active_assignment_of_team("t1")
        .await
        .expect("read")
        .expect("active");
    assert_eq!(active, assignment("a1", "i1", "t1", 1));
    assert_eq!(store.active_assignments("r").await.expect("read").len(), 1);
    // Ending it frees both the team and the incident.
    let end = EndAssignment {
        assignment_id: "a1".into(),
        state: AssignmentState::Released,
        end_time: t0() + Duration::minutes(5),
        end_reason: "done".into(),
        end_cause: AssignmentEndCause::Released,
    };
    store
        .write(Write {
            region: "r".into(),
            end_assignment: Some(end.clone()),
            ..Write::default()
        })
        .await
        .expect("end");
    assert!(matches!(
        store
            .write(Write {
                region: "r".into(),
                end_assignment: Some(end),
                ..Write::default()
            })
            .await,
        Err(StoreError::NotActive)
    ));
    let ended = store.assignment("a1").await.expect("read").expect("exists");
    assert_eq!(ended.state, i32::from(AssignmentState::Released));
    assert_eq!(ended.end_reason, "done");
    assert!(ended.end_time.is_some());
    assign(store, assignment("a4", "i2", "t1", 2))
        .await
        .expect("team free again");
    assert!(
        store
            .active_assignment_of_incident("i1")
            .await
            .expect("read")
            .is_none()
    );
}

async fn stale_fencing_tokens_are_refused(store: &dyn Store) {
    for id in ["i1", "i2", "i3"] {
        create(store, incident(id, "r", IncidentState::Routed)).await;
    }
    assign(store, assignment("a1", "i1", "t1", 5))
        .await
        .expect("first");
    store
        .write(Write {
            region: "r".into(),
            end_assignment: Some(EndAssignment {
                assignment_id: "a1".into(),
                state: AssignmentState::Cancelled,
                end_time: t0(),
                end_reason: "x".into(),
                end_cause: AssignmentEndCause::Cancelled,
            }),
            ..Write::default()
        })
        .await
        .expect("end");
    for token in [5, 3] {
        assert!(
            matches!(
                assign(store, assignment("a2", "i2", "t1", token)).await,
                Err(StoreError::StaleToken)
            ),
            "token {token} is not larger than 5"
        );
    }
    assert!(store.assignment("a2").await.expect("read").is_none());
    assign(store, assignment("a2", "i2", "t1", 6))
        .await
        .expect("larger token");
}

async fn requests_are_remembered_once(store: &dyn Store) {
    let request = RequestRecord {
        request_id: "req-1".into(),
        fingerprint: vec![1, 2, 3],
        response: vec![9, 9],
    };
    let write = |record: IncidentRecord| Write {
        region: "r".into(),
        request: Some(request.clone()),
        incident: Some(IncidentWrite {
            record,
            expected_version: 0,
        }),
        events: vec![event("i1")],
        ..Write::default()
    };
    store
        .write(write(incident("i1", "r", IncidentState::Routed)))
        .await
        .expect("first");
    assert!(matches!(
        store
            .write(write(incident("i2", "r", IncidentState::Routed)))
            .await,
        Err(StoreError::DuplicateRequest)
    ));
    assert!(
        store.incident("i2").await.expect("read").is_none(),
        "a refused write changes nothing"
    );
    assert_eq!(
        store.request("req-1").await.expect("read"),
        Some(request.clone())
    );
    assert_eq!(store.request("other").await.expect("read"), None);
}

async fn lookup_reads_request_incident_and_active_assignment(store: &dyn Store) {
    let empty = store.lookup("req-1", "i1").await.expect("lookup");
    assert_eq!(
        (empty.request, empty.incident, empty.assignment),
        (None, None, None)
    );
    let request = RequestRecord {
        request_id: "req-1".into(),
        fingerprint: vec![1, 2, 3],
        response: vec![9, 9],
    };
    let record = incident("i1", "r", IncidentState::Routed);
    store
        .write(Write {
            region: "r".into(),
            request: Some(request.clone()),
            incident: Some(IncidentWrite {
                record: record.clone(),
                expected_version: 0,
            }),
            ..Write::default()
        })
        .await
        .expect("write");
    let found = store.lookup("req-1", "i1").await.expect("lookup");
    assert_eq!(found.request, Some(request));
    assert_eq!(found.incident, store.incident("i1").await.expect("read"));
    assert!(found.incident.is_some() && found.assignment.is_none());
    assign(store, assignment("a1", "i1", "t1", 1))
        .await
        .expect("assign");
    let found = store.lookup("other", "i1").await.expect("lookup");
    assert_eq!(found.request, None);
    assert_eq!(found.assignment, Some(assignment("a1", "i1", "t1", 1)));
}

async fn lookup_assignment_reads_request_assignment_and_incident(store: &dyn Store) {
    let empty = store
        .lookup_assignment("req-1", "a1")
        .await
        .expect("lookup");
    assert_eq!(
        (empty.request, empty.incident, empty.assignment),
        (None, None, None)
    );
    create(store, incident("i1", "r", IncidentState::Assigned)).await;
    assign(store, assignment("a1", "i1", "t1", 1))
        .await
        .expect("assign");
    let found = store
        .lookup_assignment("req-1", "a1")
        .await
        .expect("lookup");
    assert_eq!(found.request, None);
    assert_eq!(found.assignment, Some(assignment("a1", "i1", "t1", 1)));
    assert_eq!(found.incident, store.incident("i1").await.expect("read"));
    let request = RequestRecord {
        request_id: "req-1".into(),
        fingerprint: vec![4],
        response: vec![5],
    };
    store
        .write(Write {
            region: "r".into(),
            request: Some(request.clone()),
            end_assignment: Some(EndAssignment {
                assignment_id: "a1".into(),
                state: AssignmentState::Released,
                end_time: t0(),
                end_reason: "done".into(),
                end_cause: AssignmentEndCause::Released,
            }),
            ..Write::default()
        })
        .await
        .expect("end");
    // An ended assignment is still found, in its state.
    let found = store
        .lookup_assignment("req-1", "a1")
        .await
        .expect("lookup");
    assert_eq!(found.request, Some(request));
    let ended = found.assignment.expect("found");
    assert_eq!(ended.state, i32::from(AssignmentState::Released));
    assert!(found.incident.is_some());
}

async fn a_refused_write_keeps_none_of_its_parts(store: &dyn Store) {
    create(store, incident("i1", "r", IncidentState::Routed)).await;
    let (_, last) = store.event_bounds("r").await.expect("bounds");
    // A stale incident version refuses the write: its request, events and assignment are
    // not kept, and the refusal named is the version, not a side effect.
    let refused = store
        .write(Write {
            region: "r".into(),
            request: Some(RequestRecord {
                request_id: "req-9".into(),
                fingerprint: vec![1],
                response: vec![2],
            }),
            incident: Some(IncidentWrite {
                record: incident("i1", "r", IncidentState::Assigned),
                expected_version: 7,
            }),
            new_assignment: Some(assignment("a9", "i1", "t9", 1)),
            events: vec![event("i1"), event("i1")],
            ..Write::default()
        })
        .await;
    assert!(
        matches!(refused, Err(StoreError::VersionConflict)),
        "{refused:?}"
    );
    assert_eq!(store.request("req-9").await.expect("read"), None);
    assert!(store.assignment("a9").await.expect("read").is_none());
    assert_eq!(store.event_bounds("r").await.expect("bounds").1, last);
    let kept = store.incident("i1").await.expect("read").expect("exists");
    assert_eq!((kept.version, kept.state), (1, IncidentState::Routed));
    // The token of the refused assignment was not kept either: token 1 is still accepted.
    assign(store, assignment("a9", "i1", "t9", 1))
        .await
        .expect("token 1 is still new");
}

async fn events_are_numbered_per_region_without_gaps(store: &dyn Store) {
    for (index, region) in ["a", "b", "a", "a", "b"].into_iter().enumerate() {
        store
            .write(Write {
                region: region.into(),
                events: vec![event(&format!("i{index}"))],
                ..Write::default()
            })
            .await
            .expect("append");
    }
    store
        .write(Write {
            region: "a".into(),
            events: vec![event("x1"), event("x2")],
            ..Write::default()
        })
        .await
        .expect("append two");
    let a = store.events("a", 0, 100).await.expect("read");
    let seqs: Vec<i64> = a.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    let ids: Vec<&str> = a.iter().map(|(_, e)| e.event_id.as_str()).collect();
    assert_eq!(ids, ["1", "2", "3", "4", "5"]);
    let incidents: Vec<&str> = a.iter().map(|(_, e)| e.incident_id.as_str()).collect();
    assert_eq!(incidents, ["i0", "i2", "i3", "x1", "x2"]);
    assert_eq!(store.events("a", 3, 1).await.expect("read").len(), 1);
    assert_eq!(store.events("a", 5, 10).await.expect("read").len(), 0);
    assert_eq!(store.event_bounds("a").await.expect("bounds"), (1, 5));
    assert_eq!(store.event_bounds("b").await.expect("bounds"), (1, 2));
    assert_eq!(store.event_bounds("c").await.expect("bounds"), (1, 0));
    let regions = store.regions().await.expect("regions");
    assert_eq!(regions, ["a", "b"]);
    // Pruning everything keeps the numbering: the next event is 6.
    store
        .prune(Utc::now() + Duration::hours(1))
        .await
        .expect("prune");
    assert_eq!(store.event_bounds("a").await.expect("bounds"), (6, 5));
    store
        .write(Write {
            region: "a".into(),
            events: vec![event("later")],
            ..Write::default()
        })
        .await
        .expect("append");
    let after = store.events("a", 5, 10).await.expect("read");
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].0, 6);
}

async fn concurrent_writers_get_gapless_ordered_numbers(store: &dyn Store) {
    // Four writers at once, each appending 25 pairs of events, while events are numbered;
    // the numbers that come out are
    // 1..=200 without a gap, each event once, and each pair in its written order.
    let writer = |w: usize| async move {
        for n in 0..25 {
            store
                .write(Write {
                    region: "r".into(),
                    events: vec![
                        event(&format!("w{w}-{n}-first")),
                        event(&format!("w{w}-{n}-second")),
                    ],
                    ..Write::default()
                })
                .await
                .expect("append");
        }
    };
    // Numbering runs while the writers write, so it meets rows of transactions that commit
    // after rows with higher ids.
    let sequencer = async {
        for _ in 0..40 {
            store.sequence_events().await.expect("sequence");
            tokio::task::yield_now().await;
        }
    };
    tokio::join!(writer(0), writer(1), writer(2), writer(3), sequencer);
    let events = store.events("r", 0, 1_000).await.expect("read");
    let seqs: Vec<i64> = events.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (1..=200).collect::<Vec<i64>>());
    let ids: Vec<&str> = events.iter().map(|(_, e)| e.incident_id.as_str()).collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 200);
    for w in 0..4 {
        for n in 0..25 {
            let at = |suffix: &str| {
                ids.iter()
                    .position(|id| *id == format!("w{w}-{n}-{suffix}"))
                    .expect("present")
            };
            assert!(at("first") < at("second"), "w{w}-{n} out of order");
            if n > 0 {
                let previous = ids
                    .iter()
                    .position(|id| *id == format!("w{w}-{}-second", n - 1))
                    .expect("present");
                assert!(previous < at("first"), "w{w}-{n} before its predecessor");
            }
        }
    }
}

async fn end(
    store: &dyn Store,
    assignment_id: &str,
    state: AssignmentState,
    cause: AssignmentEndCause,
    reason: &str,
) {
    store
        .write(Write {
            region: "r".into(),
            end_assignment: Some(EndAssignment {
                assignment_id: assignment_id.into(),
                state,
                end_time: t0(),
                end_reason: reason.into(),
                end_cause: cause,
            }),
            ..Write::default()
        })
        .await
        .expect("end");
}

async fn end_cause_of(store: &dyn Store, assignment_id: &str) -> AssignmentEndCause {
    let read = store.assignment(assignment_id).await.expect("read");
    read.expect("exists").end_cause()
}

async fn end_causes_and_cad_incident_ids_round_trip(store: &dyn Store) {
    let mut record = incident("i1", "r", IncidentState::Routed);
    record.cad_incident_id = "2026-000123".into();
    create(store, record).await;
    let read = store.incident("i1").await.expect("read").expect("exists");
    assert_eq!(read.cad_incident_id, "2026-000123");
    // An update writes it like any other field.
    let mut next = read.clone();
    next.cad_incident_id = "URN:EIDO:x".repeat(12);
    store
        .write(Write {
            region: "r".into(),
            incident: Some(IncidentWrite {
                record: next.clone(),
                expected_version: read.version,
            }),
            ..Write::default()
        })
        .await
        .expect("update");
    let found = store.lookup("none", "i1").await.expect("lookup");
    assert_eq!(
        found.incident.expect("exists").cad_incident_id,
        next.cad_incident_id
    );

    let mut a = assignment("a1", "i1", "t1", 1);
    a.cad_incident_id = "2026-000123".into();
    assign(store, a.clone()).await.expect("assign");
    let active = store.assignment("a1").await.expect("read").expect("exists");
    assert_eq!(active, a, "ACTIVE: cause UNSPECIFIED, the CAD number kept");
    assert_eq!(active.end_cause(), AssignmentEndCause::Unspecified);

    // The recorded cause wins over the reason text: a ReleaseTeam whose caller wrote
    // "team cleared" stays RELEASED.
    let released = AssignmentState::Released;
    end(
        store,
        "a1",
        released,
        AssignmentEndCause::Released,
        TEAM_CLEARED,
    )
    .await;
    let ended = store
        .lookup_assignment("none", "a1")
        .await
        .expect("lookup")
        .assignment
        .expect("exists");
    assert_eq!(ended.end_cause(), AssignmentEndCause::Released);
    assert_eq!(ended.end_reason, TEAM_CLEARED);
    assert_eq!(ended.cad_incident_id, "2026-000123");
    let cancelled = AssignmentState::Cancelled;
    let unspecified = AssignmentEndCause::Unspecified;
    for (n, state, cause, reason, want) in [
        (
            2,
            released,
            AssignmentEndCause::TeamCleared,
            "x",
            AssignmentEndCause::TeamCleared,
        ),
        (
            3,
            cancelled,
            AssignmentEndCause::Cancelled,
            "x",
            AssignmentEndCause::Cancelled,
        ),
        // Ended without a cause (a replica of the previous release): derived from the state
        // and the reason.
        (
            4,
            released,
            unspecified,
            TEAM_CLEARED,
            AssignmentEndCause::TeamCleared,
        ),
        (
            5,
            released,
            unspecified,
            "handed back",
            AssignmentEndCause::Released,
        ),
        (
            6,
            cancelled,
            unspecified,
            TEAM_CLEARED,
            AssignmentEndCause::Cancelled,
        ),
    ] {
        let id = format!("a{n}");
        assign(store, assignment(&id, "i1", "t1", n))
            .await
            .expect("assign");
        end(store, &id, state, cause, reason).await;
        assert_eq!(end_cause_of(store, &id).await, want, "{id}: {reason}");
    }
}

/// Rows as the release before the `end_cause` column wrote them (the same SQL on both
/// backends): three ended assignments, one ACTIVE.
pub(crate) const ROWS_BEFORE_END_CAUSE: &str = "
    INSERT INTO incidents (incident_id, region, cad_system, priority, latitude, longitude,
        required_capabilities, preferred_capabilities, expected_duration_seconds, state,
        queued_time, escalate_time, unserved_reason, version, update_time)
    VALUES ('old', 'r', 'cad', 3, 44.05, -123.09, '', '', NULL, 'ASSIGNED', NULL, NULL, 0, 4,
        '2026-11-27T12:00:00+00:00');
    INSERT INTO assignments (assignment_id, incident_id, team_id, region, distance_meters,
        eta_seconds, assigned_at, fencing_token, state, source, cad_system, end_time, end_reason)
    VALUES
        ('cleared', 'old', 't1', 'r', 1.0, 1, '2026-11-27T12:00:00+00:00', 1, 'RELEASED', 1,
            'cad', '2026-11-27T12:10:00+00:00', 'team cleared'),
        ('released', 'old', 't1', 'r', 1.0, 1, '2026-11-27T12:00:00+00:00', 2, 'RELEASED', 1,
            'cad', '2026-11-27T12:10:00+00:00', 'handed back to police'),
        ('cancelled', 'old', 't1', 'r', 1.0, 1, '2026-11-27T12:00:00+00:00', 3, 'CANCELLED', 1,
            'cad', '2026-11-27T12:10:00+00:00', 'caller cancelled'),
        ('active', 'old', 't1', 'r', 1.0, 1, '2026-11-27T12:00:00+00:00', 4, 'ACTIVE', 1,
            'cad', NULL, '');
";

/// The version of the migration that added `end_cause` and `cad_incident_id`.
const END_CAUSE_MIGRATION: i64 = 20_261_129_000_001;

/// The migrations before `version`: the record as an older release left it. (The fields
/// of `Migrator` are public but hidden from its documentation; sqlx has no partial run.)
fn migrations_before(migrator: &sqlx::migrate::Migrator, version: i64) -> sqlx::migrate::Migrator {
    sqlx::migrate::Migrator {
        migrations: migrator
            .migrations
            .iter()
            .filter(|m| m.version < version)
            .cloned()
            .collect::<Vec<_>>()
            .into(),
        ..sqlx::migrate::Migrator::DEFAULT
    }
}

/// After [`ROWS_BEFORE_END_CAUSE`] and every migration: each ended row has a sensible cause.
async fn rows_from_before_the_end_cause_read_with_a_cause(store: &dyn Store) {
    for (id, want) in [
        ("cleared", AssignmentEndCause::TeamCleared),
        ("released", AssignmentEndCause::Released),
        ("cancelled", AssignmentEndCause::Cancelled),
        ("active", AssignmentEndCause::Unspecified),
    ] {
        assert_eq!(end_cause_of(store, id).await, want, "{id}");
    }
    let active = store
        .assignment("active")
        .await
        .expect("read")
        .expect("row");
    assert_eq!(active.cad_incident_id, "");
    let old = store.incident("old").await.expect("read").expect("row");
    assert_eq!((old.cad_incident_id.as_str(), old.version), ("", 4));
}

async fn the_queue_is_served_by_priority_then_age(store: &dyn Store) {
    let base = t0();
    let entries = [
        ("late-p1", 1, 30),
        ("early-p2", 2, 0),
        ("early-p1", 1, 10),
        ("tie-b", 3, 5),
        ("tie-a", 3, 5),
    ];
    for (id, priority, offset) in entries {
        create(
            store,
            queued(id, "q", priority, base + Duration::seconds(offset)),
        )
        .await;
    }
    create(store, queued("elsewhere", "other", 1, base)).await;
    create(store, incident("not-queued", "q", IncidentState::Routed)).await;
    let all: Vec<String> = store
        .queue("q", None, 100)
        .await
        .expect("queue")
        .into_iter()
        .map(|i| i.incident_id)
        .collect();
    assert_eq!(all, ["early-p1", "late-p1", "early-p2", "tie-a", "tie-b"]);
    let first = store.queue("q", None, 2).await.expect("page");
    let last = &first[1];
    let cursor = QueueCursor {
        priority: last.priority,
        queued_time: last.queued_time.expect("queued"),
        incident_id: last.incident_id.clone(),
    };
    let rest: Vec<String> = store
        .queue("q", Some(&cursor), 100)
        .await
        .expect("page")
        .into_iter()
        .map(|i| i.incident_id)
        .collect();
    assert_eq!(rest, ["early-p2", "tie-a", "tie-b"]);
    let due: Vec<String> = store
        .due_escalations(base + Duration::minutes(10) + Duration::seconds(5), 100)
        .await
        .expect("due")
        .into_iter()
        .map(|i| i.incident_id)
        .collect();
    assert_eq!(due, ["early-p2", "elsewhere", "tie-a", "tie-b"]);
}

/// Generates one test per check for a backend.
macro_rules! conformance_tests {
    ($open:path; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                let (store, _guard) = $open().await;
                super::$check(&store).await;
            }
        )*
    };
}

macro_rules! all_conformance_tests {
    ($open:path) => {
        conformance_tests!($open;
            incidents_round_trip_and_refuse_stale_versions,
            one_active_assignment_per_team_and_per_incident,
            stale_fencing_tokens_are_refused,
            requests_are_remembered_once,
            lookup_reads_request_incident_and_active_assignment,
            lookup_assignment_reads_request_assignment_and_incident,
            a_refused_write_keeps_none_of_its_parts,
            events_are_numbered_per_region_without_gaps,
            concurrent_writers_get_gapless_ordered_numbers,
            the_queue_is_served_by_priority_then_age,
            end_causes_and_cad_incident_ids_round_trip,
        );
    };
}

/// A migrated PostgreSQL store in its own database.
async fn postgres() -> (PostgresStore, relay_tests::TestDatabase) {
    postgres_with_rows_before(None).await
}

/// A PostgreSQL store migrated to before `rows`' migration, given `rows` (SQL), then
/// migrated to the end.
async fn postgres_with_rows_before(
    rows: Option<(i64, &str)>,
) -> (PostgresStore, relay_tests::TestDatabase) {
    use relay_runtime::storage::migrate_postgres;
    let database = relay_tests::TestDatabase::new().await;
    let url = secrecy::SecretString::from(database.url().to_owned());
    let pool = relay_runtime::storage::postgres_pool(&url, relay_routing::SCHEMA, 4).expect("pool");
    if let Some((version, rows)) = rows {
        let older = migrations_before(&relay_routing::MIGRATOR, version);
        migrate_postgres(&pool, relay_routing::SCHEMA, &older)
            .await
            .expect("migrate");
        sqlx::raw_sql(rows).execute(&pool).await.expect("old rows");
    }
    migrate_postgres(&pool, relay_routing::SCHEMA, &relay_routing::MIGRATOR)
        .await
        .expect("migrate");
    (PostgresStore::new(pool), database)
}

/// A migrated SQLite store in its own temporary file.
async fn sqlite() -> (SqliteStore, tempfile::TempDir) {
    sqlite_with_rows_before(None).await
}

/// As [`postgres_with_rows_before`], on SQLite.
async fn sqlite_with_rows_before(rows: Option<(i64, &str)>) -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = secrecy::SecretString::from(format!(
        "sqlite://{}",
        dir.path().join("routing.db").display()
    ));
    let pool = relay_runtime::storage::sqlite_pool(&url, 4).expect("pool");
    if let Some((version, rows)) = rows {
        let older = migrations_before(&relay_routing::SQLITE_MIGRATOR, version);
        older.run(&pool).await.expect("migrate");
        sqlx::raw_sql(rows).execute(&pool).await.expect("old rows");
    }
    relay_routing::SQLITE_MIGRATOR
        .run(&pool)
        .await
        .expect("migrate");
    (SqliteStore::new(pool), dir)
}

#[tokio::test]
async fn rows_from_before_the_end_cause_read_with_a_cause_on_postgres() {
    let (store, _database) =
        postgres_with_rows_before(Some((END_CAUSE_MIGRATION, ROWS_BEFORE_END_CAUSE))).await;
    rows_from_before_the_end_cause_read_with_a_cause(&store).await;
}

#[tokio::test]
async fn rows_from_before_the_end_cause_read_with_a_cause_on_sqlite() {
    let (store, _dir) =
        sqlite_with_rows_before(Some((END_CAUSE_MIGRATION, ROWS_BEFORE_END_CAUSE))).await;
    rows_from_before_the_end_cause_read_with_a_cause(&store).await;
}

mod on_postgres {
    all_conformance_tests!(super::postgres);
}

mod on_sqlite {
    all_conformance_tests!(super::sqlite);
}
