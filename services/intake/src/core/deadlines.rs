//! The deadline job: escalates the calls that waited past a program limit, a NEEDS_REVIEW
//! call nobody decided (REVIEW_TIMEOUT) and a recommendation nobody confirmed
//! (RECOMMENDATION_EXPIRED), so the CAD sends a traditional response.

use relay_proto::{
    common::UnservedReason,
    intake::{Disposition, IncidentEventKind, IncidentState, RoutingOutcome, RoutingState},
};

use super::Intake;
use crate::{
    lifecycle,
    settings::IntakeSettings,
    store::{Change, ChangeOutcome, ListFilter, StoreError, StoredIncident, micros_of},
};

const SECOND: i64 = 1_000_000;

/// The calls each limit applies to: (disposition, 0 for any; routing state; the reason).
const LIMITS: [(Disposition, RoutingState, UnservedReason); 2] = [
    (
        Disposition::NeedsReview,
        RoutingState::NotRouted,
        UnservedReason::ReviewTimeout,
    ),
    (
        Disposition::Unspecified,
        RoutingState::Recommended,
        UnservedReason::RecommendationExpired,
    ),
];

/// The escalation of `stored`, waiting since `since` (micros) under a limit of
/// `limit_seconds`, for `reason`; None while the limit has not passed. A recommendation that
/// expired is also dropped in routing (a CancelRouting in the outbox).
#[must_use]
pub fn plan_escalation(
    stored: &StoredIncident,
    reason: UnservedReason,
    limit_seconds: u64,
    since: i64,
    now: i64,
) -> Option<Change> {
    let incident = &stored.incident;
    let limit = i64::try_from(limit_seconds).unwrap_or(i64::MAX / SECOND);
    if now - since < limit * SECOND {
        return None;
    }
    let rationale = if reason == UnservedReason::ReviewTimeout {
        format!("no dispatcher reviewed the call within {limit} s; send a traditional response")
    } else {
        format!(
            "no dispatcher confirmed the recommendation within {limit} s; send a traditional response"
        )
    };
    let outcome = RoutingOutcome {
        state: RoutingState::Escalated as i32,
        unserved_reason: reason as i32,
        rationale,
        ..incident.routing.clone().unwrap_or_default()
    };
    let mut plan = lifecycle::routed(stored, outcome, IncidentEventKind::Escalated, None, now);
    let mut change = Change {
        expected_revision: incident.revision,
        now,
        ..Change::default()
    };
    if reason == UnservedReason::RecommendationExpired {
        let expired =
            super::outbox::cancel_item(&plan.next.incident, "recommendation expired", now);
        change.outbox.push(expired);
    }
    change.events = std::mem::take(&mut plan.events);
    change.incident = Some(plan.next);
    Some(change)
}

impl Intake {
    /// How long `stored` may wait for `reason`'s decision (seconds), and since when it waits
    /// (micros): triage for a review, the recommendation for a confirmation.
    fn waiting(&self, stored: &StoredIncident, reason: UnservedReason) -> (u64, i64) {
        let incident = &stored.incident;
        let region = &incident.region;
        if reason == UnservedReason::ReviewTimeout {
            let triaged = incident
                .timeline
                .as_ref()
                .and_then(|t| t.triaged.as_ref())
                .and_then(|t| t.record_time.as_ref())
                .or(incident.create_time.as_ref());
            let wait = self
                .programs
                .review_wait_seconds(region, self.settings.review_wait_seconds);
            (wait, micros_of(triaged))
        } else {
            let recommended = incident
                .routing
                .as_ref()
                .and_then(|r| r.update_time.as_ref());
            let expiry = self
                .programs
                .recommendation_expiry_seconds(region, self.settings.recommendation_expiry_seconds);
            (expiry, micros_of(recommended))
        }
    }

    /// Escalates the calls that waited past a program limit: a NEEDS_REVIEW call nobody
    /// decided within the region's review wait (REVIEW_TIMEOUT), and a recommendation nobody
    /// confirmed within the region's expiry (RECOMMENDATION_EXPIRED; routing is told to drop
    /// it). Each escalation is an ESCALATED event with the reason, so the CAD sends a
    /// traditional response. Returns how many were escalated.
    ///
    /// # Errors
    /// When storage fails.
    pub async fn run_deadlines_once(&self) -> Result<usize, StoreError> {
        let now = self.now();
        let mut escalated = 0;
        for (disposition, routing_state, reason) in LIMITS {
            let filter = ListFilter {
                state: IncidentState::Open as i32,
                disposition: disposition as i32,
                routing_state: routing_state as i32,
                limit: 500,
                ..ListFilter::default()
            };
            for stored in self.store.list_incidents(&filter).await? {
                let (limit, since) = self.waiting(&stored, reason);
                let Some(change) = plan_escalation(&stored, reason, limit, since, now) else {
                    continue;
                };
                // A conflict means someone acted on the call meanwhile: the next round sees.
                if let ChangeOutcome::Applied(_) = self.store.apply_change(change).await? {
                    escalated += 1;
                    tracing::warn!(incident_id = %stored.incident.incident_id, reason = reason.as_str_name(), "call escalated past a program limit");
                }
            }
        }
        if escalated > 0 {
            self.events_queued();
            self.outbox_wake.notify_one();
        }
        Ok(escalated)
    }

    /// The deadline loop, until `shutdown`.
    pub async fn run_deadlines(
        self: std::sync::Arc<Self>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let every = self.clock.pace(IntakeSettings::ms(
            self.settings.deadline_interval_ms.max(10),
        ));
        loop {
            if let Err(error) = self.run_deadlines_once().await {
                tracing::warn!(error = %error, "deadline job failed; will retry");
            }
            self.passes
                .deadlines
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}
