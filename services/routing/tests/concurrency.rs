//! No double dispatch: two engines (replicas) share one PostgreSQL record and one fleet, and
//! 500 concurrent mixed calls (auto-assign, recommend + confirm, release, teams clearing and
//! going out of service) race over 50 teams. At no point does a team or an incident have two
//! ACTIVE assignments; each incident is assigned at most once; in the end every incident is
//! assigned, queued, escalated or released, the fleet and the record agree, and no team sits
//! free while the queue holds an incident it suits.

mod common;

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use common::{TestFleet, assign, engine_over, postgres_store, team};
use relay_fleet::DispatchStore;
use relay_proto::{
    common::{AssignmentMode, TeamStatus},
    routing::{
        AssignTeamRequest, AssignTeamResponse, AssignmentEventKind, AssignmentOutcome,
        ConfirmAssignmentRequest, ReleaseTeamRequest,
    },
};
use relay_routing::{
    engine::Engine,
    error::RoutingError,
    store::{IncidentState, PostgresStore, Store},
};
use relay_runtime::clock::{Clock, ManualClock};
use relay_tests::TestDatabase;
use sqlx::Row;

const TEAMS: usize = 50;
const CALLS: usize = 500;

/// The drain a replica runs: each announced team is offered to the queue.
fn spawn_drain(engine: Engine, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let mut events = engine.fleet().subscribe();
    tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            match tokio::time::timeout(Duration::from_millis(50), events.recv()).await {
                Ok(Ok(available)) => {
                    let _ = engine
                        .on_team_available(&available.region, &available.team_id)
                        .await;
                }
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return,
                _ => {}
            }
        }
    })
}

/// AutoAssign as intake's outbox sends it: ABORTED / CLAIM_CONFLICT (the record refused a
/// claim that a later claim of the same team overtook, as when a team clears and is claimed
/// again while this call's claim was still on its way to the record) is retried with the same
/// request id, as the proto tells callers to. Anything else fails the test, and so do more
/// than `CONFLICT_RETRIES` conflicts in a row.
async fn auto_assign(engine: &Engine, request: AssignTeamRequest) -> AssignTeamResponse {
    const CONFLICT_RETRIES: usize = 5;
    for _ in 0..CONFLICT_RETRIES {
        match engine.assign_team(request.clone()).await {
            Ok(response) => return response,
            Err(RoutingError::ClaimConflict) => {
                CONFLICTS.fetch_add(1, Ordering::SeqCst);
            }
            Err(error) => panic!("auto assign {}: {error:?}", request.incident_id),
        }
    }
    panic!(
        "auto assign {}: CLAIM_CONFLICT {CONFLICT_RETRIES} times in a row",
        request.incident_id
    )
}

/// CLAIM_CONFLICT answers retried by [`auto_assign`], reported at the end.
static CONFLICTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

async fn one_call(
    index: usize,
    engine: Engine,
    other: Engine,
    fleet: Arc<TestFleet>,
    region: String,
) {
    let incident = format!("inc-{index}");
    let priority = i32::try_from(index % 5).unwrap_or(0) + 1;
    match index % 5 {
        0 | 1 => {
            auto_assign(
                &engine,
                assign(
                    &format!("a-{index}"),
                    &incident,
                    &region,
                    AssignmentMode::AutoAssign,
                    priority,
                    &[],
                ),
            )
            .await;
        }
        2 => {
            let recommended = engine
                .assign_team(assign(
                    &format!("r-{index}"),
                    &incident,
                    &region,
                    AssignmentMode::Recommend,
                    priority,
                    &[],
                ))
                .await
                .expect("recommend");
            if recommended.outcome() != AssignmentOutcome::Recommended {
                return;
            }
            let choice = recommended.candidates[0].team_id.clone();
            let confirmed = other
                .confirm_assignment(ConfirmAssignmentRequest {
                    request_id: format!("c-{index}"),
                    incident_id: incident.clone(),
                    team_id: choice,
                })
                .await;
            if let Err(error) = confirmed {
                assert!(
                    matches!(
                        error.reason().as_str(),
                        "TEAM_NOT_AVAILABLE" | "CLAIM_CONFLICT"
                    ),
                    "{error:?}"
                );
                // The dispatcher falls back to automatic assignment.
                auto_assign(
                    &engine,
                    assign(
                        &format!("f-{index}"),
                        &incident,
                        &region,
                        AssignmentMode::AutoAssign,
                        priority,
                        &[],
                    ),
                )
                .await;
            }
        }
        3 => {
            let response = auto_assign(
                &engine,
                assign(
                    &format!("a-{index}"),
                    &incident,
                    &region,
                    AssignmentMode::AutoAssign,
                    priority,
                    &[],
                ),
            )
            .await;
            if let Some(assignment) = response.assignment {
                tokio::task::yield_now().await;
                let released = other
                    .release_team(ReleaseTeamRequest {
                        request_id: format!("rel-{index}"),
                        assignment_id: assignment.assignment_id,
                        reason: "handed back".into(),
                    })
                    .await;
                // The team may have cleared on its own in the meantime.
                if let Err(error) = released {
                    assert_eq!(error.reason(), "ASSIGNMENT_NOT_ACTIVE", "{error:?}");
                }
            }
        }
        _ => {
            // A team's status changes under the router: busy teams clear, free ones take a
            // break and come back.
            let team_id = format!("t{:02}", index % TEAMS);
            let status = fleet
                .fleet_team(&team_id)
                .await
                .expect("up")
                .map(|t| t.snapshot.status);
            match status {
                Some(TeamStatus::Dispatched) => {
                    fleet.set_status(&team_id, TeamStatus::OnScene);
                    tokio::task::yield_now().await;
                    fleet.set_status(&team_id, TeamStatus::Available);
                }
                Some(TeamStatus::Available) => {
                    fleet.set_status(&team_id, TeamStatus::OutOfService);
                    tokio::task::yield_now().await;
                    fleet.set_status(&team_id, TeamStatus::Available);
                }
                _ => {}
            }
        }
    }
}

async fn assert_no_double_assignment(store: &PostgresStore, database: &TestDatabase) {
    let _ = store;
    let pool = sqlx::PgPool::connect(database.url())
        .await
        .expect("connect");
    for column in ["team_id", "incident_id"] {
        let doubled: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM (SELECT {column} FROM routing.assignments WHERE state = 'ACTIVE' \
             GROUP BY {column} HAVING count(*) > 1) d"
        ))
        .fetch_one(&pool)
        .await
        .expect("query");
        assert_eq!(doubled, 0, "two ACTIVE assignments share a {column}");
    }
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_double_dispatch_across_two_replicas_under_500_concurrent_calls() {
    let database = TestDatabase::new().await;
    let store_a = postgres_store(&database).await;
    let store_b = postgres_store(&database).await;
    let clock = Arc::new(ManualClock::default());
    let fleet = Arc::new(TestFleet::new(clock.clone()));
    let region = relay_tests::unique_name("region");
    for index in 0..TEAMS {
        // Teams on a line north of the incident, 200 m apart.
        #[allow(clippy::cast_precision_loss)]
        let meters = 200.0 * (index as f64 + 1.0);
        fleet.upsert_team(
            &region,
            team(&format!("t{index:02}"), meters, &[], 5, clock.now()),
        );
    }
    let a = engine_over(store_a.clone(), fleet.clone(), clock.clone());
    let b = engine_over(store_b.clone(), fleet.clone(), clock.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let drains = [
        spawn_drain(a.clone(), stop.clone()),
        spawn_drain(b.clone(), stop.clone()),
    ];

    // A monitor samples the invariant while the calls run.
    let monitor = {
        let stop = stop.clone();
        let url = database.url().to_owned();
        tokio::spawn(async move {
            let pool = sqlx::PgPool::connect(&url).await.expect("connect");
            let mut samples = 0;
            while !stop.load(Ordering::SeqCst) {
                let rows = sqlx::query(
                    "SELECT team_id, count(*) AS n FROM routing.assignments WHERE state = 'ACTIVE' \
                     GROUP BY team_id HAVING count(*) > 1",
                )
                .fetch_all(&pool)
                .await
                .expect("sample");
                assert!(rows.is_empty(), "a team had two ACTIVE assignments");
                samples += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            samples
        })
    };

    let calls: Vec<_> = (0..CALLS)
        .map(|index| {
            let (engine, other) = if index % 2 == 0 {
                (a.clone(), b.clone())
            } else {
                (b.clone(), a.clone())
            };
            tokio::spawn(one_call(
                index,
                engine,
                other,
                fleet.clone(),
                region.clone(),
            ))
        })
        .collect();
    for call in calls {
        call.await.expect("call completed");
    }
    stop.store(true, Ordering::SeqCst);
    for drain in drains {
        drain.await.expect("drain");
    }
    let samples = monitor.await.expect("monitor");
    assert!(samples > 0);
    eprintln!(
        "{CALLS} calls, {samples} samples of the invariant, {} CLAIM_CONFLICT answers retried",
        CONFLICTS.load(Ordering::SeqCst)
    );
    assert_no_double_assignment(&store_a, &database).await;

    // Quiesce: every free team is offered to the queue by both replicas, then both
    // reconcile after the grace period.
    for index in 0..TEAMS {
        let team_id = format!("t{index:02}");
        let _ = a
            .on_team_available(&region, &team_id)
            .await
            .expect("drain a");
        let _ = b
            .on_team_available(&region, &team_id)
            .await
            .expect("drain b");
    }
    clock.advance(Duration::from_secs(31));
    let grace = Duration::from_secs(30);
    let (released, ended) = a.reconcile(&region, grace).await.expect("reconcile");
    assert_eq!(released, 0, "no claim was left without a record");
    let _ = ended;
    b.reconcile(&region, grace).await.expect("reconcile");
    for index in 0..TEAMS {
        let _ = a
            .on_team_available(&region, &format!("t{index:02}"))
            .await
            .expect("drain");
    }
    assert_no_double_assignment(&store_a, &database).await;

    // Every incident reached an outcome.
    let mut outcomes = BTreeMap::new();
    for index in (0..CALLS).filter(|i| i % 5 != 4) {
        let incident = store_a
            .incident(&format!("inc-{index}"))
            .await
            .expect("read")
            .unwrap_or_else(|| panic!("inc-{index} recorded"));
        assert!(
            matches!(
                incident.state,
                IncidentState::Assigned
                    | IncidentState::Queued
                    | IncidentState::Escalated
                    | IncidentState::Released
            ),
            "inc-{index} ended {:?}",
            incident.state
        );
        *outcomes.entry(format!("{:?}", incident.state)).or_insert(0) += 1;
    }
    for outcome in ["Assigned", "Released", "Queued"] {
        assert!(
            outcomes.contains_key(outcome),
            "no {outcome} incident: {outcomes:?}"
        );
    }
    eprintln!("outcomes: {outcomes:?}");

    // The fleet and the record agree on who works what.
    let mut busy = HashSet::new();
    for fleet_team in fleet.all_teams() {
        let recorded = store_a
            .active_assignment_of_team(&fleet_team.snapshot.team_id)
            .await
            .expect("read");
        match fleet_team.snapshot.status {
            TeamStatus::Available => {
                assert!(
                    recorded.is_none(),
                    "{} free but recorded busy",
                    fleet_team.snapshot.team_id
                );
            }
            _ => {
                let recorded = recorded.unwrap_or_else(|| {
                    panic!("{} busy without a record", fleet_team.snapshot.team_id)
                });
                assert_eq!(Some(recorded.incident_id.clone()), fleet_team.incident_id);
                busy.insert(fleet_team.snapshot.team_id.clone());
            }
        }
    }
    // No team is free while the queue holds an incident (none needs a capability).
    let queued = store_a.queue(&region, None, 1_000).await.expect("queue");
    if !queued.is_empty() {
        assert_eq!(
            busy.len(),
            TEAMS,
            "a free team while {} incidents wait",
            queued.len()
        );
    }

    // Events: gapless, and each incident assigned at most once.
    let events = store_a.events(&region, 0, 100_000).await.expect("events");
    for (expected, (seq, _)) in (1..).zip(&events) {
        assert_eq!(*seq, expected);
    }
    let mut assigned = HashSet::new();
    for (_, event) in &events {
        if event.kind() == AssignmentEventKind::Assigned {
            assert!(
                assigned.insert(event.incident_id.clone()),
                "{} assigned twice",
                event.incident_id
            );
        }
    }
    let pool = sqlx::PgPool::connect(database.url())
        .await
        .expect("connect");
    let rows = sqlx::query("SELECT count(*) AS n FROM routing.assignments")
        .fetch_one(&pool)
        .await
        .expect("count");
    let recorded: i64 = rows.get("n");
    assert_eq!(usize::try_from(recorded).unwrap_or(0), assigned.len());
    pool.close().await;
}
