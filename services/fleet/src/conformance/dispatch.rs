//! Scenarios of dispatch: claims and releases, the geo index, nearest-team searches and
//! claims to restore.

use super::*;

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
