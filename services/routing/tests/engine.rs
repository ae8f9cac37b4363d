//! The engine against the real PostgreSQL record and the in-process fleet, with a manual
//! clock: assignment, exclusions, lost races, the queue, escalation, confirmation, release,
//! cancellation, idempotency, validation, and reconciliation.

mod common;

use std::{sync::Arc, time::Duration};

use common::{World, assign, team, world};
use relay_fleet::{
    Claim, ClaimError, DispatchStore, FleetTeam, MemoryTeamStore, Nearest, ReleaseError,
    ReleaseOutcome, StoreError, TeamAvailable,
    model::{Position, TeamSummary},
};
use relay_proto::{
    common::{AssignmentMode, ExclusionReason, TeamStatus, UnservedReason},
    routing::{
        AssignTeamResponse, Assignment, AssignmentEndCause, AssignmentEventKind, AssignmentOutcome,
        AssignmentSource, AssignmentState, CancelRoutingRequest, ConfirmAssignmentRequest,
        GetAssignmentRequest, ListQueueRequest, ReleaseTeamRequest, RestoreAssignmentRequest,
    },
};
use relay_routing::{
    error::RoutingError,
    store::{IncidentState, RequestRecord, Store, Write},
};
use relay_runtime::clock::Clock;

const AUTO: AssignmentMode = AssignmentMode::AutoAssign;
const RECOMMEND: AssignmentMode = AssignmentMode::Recommend;

fn add(w: &World, id: &str, meters: f64, caps: &[&str], age_s: i64) {
    w.fleet
        .upsert_team(&w.region, team(id, meters, caps, age_s, w.clock.now()));
}

fn status_of(w: &World, id: &str) -> (TeamStatus, Option<String>) {
    w.fleet
        .all_teams()
        .into_iter()
        .find(|t| t.snapshot.team_id == id)
        .map(|t| (t.snapshot.status, t.incident_id))
        .expect("team exists")
}

async fn kinds(w: &World) -> Vec<(AssignmentEventKind, String)> {
    w.store
        .events(&w.region, 0, 1000)
        .await
        .expect("events")
        .into_iter()
        .map(|(_, e)| (e.kind(), e.incident_id))
        .collect()
}

#[tokio::test]
async fn auto_assign_claims_the_nearest_records_it_and_is_idempotent() {
    let w = world().await;
    add(&w, "far", 3_000.0, &[], 10);
    add(&w, "near", 500.0, &[], 10);
    add(&w, "mid", 1_000.0, &[], 10);
    let request = assign("r1", "inc-1", &w.region, AUTO, 2, &[]);
    let response = w.engine.assign_team(request.clone()).await.expect("assign");
    assert_eq!(response.outcome(), AssignmentOutcome::Assigned);
    let assignment = response.assignment.clone().expect("assignment");
    assert_eq!(assignment.team_id, "near");
    assert_eq!(assignment.source(), AssignmentSource::AutoAssign);
    assert_eq!(assignment.fencing_token, 1);
    assert_eq!(assignment.cad_system, "cad-1");
    let ranks: Vec<(&str, i32)> = response
        .candidates
        .iter()
        .map(|c| (c.team_id.as_str(), c.rank))
        .collect();
    assert_eq!(ranks, [("near", 1), ("mid", 2), ("far", 3)]);
    assert!(
        response.rationale.starts_with("assigned Team near"),
        "{}",
        response.rationale
    );
    assert_eq!(
        status_of(&w, "near"),
        (TeamStatus::Dispatched, Some("inc-1".into()))
    );
    // Recorded before the answer.
    let stored = w
        .engine
        .get_assignment(GetAssignmentRequest {
            assignment_id: assignment.assignment_id.clone(),
        })
        .await
        .expect("get");
    assert_eq!(stored, assignment);
    assert_eq!(
        kinds(&w).await,
        [(AssignmentEventKind::Assigned, "inc-1".into())]
    );

    // A retry returns the original answer and claims nothing more.
    let again = w.engine.assign_team(request.clone()).await.expect("retry");
    assert_eq!(again, response);
    assert_eq!(status_of(&w, "mid").0, TeamStatus::Available);
    // Reusing the request_id for another request is refused.
    let mut other = request.clone();
    other.priority = 1;
    let error = w.engine.assign_team(other).await.expect_err("reused");
    assert_eq!(error.reason(), "REQUEST_ID_REUSED");
    // A new routing of an assigned incident is refused, naming the assignment.
    let error = w
        .engine
        .assign_team(assign("r2", "inc-1", &w.region, AUTO, 2, &[]))
        .await
        .expect_err("already assigned");
    match error {
        RoutingError::IncidentAlreadyAssigned {
            assignment_id,
            team_id,
        } => {
            assert_eq!(assignment_id, assignment.assignment_id);
            assert_eq!(team_id, "near");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn stale_positions_and_missing_capabilities_are_excluded_with_reasons() {
    let w = world().await;
    add(&w, "stale", 100.0, &["clinician"], 3_600);
    add(&w, "nocap", 200.0, &["peer"], 10);
    add(&w, "ok", 2_000.0, &["clinician", "peer"], 10);
    let response = w
        .engine
        .assign_team(assign("r1", "inc-1", &w.region, AUTO, 3, &["clinician"]))
        .await
        .expect("assign");
    assert_eq!(response.assignment.expect("assigned").team_id, "ok");
    let reasons: Vec<(&str, ExclusionReason)> = response
        .candidates
        .iter()
        .map(|c| (c.team_id.as_str(), c.exclusion_reason()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("ok", ExclusionReason::Unspecified),
            ("stale", ExclusionReason::StalePosition),
            ("nocap", ExclusionReason::MissingCapability),
        ]
    );
    assert!(
        response
            .rationale
            .contains("Team stale was nearer but last position 60 min old"),
        "{}",
        response.rationale
    );
    assert_eq!(status_of(&w, "stale").0, TeamStatus::Available);
}

/// A fleet where another call claims `victim` just before this engine's first claim.
#[derive(Debug)]
struct RacingFleet {
    inner: Arc<MemoryTeamStore>,
    victim: String,
    raced: std::sync::atomic::AtomicBool,
}

#[tonic::async_trait]
impl DispatchStore for RacingFleet {
    async fn teams_near(
        &self,
        region: &str,
        point: Position,
        radius: f64,
    ) -> Result<Vec<TeamSummary>, StoreError> {
        self.inner.teams_near(region, point, radius).await
    }
    async fn nearest_available(
        &self,
        region: &str,
        point: Position,
        radius: f64,
        count: usize,
    ) -> Result<Nearest, StoreError> {
        self.inner
            .nearest_available(region, point, radius, count)
            .await
    }
    async fn nearest_unavailable(
        &self,
        region: &str,
        point: Position,
        radius: f64,
        count: usize,
    ) -> Result<Vec<(TeamSummary, f64)>, StoreError> {
        self.inner
            .nearest_unavailable(region, point, radius, count)
            .await
    }
    async fn remember_recommendation(
        &self,
        incident_id: &str,
        request: &[u8],
        ttl: Duration,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), StoreError> {
        self.inner
            .remember_recommendation(incident_id, request, ttl, now)
            .await
    }
    async fn recommendation(
        &self,
        incident_id: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.recommendation(incident_id, now).await
    }
    async fn fleet_team(&self, team_id: &str) -> Result<Option<FleetTeam>, StoreError> {
        self.inner.fleet_team(team_id).await
    }
    async fn busy_teams(&self, region: &str) -> Result<Vec<FleetTeam>, StoreError> {
        self.inner.busy_teams(region).await
    }
    async fn claim_to_restore(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Claim, ClaimError> {
        self.inner
            .claim_to_restore(region, team_id, incident_id, now)
            .await
    }

    async fn claim(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        expected_revision: Option<i64>,
        now: chrono::DateTime<chrono::Utc>,
        max_age: Option<Duration>,
    ) -> Result<Claim, ClaimError> {
        if !self.raced.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let won = self
                .inner
                .claim(region, &self.victim, "other-call", None, now, None)
                .await;
            assert!(won.is_ok());
        }
        self.inner
            .claim(
                region,
                team_id,
                incident_id,
                expected_revision,
                now,
                max_age,
            )
            .await
    }
    async fn release(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<ReleaseOutcome, ReleaseError> {
        self.inner.release(region, team_id, incident_id, now).await
    }
    async fn release_quietly(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<ReleaseOutcome, ReleaseError> {
        self.inner
            .release_quietly(region, team_id, incident_id, now)
            .await
    }
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<TeamAvailable> {
        self.inner.subscribe()
    }
}

#[tokio::test]
async fn a_team_lost_to_another_call_is_marked_and_the_next_is_claimed() {
    let w = world().await;
    add(&w, "best", 300.0, &[], 10);
    add(&w, "second", 900.0, &[], 10);
    let racing = Arc::new(RacingFleet {
        inner: w.fleet.store(),
        victim: "best".into(),
        raced: false.into(),
    });
    let engine = relay_routing::engine::Engine::new(
        w.store.clone(),
        racing,
        w.clock.clone(),
        relay_routing::settings::RoutingSettings::default(),
        relay_runtime::paging::PageTokens::new(b"k"),
    );
    let response = engine
        .assign_team(assign("r1", "inc-1", &w.region, AUTO, 2, &[]))
        .await
        .expect("assign");
    assert_eq!(response.assignment.expect("assigned").team_id, "second");
    let first = &response.candidates[1];
    assert_eq!(first.team_id, "best");
    assert_eq!(
        first.exclusion_reason(),
        ExclusionReason::ClaimedByAnotherCall
    );
    assert_eq!(
        status_of(&w, "best"),
        (TeamStatus::Dispatched, Some("other-call".into()))
    );
}

#[tokio::test]
async fn the_queue_serves_priority_then_age_when_a_team_frees_up() {
    let w = world().await;
    add(&w, "busy", 500.0, &[], 10);
    w.fleet.set_status("busy", TeamStatus::OnScene);
    let mut queued = Vec::new();
    for (id, priority) in [
        ("old-p3", 3),
        ("old-p1", 1),
        ("new-p1", 1),
        ("needs-emt", 1),
    ] {
        let required: &[&str] = if id == "needs-emt" { &["emt"] } else { &[] };
        let response = w
            .engine
            .assign_team(assign(
                &format!("q-{id}"),
                id,
                &w.region,
                AUTO,
                priority,
                required,
            ))
            .await
            .expect("queue");
        assert_eq!(response.outcome(), AssignmentOutcome::Queued);
        let expected = if id == "needs-emt" {
            UnservedReason::MissingCapability
        } else {
            UnservedReason::AllBusy
        };
        assert_eq!(response.unserved_reason(), expected);
        assert_eq!(response.queued.as_ref().expect("entry").reason(), expected);
        queued.push(id);
        w.clock.advance(Duration::from_secs(1));
    }
    let list = w
        .engine
        .list_queue(ListQueueRequest {
            region: w.region.clone(),
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .expect("list");
    let ids: Vec<&str> = list
        .queued_incidents
        .iter()
        .map(|q| q.incident_id.as_str())
        .collect();
    assert_eq!(ids, ["old-p1", "new-p1"]);
    let rest = w
        .engine
        .list_queue(ListQueueRequest {
            region: w.region.clone(),
            page_size: 2,
            page_token: list.next_page_token.clone(),
        })
        .await
        .expect("list");
    let ids: Vec<&str> = rest
        .queued_incidents
        .iter()
        .map(|q| q.incident_id.as_str())
        .collect();
    assert_eq!(ids, ["needs-emt", "old-p3"]);
    assert!(rest.next_page_token.is_empty());
    // A token for another region is refused.
    let error = w
        .engine
        .list_queue(ListQueueRequest {
            region: "elsewhere".into(),
            page_size: 2,
            page_token: list.next_page_token,
        })
        .await
        .expect_err("foreign token");
    assert_eq!(error.reason(), "INVALID_PAGE_TOKEN");

    // The team clears: the first queued incident it suits is assigned, from the queue.
    w.fleet.set_status("busy", TeamStatus::Available);
    let assigned = w
        .engine
        .on_team_available(&w.region, "busy")
        .await
        .expect("drain")
        .expect("assigned");
    assert_eq!(assigned.incident_id, "old-p1");
    assert_eq!(assigned.source(), AssignmentSource::Queue);
    // Released, it takes the next one (the EMT call is skipped: it does not suit).
    let released = w
        .engine
        .release_team(ReleaseTeamRequest {
            request_id: "rel-1".into(),
            assignment_id: assigned.assignment_id.clone(),
            reason: "handed back to police".into(),
        })
        .await
        .expect("release")
        .assignment
        .expect("assignment");
    assert_eq!(released.state(), AssignmentState::Released);
    assert_eq!(released.end_reason, "handed back to police");
    let next = w
        .store
        .active_assignment_of_team("busy")
        .await
        .expect("read")
        .expect("the release offered the team to the queue");
    assert_eq!(next.incident_id, "new-p1");
    let remaining: Vec<String> = w
        .store
        .queue(&w.region, None, 10)
        .await
        .expect("queue")
        .into_iter()
        .map(|i| i.incident_id)
        .collect();
    assert_eq!(remaining, ["needs-emt", "old-p3"]);
    let events = kinds(&w).await;
    let tail: Vec<AssignmentEventKind> = events[4..].iter().map(|(k, _)| *k).collect();
    assert_eq!(
        tail,
        [
            AssignmentEventKind::Assigned,
            AssignmentEventKind::Released,
            AssignmentEventKind::Assigned
        ]
    );
}

#[tokio::test]
async fn requeueing_keeps_queued_time_and_escalation_follows_the_clock() {
    let w = world().await;
    let first = w
        .engine
        .assign_team(assign("q1", "inc-1", &w.region, AUTO, 1, &[]))
        .await
        .expect("queue");
    assert_eq!(first.unserved_reason(), UnservedReason::NoTeamsInRegion);
    let entry = first.queued.expect("queued");
    w.clock.advance(Duration::from_secs(100));
    // Routed again with a lower priority: queued_time kept, escalate_time recomputed.
    let again = w
        .engine
        .assign_team(assign("q2", "inc-1", &w.region, RECOMMEND, 2, &[]))
        .await
        .expect("requeue")
        .queued
        .expect("queued");
    assert_eq!(again.queued_time, entry.queued_time);
    assert_eq!(again.priority, 2);
    let limit_p2 = 600;
    assert_eq!(
        again.escalate_time.expect("set").seconds,
        entry.queued_time.expect("set").seconds + limit_p2
    );
    w.clock.advance(Duration::from_secs(499));
    assert_eq!(w.engine.escalate_due().await.expect("escalate"), 0);
    w.clock.advance(Duration::from_secs(1));
    // Two replicas escalate it exactly once.
    let other = common::engine_over(w.store.clone(), w.fleet.clone(), w.clock.clone());
    let (a, b) = tokio::join!(w.engine.escalate_due(), other.escalate_due());
    assert_eq!(a.expect("a") + b.expect("b"), 1);
    let events = w.store.events(&w.region, 0, 10).await.expect("events");
    let last = &events.last().expect("event").1;
    assert_eq!(last.kind(), AssignmentEventKind::Escalated);
    assert_eq!(last.reason(), UnservedReason::NoTeamsInRegion);
    assert_eq!(last.queued.as_ref().expect("entry").incident_id, "inc-1");
    let incident = w
        .store
        .incident("inc-1")
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(incident.state, IncidentState::Escalated);
    assert!(
        w.store
            .queue(&w.region, None, 10)
            .await
            .expect("queue")
            .is_empty()
    );
}

#[tokio::test]
async fn recommend_ranks_only_and_confirm_claims_the_dispatchers_choice() {
    let w = world().await;
    add(&w, "a", 400.0, &[], 10);
    add(&w, "b", 800.0, &[], 10);
    add(&w, "busy", 100.0, &[], 10);
    w.fleet.set_status("busy", TeamStatus::EnRoute);
    w.fleet.upsert_team(
        "other-region",
        team("far-away", 0.0, &[], 10, w.clock.now()),
    );
    let response = w
        .engine
        .assign_team(assign("r1", "inc-1", &w.region, RECOMMEND, 2, &[]))
        .await
        .expect("recommend");
    assert_eq!(response.outcome(), AssignmentOutcome::Recommended);
    assert_eq!(response.candidates[0].team_id, "a");
    assert!(response.assignment.is_none() && response.queued.is_none());
    assert_eq!(
        status_of(&w, "a").0,
        TeamStatus::Available,
        "nothing claimed"
    );

    let confirm = |request_id: &str, team_id: &str| ConfirmAssignmentRequest {
        request_id: request_id.into(),
        incident_id: "inc-1".into(),
        team_id: team_id.into(),
    };
    for (team_id, reason) in [
        ("ghost", "TEAM_NOT_FOUND"),
        ("busy", "TEAM_NOT_AVAILABLE"),
        ("far-away", "REGION_MISMATCH"),
    ] {
        let error = w
            .engine
            .confirm_assignment(confirm(&format!("c-{team_id}"), team_id))
            .await
            .expect_err(team_id);
        assert_eq!(error.reason(), reason);
    }
    let error = w
        .engine
        .confirm_assignment(ConfirmAssignmentRequest {
            request_id: "c-x".into(),
            incident_id: "unknown".into(),
            team_id: "a".into(),
        })
        .await
        .expect_err("unknown incident");
    assert_eq!(error.reason(), "INCIDENT_NOT_FOUND");

    let chosen = w
        .engine
        .confirm_assignment(confirm("c-b", "b"))
        .await
        .expect("confirm")
        .assignment
        .expect("assignment");
    assert_eq!(chosen.team_id, "b");
    assert_eq!(chosen.source(), AssignmentSource::Dispatcher);
    assert!(chosen.eta_seconds > 0 && chosen.distance_meters > 700.0);
    assert_eq!(
        status_of(&w, "b"),
        (TeamStatus::Dispatched, Some("inc-1".into()))
    );
    let same = w
        .engine
        .confirm_assignment(confirm("c-b2", "b"))
        .await
        .expect("same team again")
        .assignment
        .expect("assignment");
    assert_eq!(same.assignment_id, chosen.assignment_id);
    let error = w
        .engine
        .confirm_assignment(confirm("c-a", "a"))
        .await
        .expect_err("another team");
    assert_eq!(error.reason(), "INCIDENT_ALREADY_ASSIGNED");
    assert_eq!(status_of(&w, "a").0, TeamStatus::Available);
}

#[tokio::test]
async fn cancel_dequeues_or_cancels_and_blocks_confirmation() {
    let w = world().await;
    add(&w, "t1", 400.0, &[], 10);
    let assigned = w
        .engine
        .assign_team(assign("r1", "inc-a", &w.region, AUTO, 2, &[]))
        .await
        .expect("assign")
        .assignment
        .expect("assigned");
    let queued = w
        .engine
        .assign_team(assign("r2", "inc-q", &w.region, AUTO, 2, &[]))
        .await
        .expect("queue");
    assert_eq!(queued.unserved_reason(), UnservedReason::AllBusy);

    let cancel = |request_id: &str, incident_id: &str| CancelRoutingRequest {
        request_id: request_id.into(),
        incident_id: incident_id.into(),
        reason: "caller cancelled".into(),
    };
    let dequeued = w
        .engine
        .cancel_routing(cancel("x1", "inc-q"))
        .await
        .expect("cancel queued");
    assert_eq!(dequeued.dequeued.expect("entry").incident_id, "inc-q");
    assert!(dequeued.assignment.is_none());
    // Cancelling the assigned one frees the team (and the now empty queue takes nothing).
    let cancelled = w
        .engine
        .cancel_routing(cancel("x2", "inc-a"))
        .await
        .expect("cancel assigned")
        .assignment
        .expect("assignment");
    assert_eq!(cancelled.assignment_id, assigned.assignment_id);
    assert_eq!(cancelled.state(), AssignmentState::Cancelled);
    assert_eq!(status_of(&w, "t1"), (TeamStatus::Available, None));
    // Nothing left to cancel: success, both unset, no event.
    let before = kinds(&w).await.len();
    let nothing = w
        .engine
        .cancel_routing(cancel("x3", "inc-a"))
        .await
        .expect("nothing");
    assert!(nothing.assignment.is_none() && nothing.dequeued.is_none());
    assert_eq!(kinds(&w).await.len(), before);
    let error = w
        .engine
        .confirm_assignment(ConfirmAssignmentRequest {
            request_id: "c1".into(),
            incident_id: "inc-a".into(),
            team_id: "t1".into(),
        })
        .await
        .expect_err("cancelled");
    assert_eq!(error.reason(), "ROUTING_CANCELLED");
    let error = w
        .engine
        .cancel_routing(cancel("x4", "never-seen"))
        .await
        .expect_err("unknown");
    assert_eq!(error.reason(), "INCIDENT_NOT_FOUND");
    let error = w
        .engine
        .release_team(ReleaseTeamRequest {
            request_id: "rel".into(),
            assignment_id: assigned.assignment_id.clone(),
            reason: String::new(),
        })
        .await
        .expect_err("not active");
    assert_eq!(error.reason(), "ASSIGNMENT_NOT_ACTIVE");
    // AssignTeam routes a cancelled incident anew.
    let again = w
        .engine
        .assign_team(assign("r3", "inc-a", &w.region, AUTO, 2, &[]))
        .await
        .expect("route anew");
    assert_eq!(again.outcome(), AssignmentOutcome::Assigned);
    let tail: Vec<AssignmentEventKind> = kinds(&w).await.into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        tail,
        [
            AssignmentEventKind::Assigned,
            AssignmentEventKind::Queued,
            AssignmentEventKind::Cancelled,
            AssignmentEventKind::Cancelled,
            AssignmentEventKind::Assigned,
        ]
    );
}

#[tokio::test]
async fn bad_input_names_every_field_and_changes_nothing() {
    let w = world().await;
    add(&w, "t1", 400.0, &[], 10);
    let mut request = assign("", "bad id!", &w.region, AUTO, 9, &["Not-A-Tag"]);
    request.location = Some(relay_proto::common::GeoPoint {
        latitude: f64::NAN,
        longitude: 200.0,
    });
    request.expected_duration_seconds = Some(0);
    request.cad_system = String::new();
    request.mode = 42;
    let error = w.engine.assign_team(request).await.expect_err("invalid");
    let status = error.into_status();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    use tonic_types::StatusExt;
    let details = status.get_error_details();
    let mut fields: Vec<String> = details
        .bad_request()
        .expect("bad request")
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "cad_system",
            "expected_duration_seconds",
            "incident_id",
            "location.latitude",
            "location.longitude",
            "mode",
            "priority",
            "request_id",
            "required_capabilities[0]",
        ]
    );
    assert_eq!(status_of(&w, "t1").0, TeamStatus::Available);
    assert!(w.store.incident("bad id!").await.expect("read").is_none());
    // An unknown region, when regions are restricted.
    let settings = relay_routing::settings::RoutingSettings {
        any_region: false,
        ..Default::default()
    };
    let strict = relay_routing::engine::Engine::new(
        w.store.clone(),
        w.fleet.store(),
        w.clock.clone(),
        settings,
        relay_runtime::paging::PageTokens::new(b"k"),
    );
    let error = strict
        .assign_team(assign("r1", "inc-1", &w.region, AUTO, 1, &[]))
        .await
        .expect_err("unknown region");
    assert_eq!(error.reason(), "REGION_UNKNOWN");
    assert_eq!(status_of(&w, "t1").0, TeamStatus::Available);
    for (bad, field) in [(
        ReleaseTeamRequest {
            request_id: "ok".into(),
            assignment_id: String::new(),
            reason: "x".repeat(300),
        },
        "assignment_id",
    )] {
        let error = w.engine.release_team(bad).await.expect_err("invalid");
        assert!(error.to_string().contains(field), "{error}");
        assert!(error.to_string().contains("reason"), "{error}");
    }
    let error = w
        .engine
        .list_queue(ListQueueRequest {
            region: w.region.clone(),
            page_size: -1,
            page_token: String::new(),
        })
        .await
        .expect_err("negative page size");
    assert!(error.to_string().contains("page_size"));
}

#[tokio::test]
async fn a_team_that_clears_ends_its_assignment_and_takes_the_queue() {
    let w = world().await;
    add(&w, "t1", 400.0, &[], 10);
    let first = w
        .engine
        .assign_team(assign("r1", "inc-1", &w.region, AUTO, 2, &[]))
        .await
        .expect("assign")
        .assignment
        .expect("assigned");
    w.engine
        .assign_team(assign("r2", "inc-2", &w.region, AUTO, 2, &[]))
        .await
        .expect("queued");
    w.fleet.set_status("t1", TeamStatus::OnScene);
    w.fleet.set_status("t1", TeamStatus::Available);
    let next = w
        .engine
        .on_team_available(&w.region, "t1")
        .await
        .expect("drain")
        .expect("assigned");
    assert_eq!(next.incident_id, "inc-2");
    let ended = w
        .store
        .assignment(&first.assignment_id)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(ended.state(), AssignmentState::Released);
    assert_eq!(ended.end_reason, "team cleared");
}

#[tokio::test]
async fn reconciliation_repairs_a_crash_between_claim_and_record_and_lost_claims() {
    let w = world().await;
    add(&w, "orphan", 400.0, &[], 10);
    add(&w, "lost", 800.0, &[], 10);
    add(&w, "fine", 1_200.0, &[], 10);
    // A replica claimed "orphan" and died before recording.
    let claim = w
        .fleet
        .claim(&w.region, "orphan", "inc-dead", None, w.clock.now(), None)
        .await;
    assert!(claim.is_ok());
    // Two recorded assignments; then the fleet loses the claim of one ("lost").
    for (request, incident) in [("r1", "inc-1"), ("r2", "inc-2")] {
        w.engine
            .assign_team(assign(request, incident, &w.region, AUTO, 2, &[]))
            .await
            .expect("assign");
    }
    let lost = w
        .store
        .active_assignment_of_team("lost")
        .await
        .expect("read")
        .expect("active");
    let fine = w
        .store
        .active_assignment_of_team("fine")
        .await
        .expect("read")
        .expect("active");
    assert_eq!(fine.incident_id, "inc-2");
    // The fleet forgets "lost"'s claim (as a failover would) without announcing it.
    w.fleet.upsert_team(&w.region, {
        let mut t = team("lost", 800.0, &[], 10, w.clock.now());
        t.status = TeamStatus::OutOfService;
        t
    });
    let grace = Duration::from_secs(30);
    assert_eq!(
        w.engine
            .reconcile(&w.region, grace)
            .await
            .expect("reconcile"),
        (0, 0)
    );
    w.clock.advance(Duration::from_secs(31));
    assert_eq!(
        w.engine
            .reconcile(&w.region, grace)
            .await
            .expect("reconcile"),
        (1, 1)
    );
    assert_eq!(status_of(&w, "orphan"), (TeamStatus::Available, None));
    let ended = w
        .store
        .assignment(&lost.assignment_id)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(ended.state(), AssignmentState::Released);
    assert!(
        w.store
            .active_assignment_of_team("fine")
            .await
            .expect("read")
            .is_some(),
        "a team working its incident is left alone"
    );
    assert_eq!(
        w.engine.reconcile(&w.region, grace).await.expect("again"),
        (0, 0)
    );
}

#[tokio::test]
async fn a_fleet_flush_mid_run_never_yields_two_active_assignments_for_a_team() {
    let w = world().await;
    for index in 0..5 {
        add(
            &w,
            &format!("t{index}"),
            300.0 * f64::from(index + 1),
            &[],
            10,
        );
    }
    for index in 0..4 {
        w.engine
            .assign_team(assign(
                &format!("a{index}"),
                &format!("inc-{index}"),
                &w.region,
                AUTO,
                2,
                &[],
            ))
            .await
            .expect("assign");
    }
    // Redis fails over and loses every claim and counter: all teams look free.
    w.fleet.flush();
    let mut conflicts = 0;
    for index in 4..12 {
        match w
            .engine
            .assign_team(assign(
                &format!("a{index}"),
                &format!("inc-{index}"),
                &w.region,
                AUTO,
                2,
                &[],
            ))
            .await
        {
            Ok(_) => {}
            Err(RoutingError::ClaimConflict) => conflicts += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
        for t in 0..5 {
            let active = w.store.active_assignments(&w.region).await.expect("read");
            let count = active
                .iter()
                .filter(|a| a.team_id == format!("t{t}"))
                .count();
            assert!(count <= 1, "team t{t} has {count} active assignments");
        }
    }
    assert!(conflicts > 0, "stale tokens after the flush were refused");
    // Every claim the record refused was undone: each busy team has its recorded assignment.
    for team in w.fleet.busy_teams(&w.region).await.expect("busy") {
        let recorded = w
            .store
            .active_assignment_of_team(&team.snapshot.team_id)
            .await
            .expect("read")
            .expect("busy team is recorded");
        assert_eq!(Some(recorded.incident_id), team.incident_id);
    }
}

#[tokio::test]
async fn the_bounded_read_widens_until_the_best_team_is_certain() {
    let w = world().await;
    // The 20 nearest teams cannot take a clinician call: the first read (16 teams) finds no
    // eligible one and routing reads further instead of queueing.
    for n in 0..20 {
        add(
            &w,
            &format!("plain-{n:02}"),
            500.0 + f64::from(n) * 10.0,
            &[],
            10,
        );
    }
    add(&w, "clinician-far", 3_000.0, &["clinician"], 10);
    add(&w, "clinician-farther", 3_100.0, &["clinician"], 10);
    let response = w
        .engine
        .assign_team(assign("r1", "inc-1", &w.region, AUTO, 2, &["clinician"]))
        .await
        .expect("assign");
    assert_eq!(response.outcome(), AssignmentOutcome::Assigned);
    assert_eq!(
        response.assignment.expect("assignment").team_id,
        "clinician-far"
    );

    // A preferred capability reorders near-ties, so a team just past the first read can
    // still rank first: routing reads until the best team's tie window is covered.
    let w = world().await;
    add(&w, "fast", 500.0, &[], 10);
    for n in 0..18 {
        add(
            &w,
            &format!("fill-{n:02}"),
            510.0 + f64::from(n) * 10.0,
            &[],
            10,
        );
    }
    add(&w, "peer", 700.0, &["peer"], 10);
    let mut request = assign("r2", "inc-2", &w.region, RECOMMEND, 2, &[]);
    request.preferred_capabilities = vec!["peer".into()];
    let response = w.engine.assign_team(request).await.expect("recommend");
    assert_eq!(response.outcome(), AssignmentOutcome::Recommended);
    assert_eq!(response.candidates[0].team_id, "peer", "{response:?}");
    assert_eq!(response.candidates[1].team_id, "fast");
}

#[tokio::test]
async fn a_first_recommendation_is_remembered_live_and_recorded_when_acted_on() {
    let w = world().await;
    add(&w, "a", 400.0, &[], 10);
    add(&w, "b", 800.0, &[], 10);
    for incident in ["inc-1", "inc-2", "inc-3"] {
        let response = w
            .engine
            .assign_team(assign(
                &format!("r-{incident}"),
                incident,
                &w.region,
                RECOMMEND,
                2,
                &[],
            ))
            .await
            .expect("recommend");
        assert_eq!(response.outcome(), AssignmentOutcome::Recommended);
    }
    // Nothing written to the record: the request lives beside the teams' live state.
    assert!(w.store.incident("inc-1").await.expect("read").is_none());
    assert!(
        w.fleet
            .recommendation("inc-1")
            .await
            .expect("live")
            .is_some()
    );

    // Confirming records the incident and the assignment.
    let confirmed = w
        .engine
        .confirm_assignment(ConfirmAssignmentRequest {
            request_id: "c-1".into(),
            incident_id: "inc-1".into(),
            team_id: "b".into(),
        })
        .await
        .expect("confirm");
    assert_eq!(confirmed.assignment.expect("assignment").team_id, "b");
    let recorded = w
        .store
        .incident("inc-1")
        .await
        .expect("read")
        .expect("recorded");
    assert_eq!(recorded.state, IncidentState::Assigned);
    assert_eq!(recorded.cad_system, "cad-1");

    // Cancelling a recommended incident records it cancelled; it can no longer be confirmed.
    w.engine
        .cancel_routing(CancelRoutingRequest {
            request_id: "x-2".into(),
            incident_id: "inc-2".into(),
            reason: String::new(),
        })
        .await
        .expect("cancel");
    let error = w
        .engine
        .confirm_assignment(ConfirmAssignmentRequest {
            request_id: "c-2".into(),
            incident_id: "inc-2".into(),
            team_id: "a".into(),
        })
        .await
        .expect_err("cancelled");
    assert_eq!(error.reason(), "ROUTING_CANCELLED");

    // An hour on, an unconfirmed recommendation is forgotten: routing must be asked again.
    w.clock.advance(Duration::from_secs(3_601));
    let error = w
        .engine
        .confirm_assignment(ConfirmAssignmentRequest {
            request_id: "c-3".into(),
            incident_id: "inc-3".into(),
            team_id: "a".into(),
        })
        .await
        .expect_err("expired");
    assert_eq!(error.reason(), "INCIDENT_NOT_FOUND");
}

/// The events of the record for one incident, in order.
async fn events_of(w: &World, incident_id: &str) -> Vec<relay_proto::routing::AssignmentEvent> {
    w.store
        .events(&w.region, 0, 1000)
        .await
        .expect("events")
        .into_iter()
        .map(|(_, e)| e)
        .filter(|e| e.incident_id == incident_id)
        .collect()
}

/// The end cause of the assignment in an incident's last event of `kind`.
async fn event_end_cause(
    w: &World,
    incident_id: &str,
    kind: AssignmentEventKind,
) -> AssignmentEndCause {
    events_of(w, incident_id)
        .await
        .into_iter()
        .rfind(|e| e.kind() == kind)
        .and_then(|e| e.assignment)
        .expect("the event carries the assignment")
        .end_cause()
}

async fn assigned(w: &World, request_id: &str, incident_id: &str) -> Assignment {
    let response = w
        .engine
        .assign_team(assign(request_id, incident_id, &w.region, AUTO, 2, &[]))
        .await
        .expect("assign");
    response.assignment.expect("assigned")
}

async fn stored(w: &World, assignment: &Assignment) -> Assignment {
    w.engine
        .get_assignment(GetAssignmentRequest {
            assignment_id: assignment.assignment_id.clone(),
        })
        .await
        .expect("get")
}

#[tokio::test]
async fn every_assignment_that_goes_out_says_why_it_ended() {
    let w = world().await;
    add(&w, "t1", 400.0, &[], 10);

    // ReleaseTeam is RELEASED, even when its caller's reason reads "team cleared".
    let first = assigned(&w, "r1", "inc-1").await;
    assert_eq!(first.end_cause(), AssignmentEndCause::Unspecified);
    let released = w
        .engine
        .release_team(ReleaseTeamRequest {
            request_id: "rel-1".into(),
            assignment_id: first.assignment_id.clone(),
            reason: "team cleared".into(),
        })
        .await
        .expect("release")
        .assignment
        .expect("assignment");
    assert_eq!(released.end_reason, "team cleared");
    assert_eq!(released.end_cause(), AssignmentEndCause::Released);
    assert_eq!(stored(&w, &first).await, released);
    let kind = AssignmentEventKind::Released;
    assert_eq!(
        event_end_cause(&w, "inc-1", kind).await,
        AssignmentEndCause::Released
    );

    // CancelRouting is CANCELLED.
    let second = assigned(&w, "r2", "inc-2").await;
    let cancelled = w
        .engine
        .cancel_routing(CancelRoutingRequest {
            request_id: "x-2".into(),
            incident_id: "inc-2".into(),
            reason: String::new(),
        })
        .await
        .expect("cancel")
        .assignment
        .expect("assignment");
    assert_eq!(cancelled.end_cause(), AssignmentEndCause::Cancelled);
    assert_eq!(stored(&w, &second).await, cancelled);
    assert_eq!(
        event_end_cause(&w, "inc-2", AssignmentEventKind::Cancelled).await,
        AssignmentEndCause::Cancelled
    );

    // The team clearing to AVAILABLE is TEAM_CLEARED.
    let third = assigned(&w, "r3", "inc-3").await;
    w.fleet.set_status("t1", TeamStatus::OnScene);
    w.fleet.set_status("t1", TeamStatus::Available);
    w.engine
        .on_team_available(&w.region, "t1")
        .await
        .expect("cleared");
    let cleared = stored(&w, &third).await;
    assert_eq!(cleared.end_cause(), AssignmentEndCause::TeamCleared);
    assert_eq!(
        event_end_cause(&w, "inc-3", kind).await,
        AssignmentEndCause::TeamCleared
    );

    // Reconciliation ending an assignment whose team is no longer on it: TEAM_CLEARED too.
    let fourth = assigned(&w, "r4", "inc-4").await;
    w.fleet
        .upsert_team(&w.region, team("t1", 400.0, &[], 10, w.clock.now()));
    w.clock.advance(Duration::from_secs(31));
    let grace = Duration::from_secs(30);
    let repaired = w
        .engine
        .reconcile(&w.region, grace)
        .await
        .expect("reconcile");
    assert_eq!(repaired, (0, 1));
    assert_eq!(
        stored(&w, &fourth).await.end_cause(),
        AssignmentEndCause::TeamCleared
    );
    assert_eq!(
        event_end_cause(&w, "inc-4", kind).await,
        AssignmentEndCause::TeamCleared
    );
}

#[tokio::test]
async fn a_lost_live_state_ends_assignments_as_such_and_never_as_the_team_clearing() {
    let w = world().await;
    add(&w, "t1", 400.0, &[], 10);
    add(&w, "t2", 800.0, &[], 10);
    let first = assigned(&w, "r1", "inc-1").await;
    let second = assigned(&w, "r2", "inc-2").await;
    assert_eq!(
        (first.team_id.as_str(), second.team_id.as_str()),
        ("t1", "t2")
    );
    w.clock.advance(Duration::from_secs(1));
    // Redis loses the live state; each team's live record is rebuilt after its assignment.
    w.fleet.flush();
    // A team back AVAILABLE before reconciliation ran did not clear its call either.
    w.engine
        .on_team_available(&w.region, "t1")
        .await
        .expect("available");
    let lost = AssignmentEndCause::LiveStateLost;
    let ended = stored(&w, &first).await;
    assert_eq!(
        (ended.end_cause(), ended.end_reason.as_str()),
        (lost, "live state lost")
    );
    w.clock.advance(Duration::from_secs(31));
    let grace = Duration::from_secs(30);
    let repaired = w
        .engine
        .reconcile(&w.region, grace)
        .await
        .expect("reconcile");
    assert_eq!(repaired, (0, 1));
    assert_eq!(stored(&w, &second).await.end_cause(), lost);
    let kind = AssignmentEventKind::Released;
    assert_eq!(event_end_cause(&w, "inc-2", kind).await, lost);
    // The incident is not queued again (the team may be on scene): it waits for a dispatcher.
    let incident = w
        .store
        .incident("inc-2")
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(incident.state, IncidentState::Routed);
    let restore = |request_id: &str, incident_id: &str, team_id: &str| RestoreAssignmentRequest {
        request_id: request_id.to_owned(),
        incident_id: incident_id.to_owned(),
        team_id: team_id.to_owned(),
    };
    let refused = |result: Result<_, RoutingError>| result.expect_err("refused").reason();
    // Only the team whose call it was may restore it, and only a known incident.
    let not_its_own = w
        .engine
        .restore_assignment(restore("x1", "inc-2", "t1"))
        .await;
    assert_eq!(refused(not_its_own), "NOTHING_TO_RESTORE");
    let unknown = w
        .engine
        .restore_assignment(restore("x2", "inc-9", "t1"))
        .await;
    assert_eq!(refused(unknown), "INCIDENT_NOT_FOUND");
    let invalid = w.engine.restore_assignment(restore("x3", "", "t1")).await;
    assert_eq!(refused(invalid), "INVALID_FIELD");
    // This fleet's flush also reset the claim counters (a failover, not availability's
    // rebuild, which raises them): the record refuses the stale token and nothing changes.
    let stale = w
        .engine
        .restore_assignment(restore("x4", "inc-2", "t2"))
        .await;
    assert_eq!(refused(stale), "CLAIM_CONFLICT");
    assert_eq!(status_of(&w, "t2"), (TeamStatus::Available, None));
    assert!(
        w.store
            .active_assignment_of_incident("inc-2")
            .await
            .expect("read")
            .is_none()
    );
    // A released call is not restorable either (a team never claimed, since the flush reset
    // the others' counters).
    w.fleet.set_status("t1", TeamStatus::OffDuty);
    w.fleet.set_status("t2", TeamStatus::OffDuty);
    add(&w, "t3", 1_200.0, &[], 10);
    let third = assigned(&w, "r3", "inc-3").await;
    w.engine
        .release_team(ReleaseTeamRequest {
            request_id: "rel-3".into(),
            assignment_id: third.assignment_id.clone(),
            reason: String::new(),
        })
        .await
        .expect("release");
    let released = w
        .engine
        .restore_assignment(restore("x5", "inc-3", &third.team_id))
        .await;
    assert_eq!(refused(released), "NOTHING_TO_RESTORE");
}

#[tokio::test]
async fn the_cad_incident_number_travels_with_every_message_of_the_incident() {
    let w = world().await;
    let request = |request_id: &str, incident_id: &str, cad: &str| {
        common::with_cad_incident_id(
            assign(request_id, incident_id, &w.region, AUTO, 1, &[]),
            cad,
        )
    };
    // At most 128 characters.
    let error = w
        .engine
        .assign_team(request("r0", "inc-long", &"9".repeat(129)))
        .await
        .expect_err("too long");
    assert_eq!(error.reason(), "INVALID_FIELD");
    assert!(error.to_string().contains("cad_incident_id"), "{error}");
    assert!(w.store.incident("inc-long").await.expect("read").is_none());

    // No team: queued, then escalated.
    let queued = w
        .engine
        .assign_team(request("r1", "inc-e", "CAD-E"))
        .await
        .expect("queue");
    assert_eq!(queued.queued.expect("queued").cad_incident_id, "CAD-E");
    w.clock.advance(Duration::from_secs(301));
    assert_eq!(w.engine.escalate_due().await.expect("escalate"), 1);

    // Queued; a second AssignTeam keeps the first number.
    let cad_a = "A".repeat(128);
    w.engine
        .assign_team(request("r2", "inc-a", &cad_a))
        .await
        .expect("queue");
    let again = w
        .engine
        .assign_team(request("r3", "inc-a", "CAD-OTHER"))
        .await
        .expect("queue again");
    assert_eq!(again.queued.expect("queued").cad_incident_id, cad_a);
    let listed = w
        .engine
        .list_queue(ListQueueRequest {
            region: w.region.clone(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .expect("list");
    assert_eq!(listed.queued_incidents[0].cad_incident_id, cad_a);

    // A team frees up: the queue's assignment carries it.
    add(&w, "t1", 400.0, &[], 10);
    let from_queue = w
        .engine
        .on_team_available(&w.region, "t1")
        .await
        .expect("drain")
        .expect("assigned");
    assert_eq!(from_queue.source(), AssignmentSource::Queue);
    assert_eq!(from_queue.cad_incident_id, cad_a);
    assert_eq!(stored(&w, &from_queue).await.cad_incident_id, cad_a);

    // Queued behind the busy team, then cancelled: the dequeued entry carries it.
    w.engine
        .assign_team(request("r4", "inc-c", "CAD-C"))
        .await
        .expect("queue");
    let cancel = |request_id: &str| CancelRoutingRequest {
        request_id: request_id.into(),
        incident_id: "inc-c".into(),
        reason: String::new(),
    };
    let dequeued = w.engine.cancel_routing(cancel("x1")).await.expect("cancel");
    assert_eq!(
        dequeued.dequeued.expect("dequeued").cad_incident_id,
        "CAD-C"
    );

    // Released.
    let released = w
        .engine
        .release_team(ReleaseTeamRequest {
            request_id: "rel".into(),
            assignment_id: from_queue.assignment_id.clone(),
            reason: String::new(),
        })
        .await
        .expect("release");
    assert_eq!(released.assignment.expect("ended").cad_incident_id, cad_a);

    // Routed anew after its cancel: assigned at once, still with its first number; then
    // its assignment cancelled.
    let anew = w
        .engine
        .assign_team(request("r5", "inc-c", "CAD-NEW"))
        .await
        .expect("assign");
    assert_eq!(anew.assignment.expect("assigned").cad_incident_id, "CAD-C");
    let cancelled = w.engine.cancel_routing(cancel("x2")).await.expect("cancel");
    assert_eq!(
        cancelled.assignment.expect("cancelled").cad_incident_id,
        "CAD-C"
    );

    // A first recommendation is not recorded: confirming it records its number.
    let mut recommend = request("r6", "inc-r", "CAD-R");
    recommend.mode = RECOMMEND.into();
    w.engine.assign_team(recommend).await.expect("recommend");
    let confirmed = w
        .engine
        .confirm_assignment(ConfirmAssignmentRequest {
            request_id: "c1".into(),
            incident_id: "inc-r".into(),
            team_id: "t1".into(),
        })
        .await
        .expect("confirm")
        .assignment
        .expect("assignment");
    assert_eq!(confirmed.cad_incident_id, "CAD-R");

    // Every event of each incident carries its number, and so do the assignment and queue
    // entry inside it.
    use AssignmentEventKind::{Assigned, Cancelled, Escalated, Queued, Released};
    for (incident, cad, kinds) in [
        ("inc-e", "CAD-E", vec![Queued, Escalated]),
        (
            "inc-a",
            cad_a.as_str(),
            vec![Queued, Queued, Assigned, Released],
        ),
        (
            "inc-c",
            "CAD-C",
            vec![Queued, Cancelled, Assigned, Cancelled],
        ),
        ("inc-r", "CAD-R", vec![Assigned]),
    ] {
        let events = events_of(&w, incident).await;
        let seen: Vec<AssignmentEventKind> = events.iter().map(|e| e.kind()).collect();
        assert_eq!(seen, kinds, "{incident}");
        for event in events {
            assert_eq!(event.cad_incident_id, cad, "{incident}: {event:?}");
            if let Some(a) = &event.assignment {
                assert_eq!(a.cad_incident_id, cad, "{incident}: {event:?}");
            }
            if let Some(q) = &event.queued {
                assert_eq!(q.cad_incident_id, cad, "{incident}: {event:?}");
            }
        }
    }
}

/// A team of availability's Redis store `meters_north` of the incident, brought to `status`
/// the way a team's terminal would (a busy team is claimed by another incident first).
async fn redis_team(
    store: &relay_fleet::RedisTeamStore,
    region: &str,
    id: &str,
    meters_north: f64,
    caps: &[&str],
    status: TeamStatus,
) {
    use relay_fleet::{LocationReport, TeamStore, model::TeamDefinition};
    let now = chrono::Utc::now();
    let definition = TeamDefinition {
        team_id: id.into(),
        display_name: format!("Team {id}"),
        region: region.into(),
        capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
        shift_ends_at: None,
    };
    store
        .upsert_team(&definition, None, now)
        .await
        .expect("upsert");
    let position = team(id, meters_north, caps, 0, now)
        .position
        .expect("placed");
    let report = LocationReport {
        team_id: id.into(),
        position: Position {
            latitude: position.point.latitude,
            longitude: position.point.longitude,
        },
        recorded_at: now,
        heading_degrees: None,
        speed_meters_per_second: None,
        accuracy_meters: None,
    };
    store
        .report_locations(&[report], now)
        .await
        .expect("report");
    let set = |status: TeamStatus, incident: &'static str| async move {
        store
            .set_status(id, status, incident, None, now)
            .await
            .expect("status");
    };
    match status {
        TeamStatus::OffDuty => {}
        TeamStatus::OutOfService => set(TeamStatus::OutOfService, "").await,
        TeamStatus::Available => set(TeamStatus::Available, "").await,
        busy => {
            set(TeamStatus::Available, "").await;
            store
                .claim(region, id, "elsewhere", None, now, None)
                .await
                .expect("claimed by another incident");
            if busy != TeamStatus::Dispatched {
                set(busy, "elsewhere").await;
            }
        }
    }
}

#[tokio::test]
async fn every_team_nearer_than_the_chosen_one_is_listed_with_why_it_lost() {
    // The production fleet: availability's store in Redis, where busy teams are not in the
    // GEO set of AVAILABLE teams that ranking reads first.
    let prefix = relay_tests::unique_name("routing_nearer");
    let region = relay_tests::unique_name("region");
    let client = redis::Client::open(relay_tests::redis_url()).expect("redis");
    let store = relay_fleet::RedisTeamStore::new(
        client,
        relay_fleet::Keyspace::new(prefix.as_str()),
        Duration::from_secs(60),
    )
    .expect("store");
    for (id, meters, caps, status) in [
        ("en-route", 300.0, &["clinician"][..], TeamStatus::EnRoute),
        (
            "out-of-service",
            500.0,
            &["clinician"],
            TeamStatus::OutOfService,
        ),
        ("on-scene-peer", 700.0, &["peer"], TeamStatus::OnScene),
        ("off-duty", 200.0, &["clinician"], TeamStatus::OffDuty),
        ("chosen", 1_000.0, &["clinician"], TeamStatus::Available),
        ("farther", 1_500.0, &["clinician"], TeamStatus::Available),
        (
            "busy-beyond",
            5_000.0,
            &["clinician"],
            TeamStatus::Dispatched,
        ),
    ] {
        redis_team(&store, &region, id, meters, caps, status).await;
    }
    let database = relay_tests::TestDatabase::new().await;
    let record = common::postgres_store(&database).await;
    let fleet = Arc::new(store);
    let engine = relay_routing::engine::Engine::new(
        record,
        fleet,
        Arc::new(relay_runtime::clock::SystemClock),
        relay_routing::settings::RoutingSettings::default(),
        relay_runtime::paging::PageTokens::new(b"k"),
    );
    let request = assign("r1", "inc-1", &region, RECOMMEND, 2, &["clinician"]);
    let response = engine.assign_team(request).await.expect("recommend");
    let listed: Vec<(&str, ExclusionReason)> = response
        .candidates
        .iter()
        .map(|c| (c.team_id.as_str(), c.exclusion_reason()))
        .collect();
    assert_eq!(
        listed,
        [
            ("chosen", ExclusionReason::Unspecified),
            ("farther", ExclusionReason::Unspecified),
            ("en-route", ExclusionReason::NotAvailable),
            ("out-of-service", ExclusionReason::NotAvailable),
            // Capabilities come first in the contract's order of constraints.
            ("on-scene-peer", ExclusionReason::MissingCapability),
        ],
        "every team nearer than the chosen one, with its reason; the off-duty team and the \
         busy team past the chosen one's reach are not read"
    );
    let en_route = &response.candidates[2];
    assert!(
        en_route.rationale.contains("status EN_ROUTE"),
        "{}",
        en_route.rationale
    );

    // Assigned, the rationale names the nearest team that lost and why.
    let response = engine
        .assign_team(assign("r2", "inc-2", &region, AUTO, 2, &["clinician"]))
        .await
        .expect("assign");
    assert_eq!(response.assignment.expect("assigned").team_id, "chosen");
    assert!(
        response
            .rationale
            .contains("Team en-route was nearer but status EN_ROUTE"),
        "{}",
        response.rationale
    );
    relay_tests::redis_delete_prefix(&prefix).await;
}

/// A record written before routing took the runtime's fingerprint holds the fingerprint's
/// preimage (the RPC, a zero byte, the request's encoding): a retry across the upgrade still
/// gets the remembered answer, and another request under its id is still refused.
#[tokio::test]
async fn a_request_recorded_before_the_shared_fingerprint_still_replays() {
    use prost::Message;
    let w = world().await;
    let request = assign("old-1", "inc-old", &w.region, AUTO, 2, &[]);
    let mut preimage = b"AssignTeam\0".to_vec();
    request.encode(&mut preimage).expect("encode");
    let remembered = AssignTeamResponse {
        rationale: "remembered".into(),
        ..AssignTeamResponse::default()
    };
    w.store
        .write(Write {
            region: w.region.clone(),
            request: Some(RequestRecord {
                request_id: "old-1".into(),
                fingerprint: preimage,
                response: remembered.encode_to_vec(),
            }),
            ..Write::default()
        })
        .await
        .expect("old record");
    let again = w.engine.assign_team(request.clone()).await.expect("retry");
    assert_eq!(again, remembered);
    let mut other = request;
    other.priority = 1;
    let error = w.engine.assign_team(other).await.expect_err("reused");
    assert_eq!(error.reason(), "REQUEST_ID_REUSED");
}
