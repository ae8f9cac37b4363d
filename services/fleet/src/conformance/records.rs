//! Scenarios of what the store records beside the teams: events, idempotency records,
//! history expiry, the live epoch, undone creations and region epochs.

use super::*;

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
pub(super) async fn futures_join_all<F: std::future::Future>(
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
