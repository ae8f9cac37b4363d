//! What intake learns from upstream: routing's assignment events and availability's team
//! events (consumed by `crate::upstream`), applied idempotently by event id, each as one
//! change with the event it consumes; and settling a team's previous call before recording
//! its next assignment.

use relay_proto::{
    common::TeamStatus,
    routing::{AssignmentEvent, AssignmentEventKind, AssignmentState, GetAssignmentRequest},
};
use tonic::Code;

use super::{ApplyError, Intake, MAX_CONFLICTS};
use crate::{
    lifecycle,
    settings::IntakeSettings,
    store::{Change, ChangeOutcome, Consumed, StoreError, StoredIncident, micros_of},
};

impl Intake {
    /// Records one routing assignment event (idempotent by event id).
    ///
    /// # Errors
    /// When storage fails, or routing cannot be asked about a team's previous assignment
    /// (the event is not consumed; the consumer retries it).
    pub async fn apply_assignment_event(
        &self,
        region: &str,
        upstream: &AssignmentEvent,
    ) -> Result<(), ApplyError> {
        let consumed = Consumed {
            source: "routing",
            region: region.to_owned(),
            event_id: upstream.event_id.clone(),
        };
        let kind = AssignmentEventKind::try_from(upstream.kind)
            .unwrap_or(AssignmentEventKind::Unspecified);
        if kind == AssignmentEventKind::Assigned
            && let Some(a) = &upstream.assignment
        {
            self.settle_team(&a.team_id, &upstream.incident_id).await?;
        }
        for _ in 0..MAX_CONFLICTS {
            let now = self.now();
            let Some(before) = self.store.get_incident(&upstream.incident_id).await? else {
                self.store.record_consumed(&consumed, now).await?;
                return Ok(());
            };
            let plan = self.assignment_plan(&before, kind, upstream, now).await?;
            let Some(plan) = plan else {
                self.store.record_consumed(&consumed, now).await?;
                return Ok(());
            };
            match self.apply_plan(plan, Some(&consumed), None, now).await? {
                ChangeOutcome::Conflict => {}
                _ => return Ok(()),
            }
        }
        Ok(())
    }

    /// What routing's assignment event `upstream` (of `kind`) does to `before`.
    async fn assignment_plan(
        &self,
        before: &StoredIncident,
        kind: AssignmentEventKind,
        upstream: &AssignmentEvent,
        now: i64,
    ) -> Result<Option<lifecycle::Plan>, StoreError> {
        Ok(match kind {
            AssignmentEventKind::Assigned => match &upstream.assignment {
                Some(a) => {
                    let kept = self.store.observations(&upstream.incident_id).await?;
                    // Keep the candidates of the last ranking; the rationale is new.
                    let mut outcome = before.incident.routing.clone().unwrap_or_default();
                    outcome.rationale.clear();
                    lifecycle::assigned(before, a, outcome, &kept, now)
                }
                None => None,
            },
            AssignmentEventKind::Queued => {
                let queued = upstream.queued.as_ref();
                lifecycle::queued(
                    before,
                    upstream.reason,
                    queued.and_then(|q| q.queued_time),
                    queued.and_then(|q| q.escalate_time),
                    now,
                )
            }
            AssignmentEventKind::Escalated => {
                lifecycle::escalated(before, upstream.reason, upstream.event_time, now)
            }
            AssignmentEventKind::Released => upstream
                .assignment
                .as_ref()
                .and_then(|a| lifecycle::ended(before, a, now)),
            AssignmentEventKind::Cancelled => match &upstream.assignment {
                Some(a) => lifecycle::ended(before, a, now),
                None => lifecycle::dequeued(before, now),
            },
            AssignmentEventKind::Unspecified => None,
        })
    }

    /// Writes a [`lifecycle::Plan`] as one change (with the upstream event it consumes, or
    /// the outbox row it settles).
    pub(super) async fn apply_plan(
        &self,
        plan: lifecycle::Plan,
        consumed: Option<&Consumed>,
        settles_outbox: Option<&str>,
        now: i64,
    ) -> Result<ChangeOutcome, StoreError> {
        let queued = !plan.events.is_empty();
        let change = Change {
            expected_revision: plan.next.incident.revision - 1,
            incident: Some(plan.next),
            events: plan.events,
            consumed: consumed.cloned(),
            settles_outbox: settles_outbox.map(str::to_owned),
            observe: plan.observe,
            applied_observations: plan.applied,
            now,
            ..Change::default()
        };
        let outcome = self.store.apply_change(change).await?;
        if queued && matches!(outcome, ChangeOutcome::Applied(_)) {
            self.events_queued();
        }
        Ok(outcome)
    }

    /// Before recording that `team_id` was assigned to `incident_id`, ends every other
    /// incident that still shows that team ASSIGNED, as routing recorded the end of its
    /// assignment (routing refuses a second active assignment of a team, so the previous one
    /// has ended in its record). This keeps the CAD's stream in causal order: the end of a
    /// team's previous call always comes before its next ASSIGNED, whichever of routing's
    /// event, the team's status and the answer to AssignTeam reached intake first.
    pub(super) async fn settle_team(
        &self,
        team_id: &str,
        incident_id: &str,
    ) -> Result<(), ApplyError> {
        for other in self.store.assigned_to_team(team_id).await? {
            if other.incident.incident_id == incident_id {
                continue;
            }
            let assignment_id = other
                .incident
                .routing
                .as_ref()
                .map(|r| r.assignment_id.clone())
                .unwrap_or_default();
            let mut client = self.routing.clone();
            let mut call = tonic::Request::new(GetAssignmentRequest {
                assignment_id: assignment_id.clone(),
            });
            call.set_timeout(IntakeSettings::ms(self.settings.routing_timeout_ms));
            let record = match client.get_assignment(call).await {
                Ok(response) => response.into_inner().assignment,
                Err(status) if status.code() == Code::NotFound => None,
                Err(status) => return Err(ApplyError::Routing(status)),
            };
            let Some(record) = record else {
                tracing::warn!(team_id = %team_id, assignment_id = %assignment_id, "routing has no record of a team's previous assignment");
                continue;
            };
            for _ in 0..MAX_CONFLICTS {
                let now = self.now();
                let Some(before) = self.store.get_incident(&other.incident.incident_id).await?
                else {
                    break;
                };
                let Some(plan) = lifecycle::ended(&before, &record, now) else {
                    if record.state == AssignmentState::Active as i32 {
                        tracing::warn!(team_id = %team_id, assignment_id = %assignment_id, "a team's previous assignment is still active in routing's record");
                    }
                    break;
                };
                if self.apply_plan(plan, None, None, now).await? != ChangeOutcome::Conflict {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Records one availability team event (idempotent by event id). `event_time` is the
    /// team's own time of the change.
    ///
    /// # Errors
    /// When storage fails.
    pub async fn apply_team_event(
        &self,
        region: &str,
        event_id: &str,
        team: &relay_proto::availability::Team,
        event_time: Option<&prost_types::Timestamp>,
    ) -> Result<(), StoreError> {
        let consumed = Consumed {
            source: "availability",
            region: region.to_owned(),
            event_id: event_id.to_owned(),
        };
        let status = TeamStatus::try_from(team.status).unwrap_or(TeamStatus::Unspecified);
        let source_time = micros_of(event_time.or(team.update_time.as_ref()));
        for _ in 0..MAX_CONFLICTS {
            let now = self.now();
            // Only the statuses of a call matter here: the end of a call is routing's to
            // record (see `lifecycle`).
            let target = if lifecycle::busy_step(status).is_none() {
                None
            } else if team.incident_id.is_empty() {
                self.store
                    .assigned_to_team(&team.team_id)
                    .await?
                    .into_iter()
                    .next()
            } else {
                self.store.get_incident(&team.incident_id).await?
            };
            let plan = target.and_then(|before| {
                lifecycle::team_status(&before, &team.team_id, status, source_time, event_id, now)
            });
            let Some(plan) = plan else {
                self.store.record_consumed(&consumed, now).await?;
                return Ok(());
            };
            match self.apply_plan(plan, Some(&consumed), None, now).await? {
                ChangeOutcome::Conflict => {}
                _ => return Ok(()),
            }
        }
        Ok(())
    }
}
