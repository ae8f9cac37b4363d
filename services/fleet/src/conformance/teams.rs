//! Scenarios of the teams' own state: upserts and revisions, the status machine, positions,
//! region moves, lists, seeding and shift ends.

use super::*;

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
