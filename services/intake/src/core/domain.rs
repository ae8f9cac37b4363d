//! What a CAD's request does to an incident, decided as pure functions: from the incident as
//! read, the validated request, the [`Rules`] in force and the time, to the [`Change`] the
//! store commits (the incident after, its events, the routing requests for the outbox) and
//! the answer the caller gets. Nothing here reads or writes storage or calls routing, so the
//! rules can be read, and tested, on their own; `commands.rs` reads, decides, and applies.

use relay_proto::{
    common::UnservedReason,
    intake::{
        CancelIncidentResponse, CloseIncidentResponse, Disposition, Incident, IncidentEvent,
        IncidentEventKind, IncidentNote, IncidentState, RiskFlag, RoutingOutcome, RoutingState,
        TriageDecision, UpdateIncidentResponse,
    },
};

use super::{
    IncidentUpdate, IntakeError, NewIncident,
    outbox::{assign_item, cancel_item, release_item},
};
use crate::{
    lifecycle::{self, Step, event, mark, routing_state},
    program::Programs,
    protocol::{self, Decision, Protocol},
    store::{Change, OutboxItem, StoredIncident, timestamp_of},
};

/// What decisions depend on besides the incident: the triage protocol in force and the
/// regions' program hours.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    /// The triage protocol.
    pub protocol: &'a Protocol,
    /// The regions' programs (hours, limits).
    pub programs: &'a Programs,
}

/// A decision on a request to change an incident.
#[derive(Debug, Clone)]
pub enum Decided<R> {
    /// Nothing changes (no new revision); the answer as things are.
    Unchanged(R),
    /// The change to commit, and the answer once it is committed.
    Changed(Box<Change>, R),
}

/// A new incident as [`plan_submit`] decides it.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The incident to create.
    pub stored: StoredIncident,
    /// Its first events (RECEIVED, TRIAGED, and ESCALATED outside program hours).
    pub events: Vec<IncidentEvent>,
    /// The AssignTeam request, when the call is to be routed.
    pub assign: Option<OutboxItem>,
    /// The protocol's decision.
    pub disposition: Disposition,
}

pub(crate) fn decision_proto(decision: &Decision, version: &str, now: i64) -> TriageDecision {
    TriageDecision {
        disposition: decision.disposition as i32,
        reasons: decision.reasons.clone(),
        protocol_version: version.to_owned(),
        rule_ids: decision.rule_ids.clone(),
        required_capabilities: decision.required_capabilities.clone(),
        co_responders: decision.co_responders.clone(),
        decided_time: Some(timestamp_of(now)),
    }
}

/// Whether a disposition sends a community team.
fn routable(disposition: i32) -> bool {
    disposition == Disposition::CommunityResponse as i32
        || disposition == Disposition::CoResponse as i32
}

fn flags_of(incident: &Incident) -> Vec<RiskFlag> {
    incident
        .risk_flags
        .iter()
        .filter_map(|f| RiskFlag::try_from(*f).ok())
        .collect()
}

/// An eligible call outside its region's program hours is answered at once: escalated
/// with OUTSIDE_PROGRAM_HOURS for a traditional response, never queued to wait for a team
/// that is not on duty. Returns the ESCALATED event, or None when the program operates.
fn outside_program_hours(
    programs: &Programs,
    incident: &mut Incident,
    now: i64,
) -> Option<IncidentEvent> {
    let at = chrono::DateTime::from_timestamp_micros(now).unwrap_or_default();
    if programs.is_open(&incident.region, at) {
        return None;
    }
    let rationale = "outside the region's program hours; send a traditional response";
    let routing = RoutingOutcome {
        state: RoutingState::Escalated as i32,
        unserved_reason: UnservedReason::OutsideProgramHours as i32,
        rationale: rationale.into(),
        update_time: Some(timestamp_of(now)),
        ..RoutingOutcome::default()
    };
    incident.routing = Some(routing.clone());
    lifecycle::unserved(incident, routing.unserved_reason);
    mark(incident, Step::Escalated, None, now);
    let mut escalated = event(incident, IncidentEventKind::Escalated, now);
    escalated.routing = Some(routing);
    escalated.detail = rationale.into();
    Some(escalated)
}

/// Refuses a change to a closed or cancelled incident.
fn check_open(before: &Incident) -> Result<(), IntakeError> {
    if before.state == IncidentState::Open as i32 {
        Ok(())
    } else {
        Err(IntakeError::NotOpen(before.incident_id.clone()))
    }
}

/// A new incident (see `SubmitIncident`): triaged, with its first events, and the request to
/// route it when it is eligible and its program operates.
#[must_use]
pub fn plan_submit(new: NewIncident, rules: &Rules<'_>, now: i64) -> Accepted {
    let protocol = rules.protocol;
    let decision = protocol.triage(
        &new.cad_system,
        &new.incident_type,
        &new.risk_flags,
        Disposition::Unspecified,
    );
    let triage = decision_proto(&decision, &protocol.version, now);
    let mut routed = routable(triage.disposition);
    let mut incident = Incident {
        incident_id: format!("inc-{}", uuid::Uuid::now_v7()),
        cad_system: new.cad_system,
        cad_incident_id: new.cad_incident_id,
        incident_type: new.incident_type,
        apco_incident_type: decision.apco_incident_type.clone(),
        priority: new.priority,
        location: Some(new.location),
        address: new.address,
        region: new.region,
        narrative: new.narrative,
        risk_flags: new.risk_flags.iter().map(|f| *f as i32).collect(),
        received_at: Some(timestamp_of(new.received_at)),
        caller: new.caller,
        required_capabilities: new.required_capabilities,
        preferred_capabilities: new.preferred_capabilities,
        routing_mode: new.routing_mode as i32,
        state: IncidentState::Open as i32,
        triage: Some(triage.clone()),
        routing: Some(RoutingOutcome {
            state: if routed {
                RoutingState::Pending as i32
            } else {
                RoutingState::NotRouted as i32
            },
            update_time: Some(timestamp_of(now)),
            ..RoutingOutcome::default()
        }),
        revision: 1,
        create_time: Some(timestamp_of(now)),
        update_time: Some(timestamp_of(now)),
        ..Incident::default()
    };
    let received_at = incident.received_at;
    mark(&mut incident, Step::Received, received_at, now);
    mark(&mut incident, Step::Triaged, None, now);
    let mut received = event(&incident, IncidentEventKind::Received, now);
    received.source_time = incident.received_at;
    let mut triaged = event(&incident, IncidentEventKind::Triaged, now);
    triaged.triage = Some(triage);
    let mut events = vec![received, triaged];
    if routed && let Some(escalated) = outside_program_hours(rules.programs, &mut incident, now) {
        routed = false;
        events.push(escalated);
    }
    let assign = routed.then(|| assign_item(&incident, 1, now));
    Accepted {
        stored: StoredIncident {
            incident,
            override_disposition: 0,
            team_status: 0,
        },
        events,
        assign,
        disposition: decision.disposition,
    }
}

/// An incident with an update's fields applied, before triage looks at it again.
struct Edited {
    after: Incident,
    override_disposition: i32,
    /// The risk flags the update added (new ones only).
    added: Vec<RiskFlag>,
    /// Location or priority changed: what routing ranks on.
    routing_inputs_changed: bool,
    /// Address, incident type or the dispatcher override changed.
    other_changed: bool,
}

impl Edited {
    fn retriage(&self) -> bool {
        !self.added.is_empty() || self.routing_inputs_changed || self.other_changed
    }
}

/// Applies the fields of `update` to the incident, and checks a dispatcher override
/// against the protocol (on the incident's flags after the update).
fn edit(
    before: &StoredIncident,
    update: &IncidentUpdate,
    protocol: &Protocol,
) -> Result<Edited, IntakeError> {
    let mut after = before.incident.clone();
    let mut added = Vec::new();
    for flag in &update.add_risk_flags {
        if !after.risk_flags.contains(&(*flag as i32)) {
            after.risk_flags.push(*flag as i32);
            added.push(*flag);
        }
    }
    let mut routing_inputs_changed = false;
    if let Some(location) = update.location
        && after.location != Some(location)
    {
        after.location = Some(location);
        routing_inputs_changed = true;
    }
    if let Some(priority) = update.priority
        && after.priority != priority
    {
        after.priority = priority;
        routing_inputs_changed = true;
    }
    let mut other_changed = false;
    if let Some(address) = &update.address
        && &after.address != address
    {
        after.address.clone_from(address);
        other_changed = true;
    }
    if let Some(incident_type) = &update.incident_type
        && &after.incident_type != incident_type
    {
        after.incident_type.clone_from(incident_type);
        other_changed = true;
    }
    let mut override_disposition = before.override_disposition;
    if let Some(wanted) = update.override_disposition {
        let flags = flags_of(&after);
        let protocol_decision = protocol.triage(
            &after.cad_system,
            &after.incident_type,
            &flags,
            Disposition::Unspecified,
        );
        protocol
            .check_override(protocol_decision.disposition, &flags, wanted)
            .map_err(|e| IntakeError::OverrideNotAllowed(e.0))?;
        if override_disposition != wanted as i32 {
            override_disposition = wanted as i32;
            other_changed = true;
        }
    }
    Ok(Edited {
        after,
        override_disposition,
        added,
        routing_inputs_changed,
        other_changed,
    })
}

/// Applies an update (see `UpdateIncident`): the fields, a note, triage again when something
/// it reads changed, a SAFETY_ALERT when the call became riskier while a team is assigned,
/// and what routing must be told (cancel a call no longer eligible, route one that became
/// eligible, rank a queued one again on its new location, priority or capabilities).
///
/// # Errors
/// NotOpen, RevisionMismatch (a stale `expected_revision`), OverrideNotAllowed.
pub fn plan_update(
    before: &StoredIncident,
    update: &IncidentUpdate,
    rules: &Rules<'_>,
    now: i64,
) -> Result<Decided<UpdateIncidentResponse>, IntakeError> {
    let incident = &before.incident;
    check_open(incident)?;
    if update.expected_revision != 0 && update.expected_revision != incident.revision {
        return Err(IntakeError::RevisionMismatch {
            current: incident.revision,
            expected: update.expected_revision,
        });
    }
    let mut edited = edit(before, update, rules.protocol)?;
    if !edited.retriage() && update.note.is_none() {
        return Ok(Decided::Unchanged(UpdateIncidentResponse {
            triage: incident.triage.clone(),
            incident: Some(incident.clone()),
            safety_alert_raised: false,
        }));
    }
    let after = &mut edited.after;
    after.revision = incident.revision + 1;
    after.update_time = Some(timestamp_of(now));
    if let Some(note) = &update.note {
        after.notes.push(IncidentNote {
            text: note.clone(),
            create_time: Some(timestamp_of(now)),
        });
    }
    let mut updated = event(after, IncidentEventKind::Updated, now);
    updated.risk_flags = edited.added.iter().map(|f| *f as i32).collect();
    let mut change = Change {
        expected_revision: incident.revision,
        events: vec![updated],
        now,
        ..Change::default()
    };
    let safety_alert = edited.retriage() && retriage(incident, &mut edited, rules, &mut change);
    let after = edited.after;
    let response = UpdateIncidentResponse {
        triage: after.triage.clone(),
        incident: Some(after.clone()),
        safety_alert_raised: safety_alert,
    };
    change.incident = Some(StoredIncident {
        incident: after,
        override_disposition: edited.override_disposition,
        team_status: before.team_status,
    });
    Ok(Decided::Changed(Box::new(change), response))
}

/// Triages an edited incident again and adds to `change` what follows from the new decision:
/// a TRIAGED event when it differs, a SAFETY_ALERT (first) when a team is assigned to a call
/// that became riskier, and the routing requests. Returns whether a safety alert was raised.
fn retriage(
    before: &Incident,
    edited: &mut Edited,
    rules: &Rules<'_>,
    change: &mut Change,
) -> bool {
    let now = change.now;
    let after = &mut edited.after;
    let override_in_force =
        Disposition::try_from(edited.override_disposition).unwrap_or(Disposition::Unspecified);
    let decision = rules.protocol.triage(
        &after.cad_system,
        &after.incident_type,
        &flags_of(after),
        override_in_force,
    );
    let previous = before.triage.clone().unwrap_or_default();
    let triage = decision_proto(&decision, &rules.protocol.version, now);
    after
        .apco_incident_type
        .clone_from(&decision.apco_incident_type);
    if previous.disposition != triage.disposition
        || previous.rule_ids != triage.rule_ids
        || previous.required_capabilities != triage.required_capabilities
        || previous.co_responders != triage.co_responders
    {
        let mut triaged = event(after, IncidentEventKind::Triaged, now);
        triaged.triage = Some(triage.clone());
        change.events.push(triaged);
    }
    let previous_disposition =
        Disposition::try_from(previous.disposition).unwrap_or(Disposition::NeedsReview);
    let new_co_responder = triage
        .co_responders
        .iter()
        .any(|c| !previous.co_responders.contains(c));
    let riskier = !edited.added.is_empty()
        || protocol::more_restrictive(previous_disposition, decision.disposition)
        || new_co_responder;
    let safety_alert = routing_state(before) == RoutingState::Assigned && riskier;
    if safety_alert {
        let alert = safety_alert_event(before, after, &edited.added, decision.disposition, now);
        // The alert goes first: the team must hear it at once.
        change.events.insert(0, alert);
    }
    after.triage = Some(triage.clone());
    reroute(before, &previous, edited, rules.programs, change);
    edited.after.triage = Some(triage);
    safety_alert
}

/// The SAFETY_ALERT of a call that became riskier while its team is assigned (recorded on
/// `after`'s timeline).
fn safety_alert_event(
    before: &Incident,
    after: &mut Incident,
    added: &[RiskFlag],
    disposition: Disposition,
    now: i64,
) -> IncidentEvent {
    let team_id = before
        .routing
        .as_ref()
        .map(|r| r.team_id.clone())
        .unwrap_or_default();
    lifecycle::safety_alert(after, now);
    let mut alert = event(after, IncidentEventKind::SafetyAlert, now);
    alert.team_id.clone_from(&team_id);
    alert.risk_flags = added.iter().map(|f| *f as i32).collect();
    let flag_names: Vec<&str> = added.iter().map(|f| protocol::flag_name(*f)).collect();
    alert.detail = if flag_names.is_empty() {
        format!(
            "triage is now {} while team {team_id} is assigned",
            disposition.as_str_name()
        )
    } else {
        format!(
            "risk flag {} added while team {team_id} is assigned; triage is now {}",
            flag_names.join(", "),
            disposition.as_str_name()
        )
    };
    alert
}

/// What routing must be told after triage changed (`edited.after` carries the new triage):
/// cancel the routing of a call no longer eligible, route a call that became eligible (or
/// escalate it outside program hours), or rank a queued call again when what it is ranked on
/// changed.
fn reroute(
    before: &Incident,
    previous: &TriageDecision,
    edited: &mut Edited,
    programs: &Programs,
    change: &mut Change,
) {
    let now = change.now;
    let after = &mut edited.after;
    let triage = after.triage.clone().unwrap_or_default();
    let now_routable = routable(triage.disposition);
    let mut routing = after.routing.clone().unwrap_or_default();
    match routing_state(before) {
        RoutingState::Queued | RoutingState::Recommended | RoutingState::Pending
            if !now_routable =>
        {
            routing.state = RoutingState::NotRouted as i32;
            routing.update_time = Some(timestamp_of(now));
            let reason = "no longer eligible for a community response";
            change.outbox.push(cancel_item(after, reason, now));
        }
        RoutingState::NotRouted
        | RoutingState::Released
        | RoutingState::Cancelled
        | RoutingState::Escalated
            if now_routable && !routable(previous.disposition) =>
        {
            if let Some(escalated) = outside_program_hours(programs, after, now) {
                change.events.push(escalated);
                routing = after.routing.clone().unwrap_or_default();
            } else {
                routing.state = RoutingState::Pending as i32;
                routing.update_time = Some(timestamp_of(now));
                change.outbox.push(assign_item(after, after.revision, now));
            }
        }
        RoutingState::Queued
            if now_routable
                && (edited.routing_inputs_changed
                    || previous.required_capabilities != triage.required_capabilities) =>
        {
            change.outbox.push(assign_item(after, after.revision, now));
        }
        _ => {}
    }
    after.routing = Some(routing);
}

/// The next revision of `before` in `state`, closed at `now`.
fn ended(before: &Incident, state: IncidentState, step: Step, now: i64) -> Incident {
    let mut after = before.clone();
    after.revision += 1;
    after.state = state as i32;
    after.close_time = Some(timestamp_of(now));
    mark(&mut after, step, None, now);
    after.update_time = Some(timestamp_of(now));
    after
}

/// The change that commits `after` (read at `before`'s revision) with its events and outbox
/// rows; the team status is cleared with the call.
fn closing_change(
    before: &StoredIncident,
    after: Incident,
    events: Vec<IncidentEvent>,
    outbox: Vec<OutboxItem>,
    now: i64,
) -> Change {
    Change {
        expected_revision: before.incident.revision,
        incident: Some(StoredIncident {
            incident: after,
            override_disposition: before.override_disposition,
            team_status: 0,
        }),
        events,
        outbox,
        now,
        ..Change::default()
    }
}

/// Cancels an incident (see `CancelIncident`): routing is told to drop any routing in
/// progress or release the team.
///
/// # Errors
/// NotOpen.
pub fn plan_cancel(
    before: &StoredIncident,
    reason: &str,
    now: i64,
) -> Result<Decided<CancelIncidentResponse>, IntakeError> {
    check_open(&before.incident)?;
    let mut after = ended(
        &before.incident,
        IncidentState::Cancelled,
        Step::Cancelled,
        now,
    );
    after.cancel_reason = reason.to_owned();
    let mut outbox = Vec::new();
    let mut cancelled = event(&after, IncidentEventKind::Cancelled, now);
    if matches!(
        routing_state(&before.incident),
        RoutingState::Pending
            | RoutingState::Assigned
            | RoutingState::Queued
            | RoutingState::Recommended
    ) {
        outbox.push(cancel_item(&after, "incident cancelled", now));
        let routing = after.routing.get_or_insert_with(RoutingOutcome::default);
        routing.state = RoutingState::Cancelled as i32;
        routing.update_time = Some(timestamp_of(now));
        cancelled.routing = after.routing.clone();
        cancelled.team_id = after
            .routing
            .as_ref()
            .map(|r| r.team_id.clone())
            .unwrap_or_default();
    }
    let response = CancelIncidentResponse {
        incident: Some(after.clone()),
    };
    let change = closing_change(before, after, vec![cancelled], outbox, now);
    Ok(Decided::Changed(Box::new(change), response))
}

/// Closes an incident (see `CloseIncident`) with its outcome, referrals and notes: an
/// assigned team is released, routing in progress is cancelled.
///
/// # Errors
/// NotOpen.
pub fn plan_close(
    before: &StoredIncident,
    outcome: i32,
    referral_ids: &[String],
    notes: &str,
    now: i64,
) -> Result<Decided<CloseIncidentResponse>, IntakeError> {
    check_open(&before.incident)?;
    let mut after = ended(&before.incident, IncidentState::Closed, Step::Closed, now);
    after.close_outcome = outcome;
    after.referral_ids = referral_ids.to_vec();
    notes.clone_into(&mut after.close_notes);
    let mut events = Vec::new();
    let mut outbox = Vec::new();
    match routing_state(&before.incident) {
        RoutingState::Assigned => {
            let routing = after.routing.clone().unwrap_or_default();
            outbox.push(release_item(&after, &routing.assignment_id, now));
            let routing = RoutingOutcome {
                state: RoutingState::Released as i32,
                update_time: Some(timestamp_of(now)),
                ..routing
            };
            after.routing = Some(routing.clone());
            mark(&mut after, Step::Released, None, now);
            let mut released = event(&after, IncidentEventKind::Released, now);
            released.team_id.clone_from(&routing.team_id);
            released.routing = Some(routing);
            released.detail = "team released: incident closed".into();
            events.push(released);
        }
        RoutingState::Pending | RoutingState::Queued | RoutingState::Recommended => {
            outbox.push(cancel_item(&after, "incident closed", now));
            let routing = after.routing.get_or_insert_with(RoutingOutcome::default);
            routing.state = RoutingState::Cancelled as i32;
            routing.update_time = Some(timestamp_of(now));
        }
        _ => {}
    }
    let mut closed = event(&after, IncidentEventKind::Closed, now);
    closed.close_outcome = outcome;
    events.push(closed);
    let response = CloseIncidentResponse {
        incident: Some(after.clone()),
    };
    let change = closing_change(before, after, events, outbox, now);
    Ok(Decided::Changed(Box::new(change), response))
}

#[cfg(test)]
#[path = "domain_tests.rs"]
mod tests;
