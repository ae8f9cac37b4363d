//! One conformance suite for every `TeamStore` backend: each scenario below is a generic
//! function over `&dyn TeamStore`, and the `conformance!` macro instantiates it unchanged for
//! the Redis backend (the machine's real server, a unique key prefix per test, deleted
//! afterwards) and the in-process backend.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, TimeZone, Utc};
use relay_availability::{
    ChangeError, ClaimError, Keyspace, LocationOutcome, LocationReport, MemoryTeamStore,
    RedisTeamStore, ReleaseError, ReleaseOutcome, TeamStore,
    model::{EventId, EventKind, Position, TeamDefinition, TeamStatus},
};

/// A store for one test, and what to clean up afterwards.
struct Backend {
    store: Arc<dyn TeamStore>,
    prefix: Option<String>,
}

impl Backend {
    fn memory() -> Self {
        Self {
            store: Arc::new(MemoryTeamStore::new(Duration::from_secs(3600))),
            prefix: None,
        }
    }

    fn redis() -> Self {
        let prefix = relay_tests::unique_name("conf");
        let client = redis::Client::open(relay_tests::redis_url()).expect("redis url");
        let store = RedisTeamStore::new(
            client,
            Keyspace::new(prefix.clone()),
            Duration::from_secs(3600),
        )
        .expect("store");
        Self {
            store: Arc::new(store),
            prefix: Some(prefix),
        }
    }

    /// The Redis backend on a Redis Cluster of the test's own (a unique prefix per scenario:
    /// the scenarios share one cluster).
    fn cluster(cluster: &relay_tests::redis_cluster::RedisCluster) -> Self {
        let target = relay_runtime::redis_link::RedisTarget::open(&cluster.urls(), true)
            .expect("cluster urls");
        let store = RedisTeamStore::new(
            target,
            Keyspace::new(relay_tests::unique_name("conf")),
            Duration::from_secs(3600),
        )
        .expect("store");
        Self {
            store: Arc::new(store),
            prefix: None,
        }
    }

    async fn cleanup(self) {
        if let Some(prefix) = self.prefix {
            relay_tests::redis_delete_prefix(&prefix).await;
        }
    }
}

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
async fn available_team(store: &dyn TeamStore, id: &str, region: &str, position: Position) {
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

fn ids(found: &[(relay_availability::model::Team, f64)]) -> Vec<String> {
    found.iter().map(|(t, _)| t.team_id.clone()).collect()
}

async fn upsert_creates_updates_and_checks_revisions(store: &dyn TeamStore) {
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

async fn status_changes_follow_the_state_machine(store: &dyn TeamStore) {
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

async fn claim_release_and_incident_rules(store: &dyn TeamStore) {
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

async fn older_positions_never_win(store: &dyn TeamStore) {
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

async fn the_geo_index_follows_status_and_position(store: &dyn TeamStore) {
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

async fn find_filters_capabilities_orders_and_limits(store: &dyn TeamStore) {
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

async fn events_record_every_change_in_order(store: &dyn TeamStore) {
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

async fn region_moves_only_off_duty(store: &dyn TeamStore) {
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

async fn lists_page_and_filter(store: &dyn TeamStore) {
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

async fn seeding_recreates_missing_teams_above_a_floor(store: &dyn TeamStore) {
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

async fn idempotency_records_expire_and_are_kept_per_rpc(store: &dyn TeamStore) {
    assert_eq!(
        store
            .idempotency_get("upsert_team", "r1")
            .await
            .expect("get"),
        None
    );
    store
        .idempotency_put("upsert_team", "r1", "{\"x\":1}", Duration::from_secs(60))
        .await
        .expect("put");
    assert_eq!(
        store
            .idempotency_get("upsert_team", "r1")
            .await
            .expect("get")
            .as_deref(),
        Some("{\"x\":1}")
    );
    assert_eq!(
        store
            .idempotency_get("set_team_status", "r1")
            .await
            .expect("get"),
        None
    );
    store.ping().await.expect("ping");
}

async fn history_expiry_is_reported(store: &dyn TeamStore) {
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

async fn the_live_epoch_is_written_once_and_agreed_on(store: &dyn TeamStore) {
    assert_eq!(store.live_epoch().await.expect("read"), None);
    assert_eq!(store.adopt_live_epoch("e1").await.expect("adopt"), "e1");
    // A second replica adopts the epoch the first one wrote.
    assert_eq!(store.adopt_live_epoch("e2").await.expect("adopt"), "e1");
    assert_eq!(
        store.live_epoch().await.expect("read").as_deref(),
        Some("e1")
    );
}

/// "Off duty after this call": a team whose shift ends while it is on a call finishes the
/// call and, when it clears, goes OFF_DUTY (never AVAILABLE, so nothing can be offered to
/// it); a team clearing before its shift end goes AVAILABLE as before, and the ended shift
/// does not stop the call's own steps.
async fn a_team_whose_shift_ends_on_a_call_goes_off_duty_when_it_clears(store: &dyn TeamStore) {
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

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod redis_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let backend = super::Backend::redis();
                    super::$name(&*backend.store).await;
                    backend.cleanup().await;
                }
            )*
        }
        mod cluster_backend {
            /// Every scenario on a real Redis Cluster (three primaries, a replica each), one
            /// after another on one cluster (starting one costs a few seconds). A script whose
            /// keys (declared or built inside it) span two slots, or a pipeline the store
            /// cannot split by slot, fails here with the cluster's CROSSSLOT.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn every_scenario() {
                let cluster = relay_tests::redis_cluster::RedisCluster::start().await;
                $(
                    let backend = super::Backend::cluster(&cluster);
                    super::$name(&*backend.store).await;
                )*
            }
        }
        mod memory_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let backend = super::Backend::memory();
                    super::$name(&*backend.store).await;
                    backend.cleanup().await;
                }
            )*
        }
    };
}

conformance!(
    upsert_creates_updates_and_checks_revisions,
    status_changes_follow_the_state_machine,
    claim_release_and_incident_rules,
    older_positions_never_win,
    the_geo_index_follows_status_and_position,
    find_filters_capabilities_orders_and_limits,
    events_record_every_change_in_order,
    region_moves_only_off_duty,
    lists_page_and_filter,
    seeding_recreates_missing_teams_above_a_floor,
    idempotency_records_expire_and_are_kept_per_rpc,
    history_expiry_is_reported,
    the_live_epoch_is_written_once_and_agreed_on,
    a_team_whose_shift_ends_on_a_call_goes_off_duty_when_it_clears,
);

/// Redis only (the in-process store trims by its own wall clock, which a test cannot move
/// without sleeping): once a stream was trimmed past an id, reading after that id is
/// `HistoryExpired`, and reading after the newest trimmed id is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_reports_expired_history() {
    let backend = Backend::redis();
    let prefix = backend.prefix.clone().expect("redis prefix");
    let events = Keyspace::new(prefix).events("north");
    let client = redis::Client::open(relay_tests::redis_url()).expect("url");
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    for id in ["1-0", "2-0", "3-0"] {
        let _: String = redis::cmd("XADD")
            .arg(&events)
            .arg(id)
            .arg("kind")
            .arg("status")
            .query_async(&mut redis)
            .await
            .expect("xadd");
    }
    let _: i64 = redis::cmd("XTRIM")
        .arg(&events)
        .arg("MINID")
        .arg("3-0")
        .query_async(&mut redis)
        .await
        .expect("xtrim");
    let expired = backend
        .store
        .read_events("north", EventId { ms: 1, seq: 0 }, 10, Duration::ZERO)
        .await;
    assert!(
        matches!(
            expired,
            Err(relay_availability::EventsError::HistoryExpired)
        ),
        "{expired:?}"
    );
    let from_start = backend
        .store
        .read_events("north", EventId::ZERO, 10, Duration::ZERO)
        .await;
    assert!(matches!(
        from_start,
        Err(relay_availability::EventsError::HistoryExpired)
    ));
    // Redis does not say which id was trimmed last, so a reader on it is told to rebuild too
    // (safe); a reader on the first retained entry is not.
    let on_trimmed = backend
        .store
        .read_events("north", EventId { ms: 2, seq: 0 }, 10, Duration::ZERO)
        .await;
    assert!(matches!(
        on_trimmed,
        Err(relay_availability::EventsError::HistoryExpired)
    ));
    let retained = backend
        .store
        .read_events("north", EventId { ms: 3, seq: 0 }, 10, Duration::ZERO)
        .await;
    assert!(
        matches!(retained, Ok(ref v) if v.is_empty()),
        "{retained:?}"
    );
    backend.cleanup().await;
}
