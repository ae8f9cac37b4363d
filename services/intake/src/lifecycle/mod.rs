//! How the facts intake learns from upstream change an incident: routing's record (a team was
//! assigned, an assignment ended and why) and the teams' statuses. Each is a pure function from
//! the incident before to a [`Plan`]: the incident after, its events, and the team statuses to
//! keep or that were applied. `core` reads, calls one of these, and writes the plan as one
//! change, so the rules can be read (and tested) without storage.
//!
//! The rule they keep: intake's view of each incident converges to routing's record and to the
//! teams' statuses whatever order their events arrive in.
//! - The end of a call is labelled CLEARED or RELEASED from the cause routing recorded
//!   (`Assignment.end_cause`), never from whether the team's AVAILABLE arrived first.
//! - A team status that arrives before the assignment it belongs to is kept
//!   ([`Observation`]) and applied, in order and with the team's own time, right after
//!   ASSIGNED.
//! - A team's status is reported once per change (a replay of the same status is no event).

use prost_types::{Duration, Timestamp};
use relay_proto::{
    common::TeamStatus,
    intake::{
        Incident, IncidentEvent, IncidentEventKind, IncidentState, IncidentTimeline,
        RoutingOutcome, RoutingState, StepTime,
    },
    routing::{Assignment, AssignmentEndCause, AssignmentState},
};

use crate::store::{Observation, StoredIncident, micros_of, timestamp_of};

/// The end reason routing records when a team cleared (rows written before `end_cause`
/// existed carry only this text).
const TEAM_CLEARED_REASON: &str = "team cleared";

/// What one fact does to an incident.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The incident after the fact (revision already increased).
    pub next: StoredIncident,
    /// Its events, in order.
    pub events: Vec<IncidentEvent>,
    /// Team statuses to keep until the assignment they belong to is recorded.
    pub observe: Vec<Observation>,
    /// Kept team statuses this plan applied or made moot (deleted with it).
    pub applied: Vec<Observation>,
}

/// A step of an incident's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Accepted.
    Received,
    /// First triage decision.
    Triaged,
    /// First queued.
    Queued,
    /// Ranked for a dispatcher.
    Recommended,
    /// A team assigned.
    Assigned,
    /// The team's status became DISPATCHED.
    Dispatched,
    /// ... EN_ROUTE.
    EnRoute,
    /// ... ON_SCENE.
    OnScene,
    /// ... TRANSPORTING.
    Transporting,
    /// The team cleared.
    Cleared,
    /// The assignment was released without the team clearing.
    Released,
    /// Escalated to a traditional response.
    Escalated,
    /// Closed.
    Closed,
    /// Cancelled.
    Cancelled,
}

fn slot(timeline: &mut IncidentTimeline, step: Step) -> &mut Option<StepTime> {
    match step {
        Step::Received => &mut timeline.received,
        Step::Triaged => &mut timeline.triaged,
        Step::Queued => &mut timeline.queued,
        Step::Recommended => &mut timeline.recommended,
        Step::Assigned => &mut timeline.assigned,
        Step::Dispatched => &mut timeline.dispatched,
        Step::EnRoute => &mut timeline.en_route,
        Step::OnScene => &mut timeline.on_scene,
        Step::Transporting => &mut timeline.transporting,
        Step::Cleared => &mut timeline.cleared,
        Step::Released => &mut timeline.released,
        Step::Escalated => &mut timeline.escalated,
        Step::Closed => &mut timeline.closed,
        Step::Cancelled => &mut timeline.cancelled,
    }
}

/// Records the first occurrence of `step` (a later one keeps the first), with the source's
/// time when it gives one.
pub fn mark(incident: &mut Incident, step: Step, source: Option<Timestamp>, now: i64) {
    let timeline = incident
        .timeline
        .get_or_insert_with(IncidentTimeline::default);
    let at = slot(timeline, step);
    if at.is_none() {
        *at = Some(StepTime {
            source_time: source,
            record_time: Some(timestamp_of(now)),
        });
    }
    if matches!(step, Step::Assigned | Step::Escalated | Step::Cancelled) {
        close_wait(timeline, source, now);
    }
}

/// Records a SAFETY_ALERT raised while a team is assigned: the first one's time and the
/// count, on the durable timeline (the event itself expires with the event history).
pub fn safety_alert(incident: &mut Incident, now: i64) {
    let timeline = incident
        .timeline
        .get_or_insert_with(IncidentTimeline::default);
    if timeline.first_safety_alert.is_none() {
        timeline.first_safety_alert = Some(StepTime {
            source_time: None,
            record_time: Some(timestamp_of(now)),
        });
    }
    timeline.safety_alerts = timeline.safety_alerts.saturating_add(1);
}

/// Records the first reason the call could not be served.
pub fn unserved(incident: &mut Incident, reason: i32) {
    let timeline = incident
        .timeline
        .get_or_insert_with(IncidentTimeline::default);
    if timeline.first_unserved_reason == 0 {
        timeline.first_unserved_reason = reason;
    }
}

/// When a call that waited unserved is decided (assigned, escalated, cancelled), how long
/// it waited, from when it was first queued.
fn close_wait(timeline: &mut IncidentTimeline, source: Option<Timestamp>, now: i64) {
    if timeline.unserved_wait.is_some() {
        return;
    }
    let Some(queued) = &timeline.queued else {
        return;
    };
    let start = queued
        .source_time
        .as_ref()
        .or(queued.record_time.as_ref())
        .map_or(now, |t| micros_of(Some(t)));
    let end = source.as_ref().map_or(now, |t| micros_of(Some(t)));
    let micros = (end - start).max(0);
    timeline.unserved_wait = Some(Duration {
        seconds: micros / 1_000_000,
        nanos: i32::try_from((micros % 1_000_000) * 1000).unwrap_or(0),
    });
}

/// An event of `incident` (after its change).
#[must_use]
pub fn event(incident: &Incident, kind: IncidentEventKind, now: i64) -> IncidentEvent {
    IncidentEvent {
        sequence: 0,
        incident_id: incident.incident_id.clone(),
        cad_incident_id: incident.cad_incident_id.clone(),
        region: incident.region.clone(),
        kind: kind as i32,
        event_time: Some(timestamp_of(now)),
        incident_revision: incident.revision,
        ..IncidentEvent::default()
    }
}

/// The routing state of an incident.
#[must_use]
pub fn routing_state(incident: &Incident) -> RoutingState {
    incident
        .routing
        .as_ref()
        .and_then(|r| RoutingState::try_from(r.state).ok())
        .unwrap_or(RoutingState::Unspecified)
}

/// Whether routing has not yet answered with a team for an open incident: the states in
/// which an assignment may still arrive.
fn awaiting_team(incident: &Incident) -> bool {
    incident.state == IncidentState::Open as i32
        && matches!(
            routing_state(incident),
            RoutingState::Pending | RoutingState::Queued | RoutingState::Recommended
        )
}

/// The step and event of a busy team status, or None for statuses that are not part of a
/// call (AVAILABLE, OFF_DUTY, OUT_OF_SERVICE: the end of a call comes from routing).
#[must_use]
pub fn busy_step(status: TeamStatus) -> Option<(Step, IncidentEventKind)> {
    match status {
        TeamStatus::Dispatched => Some((Step::Dispatched, IncidentEventKind::Dispatched)),
        TeamStatus::EnRoute => Some((Step::EnRoute, IncidentEventKind::EnRoute)),
        TeamStatus::OnScene => Some((Step::OnScene, IncidentEventKind::OnScene)),
        TeamStatus::Transporting => Some((Step::Transporting, IncidentEventKind::Transporting)),
        _ => None,
    }
}

fn start(before: &StoredIncident, now: i64) -> StoredIncident {
    let mut next = before.clone();
    next.incident.revision += 1;
    next.incident.update_time = Some(timestamp_of(now));
    next
}

/// Applies one status of the assigned team to `next` (already changed), pushing its event.
fn apply_status(
    next: &mut StoredIncident,
    events: &mut Vec<IncidentEvent>,
    team_id: &str,
    status: TeamStatus,
    source_time: i64,
    now: i64,
) {
    let Some((step, kind)) = busy_step(status) else {
        return;
    };
    if next.team_status == status as i32 {
        return;
    }
    next.team_status = status as i32;
    let source = (source_time > 0).then(|| timestamp_of(source_time));
    mark(&mut next.incident, step, source, now);
    let mut ev = event(&next.incident, kind, now);
    ev.team_id = team_id.to_owned();
    ev.source_time = source;
    ev.detail = format!("team {team_id} is {}", status.as_str_name());
    events.push(ev);
}

/// Routing assigned `assignment` to the incident (from its event stream, or the answer to
/// AssignTeam); `outcome` is the routing outcome to show. The statuses the team reported
/// before this (`kept`) follow ASSIGNED at once. None when the incident no longer waits for
/// a team, or already shows this assignment.
#[must_use]
pub fn assigned(
    before: &StoredIncident,
    assignment: &Assignment,
    mut outcome: RoutingOutcome,
    kept: &[Observation],
    now: i64,
) -> Option<Plan> {
    if !awaiting_team(&before.incident) {
        return None;
    }
    let mut next = start(before, now);
    outcome.state = RoutingState::Assigned as i32;
    outcome.assignment_id.clone_from(&assignment.assignment_id);
    outcome.team_id.clone_from(&assignment.team_id);
    outcome.eta_seconds = assignment.eta_seconds;
    outcome.distance_meters = assignment.distance_meters;
    outcome.unserved_reason = 0;
    outcome.escalate_time = None;
    outcome.update_time = Some(timestamp_of(now));
    if outcome.rationale.is_empty() {
        outcome.rationale = format!("assigned team {}", assignment.team_id);
    }
    next.incident.routing = Some(outcome.clone());
    next.team_status = 0;
    let timeline = next
        .incident
        .timeline
        .get_or_insert_with(IncidentTimeline::default);
    if timeline.team_id != assignment.team_id {
        // The team steps are the latest assignment's.
        for step in [
            Step::Dispatched,
            Step::EnRoute,
            Step::OnScene,
            Step::Transporting,
            Step::Cleared,
            Step::Released,
        ] {
            *slot(timeline, step) = None;
        }
        timeline.team_id.clone_from(&assignment.team_id);
    }
    mark(
        &mut next.incident,
        Step::Assigned,
        assignment.assigned_at,
        now,
    );
    let mut ev = event(&next.incident, IncidentEventKind::Assigned, now);
    ev.team_id.clone_from(&assignment.team_id);
    ev.source_time = assignment.assigned_at;
    ev.routing = Some(outcome.clone());
    ev.detail.clone_from(&outcome.rationale);
    let mut events = vec![ev];
    for seen in kept.iter().filter(|o| o.team_id == assignment.team_id) {
        let status = TeamStatus::try_from(seen.status).unwrap_or(TeamStatus::Unspecified);
        apply_status(
            &mut next,
            &mut events,
            &seen.team_id,
            status,
            seen.source_time,
            now,
        );
    }
    for ev in &mut events {
        ev.incident_revision = next.incident.revision;
    }
    Some(Plan {
        next,
        events,
        observe: Vec::new(),
        // A status kept for another team belonged to a claim that was undone.
        applied: kept.to_vec(),
    })
}

/// Team `team_id` reported `status` for the incident (availability's event `event_id`, at
/// the team's `source_time`). Applied at once when the incident shows that team assigned;
/// kept for later when the incident still waits for a team (routing's record of the
/// assignment has not reached intake yet); otherwise None.
#[must_use]
pub fn team_status(
    before: &StoredIncident,
    team_id: &str,
    status: TeamStatus,
    source_time: i64,
    event_id: &str,
    now: i64,
) -> Option<Plan> {
    busy_step(status)?;
    let incident = &before.incident;
    let assigned_here = routing_state(incident) == RoutingState::Assigned
        && incident
            .routing
            .as_ref()
            .is_some_and(|r| r.team_id == team_id);
    if assigned_here {
        if before.team_status == status as i32 {
            return None;
        }
        let mut next = start(before, now);
        let mut events = Vec::new();
        apply_status(&mut next, &mut events, team_id, status, source_time, now);
        return Some(Plan {
            next,
            events,
            observe: Vec::new(),
            applied: Vec::new(),
        });
    }
    if !awaiting_team(incident) {
        return late_status(before, team_id, status, source_time, now);
    }
    // The revision moves (with no event) so that a concurrent recording of the assignment,
    // which read the kept statuses before this one, is refused and reads again.
    Some(Plan {
        next: start(before, now),
        events: Vec::new(),
        observe: vec![Observation {
            incident_id: incident.incident_id.clone(),
            team_id: team_id.to_owned(),
            event_id: event_id.to_owned(),
            status: status as i32,
            source_time,
            record_time: now,
        }],
        applied: Vec::new(),
    })
}

/// A status of the incident's last team that reaches intake after routing's record of the
/// end of its assignment (the two streams are independent): it completes the timeline, with
/// no event, since an EN_ROUTE after CLEARED would tell a CAD the team went back to the call.
fn late_status(
    before: &StoredIncident,
    team_id: &str,
    status: TeamStatus,
    source_time: i64,
    now: i64,
) -> Option<Plan> {
    let (step, _) = busy_step(status)?;
    let ended = matches!(
        routing_state(&before.incident),
        RoutingState::Released | RoutingState::Cancelled
    );
    let mut timeline = before.incident.timeline.clone()?;
    if !ended || timeline.team_id != team_id || slot(&mut timeline, step).is_some() {
        return None;
    }
    let mut next = start(before, now);
    let source = (source_time > 0).then(|| timestamp_of(source_time));
    mark(&mut next.incident, step, source, now);
    Some(Plan {
        next,
        events: Vec::new(),
        observe: Vec::new(),
        applied: Vec::new(),
    })
}

#[cfg(test)]
mod tests;

mod routing_events;
pub use routing_events::*;
