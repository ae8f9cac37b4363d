//! Plans for what routing reports of an incident: routed, queued, escalated, taken off the
//! queue, and an assignment ended.

use super::*;

/// Routing answered without assigning a team: `outcome` (QUEUED, RECOMMENDED or ESCALATED,
/// with its reason, rationale and candidates) replaces the incident's routing, with its event
/// `kind`. `source` is routing's time of it (when it first queued the call, or escalated it).
/// The caller has checked that the incident is in a state this answer may change.
#[must_use]
pub fn routed(
    before: &StoredIncident,
    mut outcome: RoutingOutcome,
    kind: IncidentEventKind,
    source: Option<Timestamp>,
    now: i64,
) -> Plan {
    let mut next = start(before, now);
    outcome.update_time = Some(timestamp_of(now));
    next.incident.routing = Some(outcome.clone());
    match kind {
        IncidentEventKind::Queued => {
            mark(&mut next.incident, Step::Queued, source, now);
            unserved(&mut next.incident, outcome.unserved_reason);
        }
        IncidentEventKind::Escalated => {
            unserved(&mut next.incident, outcome.unserved_reason);
            mark(&mut next.incident, Step::Escalated, source, now);
        }
        IncidentEventKind::Recommended => {
            mark(&mut next.incident, Step::Recommended, None, now);
        }
        _ => {}
    }
    let mut ev = event(&next.incident, kind, now);
    ev.team_id.clone_from(&outcome.team_id);
    if kind == IncidentEventKind::Escalated {
        ev.source_time = source;
    }
    ev.detail.clone_from(&outcome.rationale);
    ev.routing = Some(outcome);
    Plan {
        next,
        events: vec![ev],
        observe: Vec::new(),
        applied: Vec::new(),
    }
}

/// Routing's event: the incident was queued (or its queued parameters replaced). None when
/// nothing changes.
#[must_use]
pub fn queued(
    before: &StoredIncident,
    reason: i32,
    queued_time: Option<Timestamp>,
    escalate_time: Option<Timestamp>,
    now: i64,
) -> Option<Plan> {
    let incident = &before.incident;
    let state = routing_state(incident);
    let current = incident.routing.clone().unwrap_or_default();
    let changed = matches!(state, RoutingState::Pending | RoutingState::Recommended)
        || (state == RoutingState::Queued && current.escalate_time != escalate_time);
    if incident.state != IncidentState::Open as i32 || !changed {
        return None;
    }
    let outcome = RoutingOutcome {
        state: RoutingState::Queued as i32,
        unserved_reason: reason,
        escalate_time,
        rationale: "no team could take the call; queued".into(),
        ..current
    };
    Some(routed(
        before,
        outcome,
        IncidentEventKind::Queued,
        queued_time,
        now,
    ))
}

/// Whether an open incident waits for routing without a team (pending or queued).
pub(super) fn waiting_unserved(incident: &Incident) -> bool {
    incident.state == IncidentState::Open as i32
        && matches!(
            routing_state(incident),
            RoutingState::Queued | RoutingState::Pending
        )
}

/// Routing's event: the incident waited past its limit and was escalated (send a traditional
/// response). None unless it was waiting.
#[must_use]
pub fn escalated(
    before: &StoredIncident,
    reason: i32,
    event_time: Option<Timestamp>,
    now: i64,
) -> Option<Plan> {
    let incident = &before.incident;
    if !waiting_unserved(incident) {
        return None;
    }
    let outcome = RoutingOutcome {
        state: RoutingState::Escalated as i32,
        unserved_reason: reason,
        rationale: "waited too long in the queue; send a traditional response".into(),
        ..incident.routing.clone().unwrap_or_default()
    };
    Some(routed(
        before,
        outcome,
        IncidentEventKind::Escalated,
        event_time,
        now,
    ))
}

/// Routing cancelled the incident's routing while no team was assigned (it left the queue).
#[must_use]
pub fn dequeued(before: &StoredIncident, now: i64) -> Option<Plan> {
    let incident = &before.incident;
    if !waiting_unserved(incident) {
        return None;
    }
    let mut next = start(before, now);
    let mut routing = incident.routing.clone().unwrap_or_default();
    routing.state = RoutingState::Cancelled as i32;
    routing.update_time = Some(timestamp_of(now));
    next.incident.routing = Some(routing.clone());
    next.team_status = 0;
    let mut ev = event(&next.incident, IncidentEventKind::Released, now);
    ev.routing = Some(routing);
    ev.detail = "routing cancelled".into();
    Some(Plan {
        next,
        events: vec![ev],
        observe: Vec::new(),
        applied: Vec::new(),
    })
}

/// Why an ended assignment ended, from routing's record.
#[must_use]
pub fn end_cause(assignment: &Assignment) -> AssignmentEndCause {
    match AssignmentEndCause::try_from(assignment.end_cause) {
        Ok(cause) if cause != AssignmentEndCause::Unspecified => cause,
        // Written before routing recorded the cause.
        _ if assignment.state == AssignmentState::Cancelled as i32 => AssignmentEndCause::Cancelled,
        _ if assignment.end_reason == TEAM_CLEARED_REASON => AssignmentEndCause::TeamCleared,
        _ => AssignmentEndCause::Released,
    }
}

/// Routing ended `assignment` (RELEASED or CANCELLED in its record). None unless the
/// incident shows that assignment as ASSIGNED.
#[must_use]
pub fn ended(before: &StoredIncident, assignment: &Assignment, now: i64) -> Option<Plan> {
    let current = before.incident.routing.as_ref()?;
    if routing_state(&before.incident) != RoutingState::Assigned
        || current.assignment_id != assignment.assignment_id
        || assignment.state == AssignmentState::Active as i32
    {
        return None;
    }
    let mut next = start(before, now);
    let end_time = assignment.end_time;
    let (state, kind, step, detail) = match end_cause(assignment) {
        AssignmentEndCause::TeamCleared => (
            RoutingState::Released,
            IncidentEventKind::Cleared,
            Step::Cleared,
            format!("team {} cleared", assignment.team_id),
        ),
        AssignmentEndCause::Cancelled => (
            RoutingState::Cancelled,
            IncidentEventKind::Released,
            Step::Released,
            format!("team {} released: routing cancelled", assignment.team_id),
        ),
        // Redis lost the claim; the team may still be on scene. The call waits for a
        // dispatcher again (RECOMMENDED: ConfirmAssignment, or the team's RestoreAssignment
        // brings an ASSIGNED; the recommendation expiry escalates it if neither comes), never
        // shown as the team clearing.
        AssignmentEndCause::LiveStateLost => (
            RoutingState::Recommended,
            IncidentEventKind::Released,
            Step::Released,
            format!(
                "team {} released: the live state was lost; confirm a team, or the team restores the call",
                assignment.team_id
            ),
        ),
        AssignmentEndCause::Released | AssignmentEndCause::Unspecified => (
            RoutingState::Released,
            IncidentEventKind::Released,
            Step::Released,
            format!("team {} released", assignment.team_id),
        ),
    };
    let mut routing = current.clone();
    routing.state = state as i32;
    routing.update_time = Some(timestamp_of(now));
    next.incident.routing = Some(routing.clone());
    next.team_status = if kind == IncidentEventKind::Cleared {
        TeamStatus::Available as i32
    } else {
        0
    };
    mark(&mut next.incident, step, end_time, now);
    let mut ev = event(&next.incident, kind, now);
    ev.team_id.clone_from(&assignment.team_id);
    ev.source_time = end_time;
    ev.routing = Some(routing);
    ev.detail = detail;
    Some(Plan {
        next,
        events: vec![ev],
        observe: Vec::new(),
        applied: Vec::new(),
    })
}
