//! The outbox worker: delivers the routing requests that changes committed (AssignTeam,
//! CancelRouting, ReleaseTeam), retries with backoff until routing answers, and records the
//! answer on the incident in the transaction that settles the row.

use std::{sync::Arc, time::Duration};

use prost::Message;
use relay_proto::{
    common::UnservedReason,
    intake::{Incident, IncidentEventKind, IncidentState, RoutingOutcome, RoutingState},
    routing::{
        AssignTeamRequest, AssignTeamResponse, AssignmentOutcome, CancelRoutingRequest,
        ReleaseTeamRequest,
    },
};
use tonic::Code;

use super::{ApplyError, Intake, MAX_CONFLICTS};
use crate::{
    lifecycle::{self, routing_state},
    settings::IntakeSettings,
    store::{
        Change, ChangeOutcome, OutboxItem, OutboxKind, StoreError, StoredIncident, timestamp_of,
    },
};

impl Intake {
    /// Delivers one outbox row to routing and records the outcome, or schedules a retry.
    pub async fn deliver(&self, item: OutboxItem) {
        self.deliver_known(item, None).await;
    }

    /// As [`Self::deliver`], starting from the incident as the caller knows it (saving a read;
    /// a stale copy only costs a retry). Returns the incident when the outcome changed it.
    pub(super) async fn deliver_known(
        &self,
        item: OutboxItem,
        known: Option<StoredIncident>,
    ) -> Option<StoredIncident> {
        let result = self.call_routing(&item).await;
        let recorded = match result {
            Ok(answer) => self.record_delivery(&item, answer, None, known).await,
            Err(status) if retryable(status.code()) => {
                let delay = backoff(&self.settings, item.attempts);
                let delay = self.clock.elapsed_in(delay);
                let next = self.now() + i64::try_from(delay.as_micros()).unwrap_or(i64::MAX);
                tracing::warn!(
                    incident_id = %item.incident_id,
                    kind = item.kind.as_str(),
                    attempts = item.attempts,
                    code = ?status.code(),
                    retry_in_ms = delay.as_millis(),
                    "routing delivery failed; will retry"
                );
                self.store
                    .reschedule_outbox(&item.outbox_id, next, &format!("{:?}", status.code()))
                    .await
                    .map(|()| None)
                    .map_err(ApplyError::from)
            }
            // The assignment already ended (the team cleared first): nothing left to release.
            Err(status)
                if matches!(item.kind, OutboxKind::Release)
                    && status.code() == tonic::Code::FailedPrecondition =>
            {
                tracing::debug!(
                    incident_id = %item.incident_id,
                    "assignment already ended; nothing to release"
                );
                self.record_delivery(&item, None, None, known).await
            }
            Err(status) => {
                tracing::error!(
                    incident_id = %item.incident_id,
                    kind = item.kind.as_str(),
                    code = ?status.code(),
                    "routing refused the request"
                );
                self.record_delivery(&item, None, Some(status), known).await
            }
        };
        match recorded {
            Ok(changed) => changed,
            Err(error) => {
                tracing::error!(incident_id = %item.incident_id, error = %error, "recording a routing outcome failed; the row will be retried");
                None
            }
        }
    }

    /// Sends an outbox row's request to routing, with the configured deadline: routing's
    /// answer to an AssignTeam, None for the other calls.
    async fn call_routing(
        &self,
        item: &OutboxItem,
    ) -> Result<Option<AssignTeamResponse>, tonic::Status> {
        let timeout = IntakeSettings::ms(self.settings.routing_timeout_ms);
        let mut client = self.routing.clone();
        match item.kind {
            OutboxKind::Assign => client
                .assign_team(request::<AssignTeamRequest>(item, timeout)?)
                .await
                .map(|r| Some(r.into_inner())),
            OutboxKind::Cancel => client
                .cancel_routing(request::<CancelRoutingRequest>(item, timeout)?)
                .await
                .map(|_| None),
            OutboxKind::Release => client
                .release_team(request::<ReleaseTeamRequest>(item, timeout)?)
                .await
                .map(|_| None),
        }
    }

    async fn record_delivery(
        &self,
        item: &OutboxItem,
        answer: Option<AssignTeamResponse>,
        refused: Option<tonic::Status>,
        mut known: Option<StoredIncident>,
    ) -> Result<Option<StoredIncident>, ApplyError> {
        let assigned = answer
            .as_ref()
            .filter(|a| a.outcome == AssignmentOutcome::Assigned as i32)
            .and_then(|a| a.assignment.as_ref());
        if item.kind == OutboxKind::Assign
            && let Some(a) = assigned
        {
            self.settle_team(&a.team_id, &item.incident_id).await?;
        }
        for _ in 0..MAX_CONFLICTS {
            let now = self.now();
            let stored = match known.take() {
                Some(known) => Some(known),
                None => self.store.get_incident(&item.incident_id).await?,
            };
            let pending = stored.as_ref().is_some_and(|s| {
                s.incident.state == IncidentState::Open as i32
                    && routing_state(&s.incident) == RoutingState::Pending
            });
            let plan = match &stored {
                Some(before) if pending && item.kind == OutboxKind::Assign => {
                    self.answer_plan(before, answer.as_ref(), refused.as_ref(), now)
                        .await?
                }
                _ => None,
            };
            let Some(plan) = plan else {
                // Nothing to change: settle the row alone.
                let change = Change {
                    settles_outbox: Some(item.outbox_id.clone()),
                    now,
                    ..Change::default()
                };
                self.store.apply_change(change).await?;
                return Ok(None);
            };
            let changed = plan.next.clone();
            match self
                .apply_plan(plan, None, Some(&item.outbox_id), now)
                .await?
            {
                ChangeOutcome::Conflict => {}
                ChangeOutcome::Applied(_) => return Ok(Some(changed)),
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    /// What routing's answer to an AssignTeam does to the incident still PENDING it: the
    /// assignment, a queue or recommendation, or, when routing refused it, an escalation.
    async fn answer_plan(
        &self,
        before: &StoredIncident,
        answer: Option<&AssignTeamResponse>,
        refused: Option<&tonic::Status>,
        now: i64,
    ) -> Result<Option<lifecycle::Plan>, StoreError> {
        if let Some(answer) = answer {
            let (outcome, kind) = outcome_of(answer, now);
            return Ok(match (kind, &answer.assignment) {
                (IncidentEventKind::Assigned, Some(a)) => {
                    let kept = self
                        .store
                        .observations(&before.incident.incident_id)
                        .await?;
                    lifecycle::assigned(before, a, outcome, &kept, now)
                }
                _ => {
                    let source = answer.queued.as_ref().and_then(|q| q.queued_time);
                    Some(lifecycle::routed(before, outcome, kind, source, now))
                }
            });
        }
        let Some(status) = refused else {
            return Ok(None);
        };
        let outcome = RoutingOutcome {
            state: RoutingState::Escalated as i32,
            unserved_reason: UnservedReason::RoutingRefused as i32,
            rationale: format!(
                "routing refused the incident ({:?}); send a traditional response",
                status.code()
            ),
            ..before.incident.routing.clone().unwrap_or_default()
        };
        Ok(Some(lifecycle::routed(
            before,
            outcome,
            IncidentEventKind::Escalated,
            None,
            now,
        )))
    }

    /// Claims due outbox rows and delivers them; returns how many were claimed.
    ///
    /// # Errors
    /// When storage fails.
    pub async fn deliver_due(self: &Arc<Self>, limit: i64) -> Result<usize, StoreError> {
        let now = self.now();
        let items = self
            .store
            .claim_outbox(now, now + self.lease_micros(), limit)
            .await?;
        let count = items.len();
        let mut tasks = tokio::task::JoinSet::new();
        for item in items {
            let intake = Arc::clone(self);
            tasks.spawn(async move { intake.deliver(item).await });
        }
        while tasks.join_next().await.is_some() {}
        Ok(count)
    }

    /// The outbox worker: delivers due rows until `shutdown`.
    pub async fn run_outbox(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let poll = IntakeSettings::ms(self.settings.outbox_poll_ms);
        loop {
            let delivered = self.deliver_due(64).await;
            self.passes
                .outbox
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match delivered {
                Ok(64) => continue,
                Ok(_) => {}
                Err(error) => {
                    tracing::error!(error = %error, "outbox worker could not read the outbox")
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.outbox_wake.notified() => {}
                () = tokio::time::sleep(poll) => {}
            }
        }
    }
}

// ---- The rows a change adds -----------------------------------------------------------------

fn outbox_id(now: i64) -> String {
    format!("{now:020}-{}", uuid::Uuid::new_v4().simple())
}

fn outbox_item(incident: &Incident, kind: OutboxKind, payload: Vec<u8>, now: i64) -> OutboxItem {
    OutboxItem {
        outbox_id: outbox_id(now),
        incident_id: incident.incident_id.clone(),
        kind,
        payload,
        attempts: 0,
        next_attempt_at: now,
    }
}

/// The AssignTeam request of `incident` (its `attempt`-th: the request_id routing dedupes on).
pub(crate) fn assign_item(incident: &Incident, attempt: i64, now: i64) -> OutboxItem {
    let triage = incident.triage.clone().unwrap_or_default();
    let mut required = incident.required_capabilities.clone();
    for tag in &triage.required_capabilities {
        if !required.contains(tag) {
            required.push(tag.clone());
        }
    }
    let request = AssignTeamRequest {
        request_id: format!("assign-{}-{attempt}", incident.incident_id),
        incident_id: incident.incident_id.clone(),
        region: incident.region.clone(),
        location: incident.location,
        required_capabilities: required,
        preferred_capabilities: incident.preferred_capabilities.clone(),
        priority: incident.priority,
        mode: incident.routing_mode,
        expected_duration_seconds: None,
        cad_system: incident.cad_system.clone(),
        cad_incident_id: incident.cad_incident_id.clone(),
    };
    outbox_item(incident, OutboxKind::Assign, request.encode_to_vec(), now)
}

/// The CancelRouting request of `incident` at its revision.
pub(crate) fn cancel_item(incident: &Incident, reason: &str, now: i64) -> OutboxItem {
    let request = CancelRoutingRequest {
        request_id: format!("cancel-{}-{}", incident.incident_id, incident.revision),
        incident_id: incident.incident_id.clone(),
        reason: reason.to_owned(),
    };
    outbox_item(incident, OutboxKind::Cancel, request.encode_to_vec(), now)
}

/// The ReleaseTeam request of `incident`'s assignment at its revision.
pub(crate) fn release_item(incident: &Incident, assignment_id: &str, now: i64) -> OutboxItem {
    let request = ReleaseTeamRequest {
        request_id: format!("release-{}-{}", incident.incident_id, incident.revision),
        assignment_id: assignment_id.to_owned(),
        reason: "incident closed".to_owned(),
    };
    outbox_item(incident, OutboxKind::Release, request.encode_to_vec(), now)
}

fn outcome_of(answer: &AssignTeamResponse, now: i64) -> (RoutingOutcome, IncidentEventKind) {
    let mut routing = RoutingOutcome {
        candidates: answer.candidates.clone(),
        rationale: answer.rationale.clone(),
        update_time: Some(timestamp_of(now)),
        ..RoutingOutcome::default()
    };
    match AssignmentOutcome::try_from(answer.outcome).unwrap_or(AssignmentOutcome::Unspecified) {
        AssignmentOutcome::Assigned => {
            let a = answer.assignment.clone().unwrap_or_default();
            routing.state = RoutingState::Assigned as i32;
            routing.assignment_id = a.assignment_id;
            routing.team_id = a.team_id;
            routing.eta_seconds = a.eta_seconds;
            routing.distance_meters = a.distance_meters;
            (routing, IncidentEventKind::Assigned)
        }
        AssignmentOutcome::Recommended => {
            routing.state = RoutingState::Recommended as i32;
            if let Some(top) = answer.candidates.iter().find(|c| c.eligible) {
                routing.team_id.clone_from(&top.team_id);
                routing.eta_seconds = top.eta_seconds;
                routing.distance_meters = top.distance_meters;
            }
            (routing, IncidentEventKind::Recommended)
        }
        AssignmentOutcome::Queued | AssignmentOutcome::Unspecified => {
            routing.state = RoutingState::Queued as i32;
            routing.unserved_reason = answer.unserved_reason;
            routing.escalate_time = answer.queued.as_ref().and_then(|q| q.escalate_time);
            (routing, IncidentEventKind::Queued)
        }
    }
}

/// The request of an outbox row, with its deadline.
fn request<Q: Message + Default>(
    item: &OutboxItem,
    timeout: Duration,
) -> Result<tonic::Request<Q>, tonic::Status> {
    let request =
        Q::decode(item.payload.as_slice()).map_err(|e| tonic::Status::internal(e.to_string()))?;
    let mut call = tonic::Request::new(request);
    call.set_timeout(timeout);
    Ok(call)
}

fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::Cancelled
            | Code::Unknown
            | Code::Internal
            | Code::Unauthenticated
    )
}

/// Exponential backoff with jitter: base * 2^(attempts-1), capped, then a random half to full.
fn backoff(settings: &IntakeSettings, attempts: i32) -> Duration {
    let exponent = u32::try_from(attempts.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    let ceiling = settings
        .retry_base_ms
        .saturating_mul(1u64 << exponent)
        .min(settings.retry_max_ms)
        .max(1);
    let jittered = rand::random_range(ceiling / 2..=ceiling);
    Duration::from_millis(jittered)
}
