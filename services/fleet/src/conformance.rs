//! The conformance suite of the team stores: every scenario is a public function over
//! `&dyn FleetStore` (both traits), which the crate's `tests/conformance.rs` runs unchanged on
//! the Redis backend (the machine's real server, and a Redis Cluster) and on the in-process
//! backend. Another store implementation runs the same functions. Times are fixed (`t0()`), so
//! every scenario passes whatever the clock says.
#![allow(clippy::missing_panics_doc, clippy::unwrap_used)]

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use crate::{
    ChangeError, ClaimError, FleetStore, LocationOutcome, LocationReport, Recorded, ReleaseError,
    ReleaseOutcome, RequestRecord,
    model::{EventId, EventKind, Position, TeamDefinition, TeamStatus},
};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5)
        .single()
        .expect("valid time")
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

fn def(id: &str, region: &str) -> TeamDefinition {
    TeamDefinition {
        team_id: id.into(),
        display_name: format!("Team {id}"),
        region: region.into(),
        capabilities: vec!["clinician".into(), "emt".into()],
        shift_ends_at: None,
    }
}

fn at(latitude: f64, longitude: f64) -> Position {
    Position {
        latitude,
        longitude,
    }
}

fn report(id: &str, position: Position, recorded_at: DateTime<Utc>) -> LocationReport {
    LocationReport {
        team_id: id.into(),
        position,
        recorded_at,
        heading_degrees: Some(90.0),
        speed_meters_per_second: None,
        accuracy_meters: Some(5.0),
    }
}

/// Creates an AVAILABLE team with a position reported at `t0()`.
async fn available_team(store: &dyn FleetStore, id: &str, region: &str, position: Position) {
    store
        .upsert_team(&def(id, region), None, t0())
        .await
        .expect("upsert");
    store
        .set_status(id, TeamStatus::Available, "", None, t0())
        .await
        .expect("available");
    let outcome = store
        .report_locations(&[report(id, position, t0())], t0())
        .await
        .expect("report");
    assert!(matches!(outcome[0], LocationOutcome::Accepted { .. }));
}

fn ids(found: &[(crate::model::Team, f64)]) -> Vec<String> {
    found.iter().map(|(t, _)| t.team_id.clone()).collect()
}

/// Conformance scenario (see the module documentation).
pub async fn upsert_creates_updates_and_checks_revisions(store: &dyn FleetStore) {
    let d = def("t1", "north");
    let created = store.upsert_team(&d, None, t0()).await.expect("create");
    assert!(created.created && created.changed);
    assert_eq!(created.team.status, TeamStatus::OffDuty);
    assert_eq!(created.team.revision, 1);
    assert_eq!(created.team.create_time, t0());
    assert_eq!(created.team.location, None);
    assert_eq!(
        store.get_team("t1").await.expect("get"),
        Some(created.team.clone())
    );

    let same = store
        .upsert_team(&d, None, t0() + secs(1))
        .await
        .expect("same");
    assert!(!same.created && !same.changed);
    assert_eq!(same.team.revision, 1);

    let mut renamed = d.clone();
    renamed.display_name = "CAHOOTS 3".into();
    renamed.shift_ends_at = Some(t0() + secs(3600));
    let updated = store
        .upsert_team(&renamed, Some(1), t0() + secs(2))
        .await
        .expect("update");
    assert!(updated.changed && !updated.created);
    assert_eq!(updated.team.revision, 2);
    assert_eq!(updated.team.display_name, "CAHOOTS 3");
    assert_eq!(updated.team.shift_ends_at, Some(t0() + secs(3600)));
    assert_eq!(updated.team.update_time, t0() + secs(2));

    let stale = store.upsert_team(&d, Some(1), t0()).await;
    assert!(matches!(
        stale,
        Err(ChangeError::RevisionMismatch { current: 2 })
    ));
    let missing = store.upsert_team(&def("t9", "north"), Some(3), t0()).await;
    assert!(matches!(
        missing,
        Err(ChangeError::RevisionMismatch { current: 0 })
    ));
    assert_eq!(store.get_team("t9").await.expect("get"), None);
}

/// Conformance scenario (see the module documentation).
pub async fn status_changes_follow_the_state_machine(store: &dyn FleetStore) {
    store
        .upsert_team(&def("t1", "north"), None, t0())
        .await
        .expect("create");
    let on_scene = store
        .set_status("t1", TeamStatus::OnScene, "inc-1", None, t0())
        .await;
    assert!(matches!(
        on_scene,
        Err(ChangeError::InvalidTransition {
            from: TeamStatus::OffDuty,
            to: TeamStatus::OnScene
        })
    ));
    let (team, changed) = store
        .set_status("t1", TeamStatus::Available, "", Some(1), t0() + secs(1))
        .await
        .expect("available");
    assert!(changed);
    assert_eq!((team.status, team.revision), (TeamStatus::Available, 2));

    let (team, changed) = store
        .set_status("t1", TeamStatus::Available, "", None, t0() + secs(2))
        .await
        .expect("no-op");
    assert!(!changed);
    assert_eq!(team.revision, 2);

    let dispatch = store
        .set_status("t1", TeamStatus::Dispatched, "inc-1", None, t0())
        .await;
    assert!(matches!(
        dispatch,
        Err(ChangeError::DispatchRequiresRouting)
    ));
    let en_route = store
        .set_status("t1", TeamStatus::EnRoute, "inc-1", None, t0())
        .await;
    assert!(matches!(
        en_route,
        Err(ChangeError::InvalidTransition { .. })
    ));
    let stale = store
        .set_status("t1", TeamStatus::OffDuty, "", Some(1), t0())
        .await;
    assert!(matches!(
        stale,
        Err(ChangeError::RevisionMismatch { current: 2 })
    ));
    let missing = store
        .set_status("nobody", TeamStatus::OffDuty, "", None, t0())
        .await;
    assert!(matches!(missing, Err(ChangeError::NotFound)));
    let (team, _) = store
        .set_status("t1", TeamStatus::OutOfService, "", None, t0())
        .await
        .expect("out of service");
    assert_eq!(team.status, TeamStatus::OutOfService);
    assert_eq!(team.revision, 3);
}

/// Conformance scenario (see the module documentation).
pub async fn claim_release_and_incident_rules(store: &dyn FleetStore) {
    let here = at(44.05, -123.09);
    available_team(store, "t1", "north", here).await;
    let max_age = Duration::from_secs(300);

    // Too old a position at this `now`.
    let stale = store
        .claim(
            "north",
            "t1",
            "inc-1",
            None,
            t0() + secs(301),
            Some(max_age),
        )
        .await;
    assert!(matches!(stale, Err(ClaimError::StalePosition)));
    // A dispatcher's explicit choice (no age limit) does not check the position.
    available_team(store, "t2", "north", here).await;
    let chosen = store
        .claim("north", "t2", "inc-9", None, t0() + secs(100_000), None)
        .await
        .expect("a claim without an age limit ignores the position's age");
    assert_eq!(chosen.team.status, TeamStatus::Dispatched);
    let wrong_revision = store
        .claim(
            "north",
            "t1",
            "inc-1",
            Some(1),
            t0() + secs(10),
            Some(max_age),
        )
        .await;
    assert!(matches!(
        wrong_revision,
        Err(ClaimError::RevisionMismatch { current: 3 })
    ));
    let missing = store
        .claim("north", "nobody", "inc-1", None, t0(), Some(max_age))
        .await;
    assert!(matches!(missing, Err(ClaimError::NotFound)));
    let other_region = store
        .claim("south", "t1", "inc-1", None, t0(), Some(max_age))
        .await;
    assert!(matches!(other_region, Err(ClaimError::NotFound)));

    let claim = store
        .claim(
            "north",
            "t1",
            "inc-1",
            Some(3),
            t0() + secs(300),
            Some(max_age),
        )
        .await
        .expect("claim");
    assert_eq!(claim.fencing_token, 1);
    assert_eq!(claim.revision, 4);
    assert_eq!(claim.team.status, TeamStatus::Dispatched);
    assert_eq!(claim.team.incident_id, "inc-1");
    let near = store
        .available_near("north", here, 1000.0, 10)
        .await
        .expect("near");
    assert!(near.is_empty(), "a claimed team left the GEO set");

    let again = store
        .claim("north", "t1", "inc-2", None, t0(), Some(max_age))
        .await;
    assert!(matches!(
        again,
        Err(ClaimError::NotAvailable {
            status: TeamStatus::Dispatched
        })
    ));

    // Status changes must name the team's incident.
    let other = store
        .set_status("t1", TeamStatus::EnRoute, "inc-2", None, t0())
        .await;
    assert!(
        matches!(other, Err(ChangeError::IncidentMismatch { current_incident }) if current_incident == "inc-1")
    );
    let clear_other = store
        .set_status("t1", TeamStatus::Available, "inc-2", None, t0())
        .await;
    assert!(matches!(
        clear_other,
        Err(ChangeError::IncidentMismatch { .. })
    ));
    let off = store
        .set_status("t1", TeamStatus::OffDuty, "", None, t0())
        .await;
    assert!(matches!(off, Err(ChangeError::InvalidTransition { .. })));
    let (team, _) = store
        .set_status("t1", TeamStatus::EnRoute, "inc-1", None, t0())
        .await
        .expect("en route");
    assert_eq!(
        (team.status, team.incident_id.as_str()),
        (TeamStatus::EnRoute, "inc-1")
    );

    let wrong = store.release("north", "t1", "inc-2", t0()).await;
    assert!(
        matches!(wrong, Err(ReleaseError::NotOnIncident { status: TeamStatus::EnRoute, current_incident }) if current_incident == "inc-1")
    );
    let released = store
        .release("north", "t1", "inc-1", t0() + secs(400))
        .await
        .expect("release");
    let ReleaseOutcome::Released(team) = released else {
        panic!("expected Released, got {released:?}")
    };
    assert_eq!(team.status, TeamStatus::Available);
    assert_eq!(team.incident_id, "");
    assert_eq!(
        ids(&store
            .available_near("north", here, 1000.0, 10)
            .await
            .expect("near")),
        ["t1"]
    );
    let twice = store
        .release("north", "t1", "inc-1", t0())
        .await
        .expect("already");
    assert!(matches!(twice, ReleaseOutcome::AlreadyReleased(_)));

    // The fencing counter only grows, also across roster upserts.
    let mut renamed = def("t1", "north");
    renamed.display_name = "renamed".into();
    store
        .upsert_team(&renamed, None, t0())
        .await
        .expect("rename");
    let second = store
        .claim("north", "t1", "inc-3", None, t0() + secs(10), Some(max_age))
        .await
        .expect("second claim");
    assert_eq!(second.fencing_token, 2);
    // A busy team clears with an empty incident too.
    let (team, _) = store
        .set_status("t1", TeamStatus::Available, "", None, t0())
        .await
        .expect("clear");
    assert_eq!(team.incident_id, "");
    let released = store.release("north", "t1", "inc-3", t0()).await;
    assert!(matches!(released, Ok(ReleaseOutcome::AlreadyReleased(_))));
}

/// Conformance scenario (see the module documentation).
pub async fn older_positions_never_win(store: &dyn FleetStore) {
    store
        .upsert_team(&def("t1", "north"), None, t0())
        .await
        .expect("create");
    let reports = [
        report("t1", at(44.0, -123.0), t0() + secs(20)),
        report("t1", at(45.0, -123.0), t0() + secs(10)),
        report("t1", at(46.0, -123.0), t0() + secs(20)),
        report("nobody", at(46.0, -123.0), t0()),
        report("t1", at(47.0, -123.0), t0() + secs(30)),
        report("t1", at(48.0, -123.0), t0() + secs(5)),
    ];
    let outcomes = store
        .report_locations(&reports, t0())
        .await
        .expect("report");
    assert_eq!(
        outcomes,
        [
            LocationOutcome::Accepted { revision: 2 },
            LocationOutcome::Stale { revision: 2 },
            LocationOutcome::Stale { revision: 2 },
            LocationOutcome::NotFound,
            LocationOutcome::Accepted { revision: 3 },
            LocationOutcome::Stale { revision: 3 },
        ]
    );
    let team = store.get_team("t1").await.expect("get").expect("exists");
    assert_eq!(team.location, Some(at(47.0, -123.0)));
    assert_eq!(team.location_updated_at, Some(t0() + secs(30)));
    assert_eq!(team.heading_degrees, Some(90.0));
    assert_eq!(team.accuracy_meters, Some(5.0));
}

/// Conformance scenario (see the module documentation).
pub async fn the_geo_index_follows_status_and_position(store: &dyn FleetStore) {
    let center = at(44.05, -123.09);
    store
        .upsert_team(&def("t1", "north"), None, t0())
        .await
        .expect("create");
    store
        .set_status("t1", TeamStatus::Available, "", None, t0())
        .await
        .expect("available");
    // Available without a position: not found.
    assert!(
        store
            .available_near("north", center, 5000.0, 10)
            .await
            .expect("near")
            .is_empty()
    );
    store
        .report_locations(&[report("t1", at(44.051, -123.09), t0())], t0())
        .await
        .expect("report");
    let found = store
        .available_near("north", center, 5000.0, 10)
        .await
        .expect("near");
    assert_eq!(ids(&found), ["t1"]);
    assert!((found[0].1 - 111.2).abs() < 1.0, "{}", found[0].1);
    // Outside the radius, or in another region: not found.
    assert!(
        store
            .available_near("north", center, 100.0, 10)
            .await
            .expect("near")
            .is_empty()
    );
    assert!(
        store
            .available_near("south", center, 5000.0, 10)
            .await
            .expect("near")
            .is_empty()
    );
    store
        .set_status("t1", TeamStatus::OutOfService, "", None, t0())
        .await
        .expect("oos");
    assert!(
        store
            .available_near("north", center, 5000.0, 10)
            .await
            .expect("near")
            .is_empty()
    );
    // A position accepted while not available does not index the team...
    store
        .report_locations(&[report("t1", at(44.0505, -123.09), t0() + secs(1))], t0())
        .await
        .expect("report");
    assert!(
        store
            .available_near("north", center, 5000.0, 10)
            .await
            .expect("near")
            .is_empty()
    );
    // ...until it becomes available, at its latest position.
    store
        .set_status("t1", TeamStatus::Available, "", None, t0())
        .await
        .expect("available");
    let found = store
        .available_near("north", center, 5000.0, 10)
        .await
        .expect("near");
    assert!((found[0].1 - 55.6).abs() < 1.0, "{}", found[0].1);
}

/// Conformance scenario (see the module documentation).
pub async fn find_filters_capabilities_orders_and_limits(store: &dyn FleetStore) {
    let center = at(44.05, -123.09);
    available_team(store, "b", "north", at(44.06, -123.09)).await;
    available_team(store, "a", "north", at(44.06, -123.09)).await;
    available_team(store, "c", "north", at(44.07, -123.09)).await;
    let mut peer = def("d", "north");
    peer.capabilities = vec!["lang:es".into(), "peer".into()];
    store.upsert_team(&peer, None, t0()).await.expect("peer");
    store
        .set_status("d", TeamStatus::Available, "", None, t0())
        .await
        .expect("available");
    store
        .report_locations(&[report("d", at(44.051, -123.09), t0())], t0())
        .await
        .expect("report");

    let all = store
        .available_near("north", center, 10_000.0, 10)
        .await
        .expect("near");
    assert_eq!(
        ids(&all),
        ["d", "a", "b", "c"],
        "nearest first, ties by team_id"
    );
    assert_eq!(all[1].1, all[2].1);
    let two = store
        .available_near("north", center, 10_000.0, 2)
        .await
        .expect("near");
    assert_eq!(ids(&two), ["d", "a"]);
    let emt = store
        .find_available("north", center, 10_000.0, &["emt".into()], 10)
        .await
        .expect("find");
    assert_eq!(ids(&emt), ["a", "b", "c"]);
    let spanish = store
        .find_available(
            "north",
            center,
            10_000.0,
            &["lang:es".into(), "peer".into()],
            10,
        )
        .await
        .expect("find");
    assert_eq!(ids(&spanish), ["d"]);
    let nobody = store
        .find_available("north", center, 10_000.0, &["paramedic".into()], 10)
        .await
        .expect("find");
    assert!(nobody.is_empty());
}

/// Conformance scenario (see the module documentation).
pub async fn events_record_every_change_in_order(store: &dyn FleetStore) {
    let start = store.last_event_id("north").await.expect("last id");
    assert_eq!(start, EventId::ZERO);
    available_team(store, "t1", "north", at(44.0, -123.0)).await;
    store
        .report_locations(&[report("t1", at(44.0, -123.0), t0())], t0())
        .await
        .expect("stale report");
    let events = store
        .read_events("north", start, 100, Duration::ZERO)
        .await
        .expect("events");
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::Upserted,
            EventKind::StatusChanged,
            EventKind::LocationChanged
        ],
        "a stale report emits nothing"
    );
    let revisions: Vec<i64> = events.iter().map(|e| e.team.revision).collect();
    assert_eq!(revisions, [1, 2, 3]);
    assert!(events.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(events[2].team.location, Some(at(44.0, -123.0)));
    assert_eq!(
        store.last_event_id("north").await.expect("last"),
        events[2].id
    );

    // Reading after the last event waits, then answers empty.
    let nothing = store
        .read_events("north", events[2].id, 100, Duration::from_millis(50))
        .await
        .expect("events");
    assert!(nothing.is_empty());
    // Paging by `max`.
    let first = store
        .read_events("north", start, 1, Duration::ZERO)
        .await
        .expect("one");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].id, events[0].id);
    // A blocked reader wakes up on a change.
    let last = events[2].id;
    let (woken, ()) = tokio::join!(
        store.read_events("north", last, 10, Duration::from_secs(10)),
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            store
                .set_status("t1", TeamStatus::OffDuty, "", None, t0())
                .await
                .expect("off duty");
        }
    );
    let woken = woken.expect("events");
    assert_eq!(woken.len(), 1);
    assert_eq!(woken[0].kind, EventKind::StatusChanged);
    assert_eq!(woken[0].team.status, TeamStatus::OffDuty);
    // Other regions are separate streams.
    assert!(
        store
            .read_events("south", EventId::ZERO, 10, Duration::ZERO)
            .await
            .expect("none")
            .is_empty()
    );
}

/// Conformance scenario (see the module documentation).
pub async fn region_moves_only_off_duty(store: &dyn FleetStore) {
    available_team(store, "t1", "north", at(44.0, -123.0)).await;
    let north_start = store.last_event_id("north").await.expect("id");
    let moved = store.upsert_team(&def("t1", "south"), None, t0()).await;
    assert!(matches!(
        moved,
        Err(ChangeError::RegionChangeNotAllowed {
            status: TeamStatus::Available
        })
    ));
    store
        .set_status("t1", TeamStatus::OffDuty, "", None, t0())
        .await
        .expect("off duty");
    let before = store.get_team("t1").await.expect("get").expect("exists");
    let moved = store
        .upsert_team(&def("t1", "south"), Some(before.revision), t0() + secs(5))
        .await
        .expect("move");
    assert!(moved.changed && !moved.created);
    assert_eq!(moved.team.region, "south");
    assert_eq!(moved.team.revision, before.revision + 1);
    assert_eq!(
        moved.team.location, before.location,
        "live state moves along"
    );
    let team = store.get_team("t1").await.expect("get").expect("exists");
    assert_eq!(team, moved.team);

    let north = store
        .read_events("north", north_start, 10, Duration::ZERO)
        .await
        .expect("north");
    assert_eq!(north.last().map(|e| e.kind), Some(EventKind::Removed));
    let south = store
        .read_events("south", EventId::ZERO, 10, Duration::ZERO)
        .await
        .expect("south");
    assert_eq!(south.len(), 1);
    assert_eq!(south[0].kind, EventKind::Upserted);
    assert_eq!(south[0].team.region, "south");

    let in_north = store
        .list_teams(Some("north"), None, None, 10)
        .await
        .expect("list");
    assert!(in_north.teams.is_empty());
    let in_south = store
        .list_teams(Some("south"), None, None, 10)
        .await
        .expect("list");
    assert_eq!(in_south.teams.len(), 1);
    // Status changes and positions work in the new region.
    store
        .set_status("t1", TeamStatus::Available, "", None, t0())
        .await
        .expect("available");
    let found = store
        .available_near("south", at(44.0, -123.0), 100.0, 10)
        .await
        .expect("near");
    assert_eq!(ids(&found), ["t1"]);
}

/// Conformance scenario (see the module documentation).
pub async fn lists_page_and_filter(store: &dyn FleetStore) {
    for id in ["e", "a", "d", "c", "b"] {
        store
            .upsert_team(&def(id, "north"), None, t0())
            .await
            .expect("create");
    }
    store
        .upsert_team(&def("f", "south"), None, t0())
        .await
        .expect("create");
    store
        .set_status("b", TeamStatus::Available, "", None, t0())
        .await
        .expect("available");
    store
        .set_status("d", TeamStatus::Available, "", None, t0())
        .await
        .expect("available");

    let page = store.list_teams(None, None, None, 4).await.expect("list");
    let page_ids: Vec<&str> = page.teams.iter().map(|t| t.team_id.as_str()).collect();
    assert_eq!(page_ids, ["a", "b", "c", "d"]);
    assert!(page.more);
    let rest = store
        .list_teams(None, None, Some("d"), 4)
        .await
        .expect("list");
    let rest_ids: Vec<&str> = rest.teams.iter().map(|t| t.team_id.as_str()).collect();
    assert_eq!(rest_ids, ["e", "f"]);
    assert!(!rest.more);
    let north_available = store
        .list_teams(Some("north"), Some(TeamStatus::Available), None, 1)
        .await
        .expect("list");
    assert_eq!(north_available.teams[0].team_id, "b");
    assert!(north_available.more);
    let next = store
        .list_teams(Some("north"), Some(TeamStatus::Available), Some("b"), 1)
        .await
        .expect("list");
    assert_eq!(next.teams[0].team_id, "d");
    assert!(!next.more);
}

/// Conformance scenario (see the module documentation).
pub async fn seeding_recreates_missing_teams_above_a_floor(store: &dyn FleetStore) {
    // A realistic floor: wall time in microseconds, as `Availability::rebuild` passes.
    let floor = 1_764_000_000_000_000;
    assert!(
        store
            .seed_team(&def("t1", "north"), floor, t0())
            .await
            .expect("seed")
    );
    let team = store.get_team("t1").await.expect("get").expect("exists");
    assert_eq!(team.status, TeamStatus::OffDuty);
    assert!(team.revision >= floor);
    assert!(team.fencing_token >= floor);
    assert!(
        !store
            .seed_team(&def("t1", "north"), floor + 5, t0())
            .await
            .expect("seed")
    );
    assert_eq!(
        store
            .get_team("t1")
            .await
            .expect("get")
            .expect("exists")
            .revision,
        team.revision
    );
    store
        .set_status("t1", TeamStatus::Available, "", None, t0())
        .await
        .expect("available");
    let outcome = store
        .report_locations(&[report("t1", at(44.0, -123.0), t0())], t0())
        .await
        .expect("report");
    assert_eq!(
        outcome,
        [LocationOutcome::Accepted {
            revision: team.revision + 2
        }]
    );
    let claim = store
        .claim(
            "north",
            "t1",
            "inc",
            None,
            t0(),
            Some(Duration::from_secs(60)),
        )
        .await
        .expect("claim");
    assert!(claim.fencing_token > floor);
}

/// A change under a request id writes its record in the same step: a retry replays the team
/// as it was right after the change (whatever changed since), another request under the same
/// id changes nothing, records are kept per RPC, and a refused change records nothing.
pub async fn idempotency_records_expire_and_are_kept_per_rpc(store: &dyn FleetStore) {
    let request = |rpc: &'static str, fingerprint: &'static str| RequestRecord {
        rpc,
        request_id: "r1",
        fingerprint,
        ttl: Duration::from_secs(60),
    };
    let d = def("t1", "north");
    let created = store
        .upsert_team_once(&d, None, t0(), &request("upsert_team", "a"))
        .await
        .expect("create");
    let Recorded::Applied(created) = created else {
        panic!("first run: {created:?}")
    };
    assert!(created.created && created.changed);
    store
        .set_status("t1", TeamStatus::Available, "", None, t0() + secs(1))
        .await
        .expect("available");
    let again = store
        .upsert_team_once(&d, None, t0() + secs(2), &request("upsert_team", "a"))
        .await
        .expect("retry");
    assert_eq!(again, Recorded::Replayed(created.clone()));
    let mut other = d.clone();
    other.display_name = String::from("Another");
    let reused = store
        .upsert_team_once(&other, None, t0(), &request("upsert_team", "b"))
        .await
        .expect("reused");
    assert_eq!(reused, Recorded::Reused);
    let team = store.get_team("t1").await.expect("get").expect("team");
    assert_eq!((team.revision, team.display_name.as_str()), (2, "Team t1"));

    // The same id for another RPC is another request.
    let status = store
        .set_status_once(
            "t1",
            TeamStatus::OutOfService,
            "",
            None,
            t0() + secs(3),
            &request("set_team_status", "a"),
        )
        .await
        .expect("status");
    let Recorded::Applied((out_of_service, true)) = status else {
        panic!("status: {status:?}")
    };
    assert_eq!(out_of_service.status, TeamStatus::OutOfService);
    store
        .set_status("t1", TeamStatus::Available, "", None, t0() + secs(4))
        .await
        .expect("available again");
    let replayed = store
        .set_status_once(
            "t1",
            TeamStatus::OutOfService,
            "",
            None,
            t0() + secs(5),
            &request("set_team_status", "a"),
        )
        .await
        .expect("replay");
    assert_eq!(replayed, Recorded::Replayed((out_of_service, true)));
    assert_eq!(
        store
            .get_team("t1")
            .await
            .expect("get")
            .expect("team")
            .status,
        TeamStatus::Available,
        "a replay changes nothing"
    );

    // A refused change records nothing: the request can be sent again once it can apply.
    let refused = store
        .set_status_once(
            "t1",
            TeamStatus::OnScene,
            "inc-1",
            None,
            t0() + secs(6),
            &RequestRecord {
                request_id: "r2",
                ..request("set_team_status", "c")
            },
        )
        .await;
    assert!(
        matches!(refused, Err(ChangeError::InvalidTransition { .. })),
        "{refused:?}"
    );
    let later = store
        .set_status_once(
            "t1",
            TeamStatus::OffDuty,
            "",
            None,
            t0() + secs(7),
            &RequestRecord {
                request_id: "r2",
                ..request("set_team_status", "d")
            },
        )
        .await
        .expect("a new request under the refused one's id");
    assert!(matches!(later, Recorded::Applied((_, true))), "{later:?}");
    store.ping().await.expect("ping");
}

/// Retries of one request racing each other (a client that timed out and resent): exactly one
/// applies, and every other one replays it, even when the request names the revision it
/// expects (which the applied one moved on). Were the record written after the change rather
/// with it, a retry could pass the record check before the record existed and fail with
/// REVISION_MISMATCH, or apply a second time.
pub async fn racing_retries_of_one_request_apply_once(store: &dyn FleetStore) {
    store
        .upsert_team(&def("t1", "north"), None, t0())
        .await
        .expect("create");
    let request = RequestRecord {
        rpc: "set_team_status",
        request_id: "r1",
        fingerprint: "f",
        ttl: Duration::from_secs(60),
    };
    let retries = (0..8).map(|n| {
        store.set_status_once(
            "t1",
            TeamStatus::Available,
            "",
            Some(1),
            t0() + secs(n),
            &request,
        )
    });
    let outcomes = futures_join_all(retries).await;
    let mut applied = 0;
    for outcome in outcomes {
        match outcome.expect("every retry succeeds") {
            Recorded::Applied((team, true)) => {
                applied += 1;
                assert_eq!(team.revision, 2);
            }
            Recorded::Replayed((team, true)) => assert_eq!(team.revision, 2),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(applied, 1);
    let team = store.get_team("t1").await.expect("get").expect("team");
    assert_eq!((team.status, team.revision), (TeamStatus::Available, 2));
}

/// Polls every future to completion concurrently (a small `join_all`, to keep this crate's
/// dependencies as they are).
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut pending: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (future, slot) in pending.iter_mut().zip(done.iter_mut()) {
            if slot.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(output) => *slot = Some(output),
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    done.into_iter().flatten().collect()
}

/// Conformance scenario (see the module documentation).
pub async fn history_expiry_is_reported(store: &dyn FleetStore) {
    // Nothing was ever trimmed: reading from the start is fine.
    let events = store
        .read_events("north", EventId::ZERO, 10, Duration::ZERO)
        .await
        .expect("read");
    assert!(events.is_empty());
    // An id from the future is accepted too (nothing after it yet).
    let later = EventId {
        ms: u64::MAX / 4,
        seq: 0,
    };
    let none = store.read_events("north", later, 10, Duration::ZERO).await;
    assert!(matches!(none, Ok(ref v) if v.is_empty()), "{none:?}");
}

/// Conformance scenario (see the module documentation).
pub async fn the_live_epoch_is_written_once_and_agreed_on(store: &dyn FleetStore) {
    assert_eq!(store.live_epoch().await.expect("read"), None);
    assert_eq!(store.adopt_live_epoch("e1").await.expect("adopt"), "e1");
    // A second replica adopts the epoch the first one wrote.
    assert_eq!(store.adopt_live_epoch("e2").await.expect("adopt"), "e1");
    assert_eq!(
        store.live_epoch().await.expect("read").as_deref(),
        Some("e1")
    );
}

/// Conformance scenario (see the module documentation): a creation whose roster commit
/// failed is undone with its record, so the retry creates the team again; a team another
/// change already moved on is left for the retry to converge.
pub async fn a_creation_is_undone_with_its_record_only_while_unchanged(store: &dyn FleetStore) {
    let request = RequestRecord {
        rpc: "upsert_team",
        request_id: "undo-1",
        fingerprint: "a",
        ttl: Duration::from_secs(60),
    };
    let d = def("t1", "north");
    let Recorded::Applied(created) = store
        .upsert_team_once(&d, None, t0(), &request)
        .await
        .expect("create")
    else {
        panic!("a first run applies");
    };
    assert!(created.created);
    assert!(
        store
            .undo_create(&created.team, &request, t0() + secs(1))
            .await
            .expect("undo")
    );
    assert_eq!(store.get_team("t1").await.expect("get"), None);
    let listed = store
        .list_teams(Some("north"), None, None, 10)
        .await
        .expect("list");
    assert!(listed.teams.is_empty(), "{listed:?}");
    // The record went with it: the retry creates the team, it does not replay.
    let Recorded::Applied(again) = store
        .upsert_team_once(&d, None, t0() + secs(2), &request)
        .await
        .expect("retry")
    else {
        panic!("the retry applies again");
    };
    assert!(again.created);
    // Changed since (a status): not undone.
    store
        .set_status("t1", TeamStatus::Available, "", None, t0() + secs(3))
        .await
        .expect("available");
    assert!(
        !store
            .undo_create(&again.team, &request, t0() + secs(4))
            .await
            .expect("undo")
    );
    assert!(store.get_team("t1").await.expect("get").is_some());
}

/// Conformance scenario (see the module documentation): each region carries its own stamp
/// of the epoch, read back per region in order, `None` where none was written.
pub async fn region_epochs_are_stamped_and_read_per_region(store: &dyn FleetStore) {
    let regions = vec!["north".to_owned(), "south".to_owned()];
    assert_eq!(
        store.region_epochs(&regions).await.expect("read"),
        vec![None, None]
    );
    store
        .stamp_region_epochs(&regions[..1], "e1")
        .await
        .expect("stamp");
    assert_eq!(
        store.region_epochs(&regions).await.expect("read"),
        vec![Some("e1".to_owned()), None]
    );
    store
        .stamp_region_epochs(&regions, "e2")
        .await
        .expect("stamp");
    assert_eq!(
        store.region_epochs(&regions).await.expect("read"),
        vec![Some("e2".to_owned()), Some("e2".to_owned())]
    );
    assert_eq!(
        store.region_epochs(&[]).await.expect("read"),
        Vec::<Option<String>>::new()
    );
}

/// Conformance scenario (see the module documentation): a claim to restore a call takes a
/// team OFF_DUTY (as a rebuild leaves it) or AVAILABLE, with a larger fencing token, and
/// never a busy or out-of-service one; an ordinary claim still refuses OFF_DUTY.
pub async fn a_claim_to_restore_takes_an_off_duty_team_too(store: &dyn FleetStore) {
    store
        .upsert_team(&def("t1", "north"), None, t0())
        .await
        .expect("upsert");
    let refused = store.claim("north", "t1", "inc-1", None, t0(), None).await;
    assert!(
        matches!(
            refused,
            Err(ClaimError::NotAvailable {
                status: TeamStatus::OffDuty
            })
        ),
        "{refused:?}"
    );
    let before = store.get_team("t1").await.expect("read").expect("team");
    let restored = store
        .claim_to_restore("north", "t1", "inc-1", t0())
        .await
        .expect("an OFF_DUTY team is restored");
    assert_eq!(restored.team.status, TeamStatus::Dispatched);
    assert_eq!(restored.team.incident_id, "inc-1");
    assert!(restored.fencing_token > before.fencing_token);
    // Busy now: neither claim takes it.
    let busy = store.claim_to_restore("north", "t1", "inc-2", t0()).await;
    assert!(
        matches!(
            busy,
            Err(ClaimError::NotAvailable {
                status: TeamStatus::Dispatched
            })
        ),
        "{busy:?}"
    );
    // AVAILABLE is taken too; another region's id is not found there.
    available_team(store, "t2", "north", at(44.05, -123.09)).await;
    store
        .claim_to_restore("north", "t2", "inc-3", t0())
        .await
        .expect("an AVAILABLE team is restored");
    let elsewhere = store.claim_to_restore("south", "t2", "inc-4", t0()).await;
    assert!(
        matches!(elsewhere, Err(ClaimError::NotFound)),
        "{elsewhere:?}"
    );
}

/// "Off duty after this call": a team whose shift ends while it is on a call finishes the
/// call and, when it clears, goes OFF_DUTY (never AVAILABLE, so nothing can be offered to
/// it); a team clearing before its shift end goes AVAILABLE as before, and the ended shift
/// does not stop the call's own steps.
/// Conformance scenario (see the module documentation).
pub async fn a_team_whose_shift_ends_on_a_call_goes_off_duty_when_it_clears(
    store: &dyn FleetStore,
) {
    let here = at(44.05, -123.09);
    let shift_end = t0() + secs(3_600);
    for id in ["late", "early"] {
        available_team(store, id, "north", here).await;
        let mut ending = def(id, "north");
        ending.shift_ends_at = Some(shift_end);
        store
            .upsert_team(&ending, None, t0())
            .await
            .expect("shift end");
        store
            .claim("north", id, &format!("inc-{id}"), None, t0(), None)
            .await
            .expect("claim");
    }
    // The shift ends while "late" is on scene: its steps still go through.
    let after_end = shift_end + secs(60);
    for status in [TeamStatus::EnRoute, TeamStatus::OnScene] {
        let (team, _) = store
            .set_status("late", status, "inc-late", None, after_end)
            .await
            .expect("the call goes on past the shift end");
        assert_eq!(team.status, status);
    }
    let (cleared, changed) = store
        .set_status("late", TeamStatus::Available, "inc-late", None, after_end)
        .await
        .expect("clearing after the shift end is no error");
    assert!(changed);
    assert_eq!(cleared.status, TeamStatus::OffDuty);
    assert_eq!(cleared.incident_id, "");
    let stored = store.get_team("late").await.expect("get").expect("team");
    assert_eq!(stored.status, TeamStatus::OffDuty);
    let free = store
        .find_available("north", here, 10_000.0, &[], 10)
        .await
        .expect("find");
    assert!(!ids(&free).contains(&"late".to_owned()), "{:?}", ids(&free));

    // Clearing one second before the shift end: AVAILABLE.
    let (cleared, _) = store
        .set_status(
            "early",
            TeamStatus::Available,
            "inc-early",
            None,
            shift_end - secs(1),
        )
        .await
        .expect("clear");
    assert_eq!(cleared.status, TeamStatus::Available);
}
