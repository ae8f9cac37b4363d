//! `plan_update` and its siblings, decided on incidents built in memory: no store, no routing.

use std::collections::HashMap;

use prost::Message;
use relay_proto::{
    common::{AssignmentMode, GeoPoint},
    intake::{
        Disposition, IncidentEventKind, IncidentState, RiskFlag, RoutingState,
        UpdateIncidentResponse,
    },
    routing::{AssignTeamRequest, CancelRoutingRequest, ReleaseTeamRequest},
};

use super::*;
use crate::{
    core::{IncidentUpdate, IntakeError, NewIncident},
    store::OutboxKind,
};

const NOW: i64 = 1_800_000_000_000_000;

fn protocol() -> Protocol {
    Protocol::default_protocol().expect("the default protocol")
}

fn programs() -> Programs {
    Programs::new(&HashMap::new()).expect("no programs")
}

fn new_incident(incident_type: &str) -> NewIncident {
    NewIncident {
        cad_system: "cad".into(),
        cad_incident_id: "c-1".into(),
        incident_type: incident_type.into(),
        priority: 3,
        location: GeoPoint {
            latitude: 44.05,
            longitude: -123.09,
        },
        address: "1 Main St".into(),
        region: "east".into(),
        narrative: String::new(),
        risk_flags: Vec::new(),
        received_at: NOW - 1_000_000,
        caller: None,
        required_capabilities: Vec::new(),
        preferred_capabilities: Vec::new(),
        routing_mode: AssignmentMode::AutoAssign,
    }
}

/// An open incident of `incident_type` whose routing is in `state` (team `t-1` when
/// assigned).
fn incident(incident_type: &str, state: RoutingState) -> StoredIncident {
    let (protocol, programs) = (protocol(), programs());
    let rules = Rules {
        protocol: &protocol,
        programs: &programs,
    };
    let mut stored = plan_submit(new_incident(incident_type), &rules, NOW - 1_000).stored;
    let routing = stored.incident.routing.get_or_insert_default();
    routing.state = state as i32;
    if state == RoutingState::Assigned {
        routing.team_id = "t-1".into();
        routing.assignment_id = "a-1".into();
    }
    stored
}

fn update(incident: &StoredIncident) -> IncidentUpdate {
    IncidentUpdate {
        request_id: "req-1".into(),
        fingerprint: "fp".into(),
        incident_id: incident.incident.incident_id.clone(),
        ..IncidentUpdate::default()
    }
}

fn decide(
    before: &StoredIncident,
    update: &IncidentUpdate,
) -> Result<Decided<UpdateIncidentResponse>, IntakeError> {
    let (protocol, programs) = (protocol(), programs());
    let rules = Rules {
        protocol: &protocol,
        programs: &programs,
    };
    plan_update(before, update, &rules, NOW)
}

fn changed<R>(decided: Decided<R>) -> (Change, R) {
    match decided {
        Decided::Changed(change, response) => (*change, response),
        Decided::Unchanged(_) => panic!("expected a change"),
    }
}

fn kinds(change: &Change) -> Vec<IncidentEventKind> {
    change
        .events
        .iter()
        .map(|e| IncidentEventKind::try_from(e.kind).expect("a kind"))
        .collect()
}

#[test]
fn a_weapon_reported_while_a_team_is_assigned_raises_the_alert_first() {
    let before = incident("WELFARE", RoutingState::Assigned);
    let mut weapon = update(&before);
    weapon.add_risk_flags = vec![RiskFlag::Weapons];
    let (change, response) = changed(decide(&before, &weapon).expect("decided"));
    assert!(response.safety_alert_raised);
    assert_eq!(
        kinds(&change),
        vec![
            IncidentEventKind::SafetyAlert,
            IncidentEventKind::Updated,
            IncidentEventKind::Triaged
        ]
    );
    assert_eq!(change.events[0].team_id, "t-1");
    assert_eq!(change.events[0].risk_flags, vec![RiskFlag::Weapons as i32]);
    assert_eq!(change.expected_revision, before.incident.revision);
    let after = &change.incident.as_ref().expect("the incident").incident;
    assert_eq!(after.revision, before.incident.revision + 1);
    assert_ne!(
        after.triage.as_ref().expect("triage").disposition,
        Disposition::CommunityResponse as i32
    );
    assert_eq!(after.timeline.as_ref().expect("timeline").safety_alerts, 1);
    // The team stays assigned: releasing it is the dispatcher's call, not intake's.
    assert!(change.outbox.is_empty());
    assert_eq!(response.incident.as_ref(), Some(after));
}

#[test]
fn a_call_no_longer_eligible_has_its_routing_cancelled() {
    let before = incident("WELFARE", RoutingState::Queued);
    let mut weapon = update(&before);
    weapon.add_risk_flags = vec![RiskFlag::Weapons];
    let (change, response) = changed(decide(&before, &weapon).expect("decided"));
    assert!(!response.safety_alert_raised);
    assert_eq!(change.outbox.len(), 1);
    assert_eq!(change.outbox[0].kind, OutboxKind::Cancel);
    let request =
        CancelRoutingRequest::decode(change.outbox[0].payload.as_slice()).expect("a request");
    assert_eq!(
        request.request_id,
        format!("cancel-{}-2", before.incident.incident_id)
    );
    let after = &change.incident.as_ref().expect("the incident").incident;
    assert_eq!(
        routing_state(after),
        RoutingState::NotRouted,
        "no longer routed"
    );
}

#[test]
fn a_queued_call_that_moved_is_ranked_again_where_it_is_now() {
    let before = incident("WELFARE", RoutingState::Queued);
    let mut moved = update(&before);
    let there = GeoPoint {
        latitude: 44.1,
        longitude: -123.1,
    };
    moved.location = Some(there);
    let (change, _) = changed(decide(&before, &moved).expect("decided"));
    assert_eq!(kinds(&change), vec![IncidentEventKind::Updated]);
    assert_eq!(change.outbox.len(), 1);
    let request =
        AssignTeamRequest::decode(change.outbox[0].payload.as_slice()).expect("a request");
    assert_eq!(request.location, Some(there));
    assert_eq!(
        request.request_id,
        format!("assign-{}-2", before.incident.incident_id)
    );
}

#[test]
fn a_call_that_became_eligible_is_routed() {
    let before = incident("NOT-A-CODE", RoutingState::NotRouted);
    assert_eq!(
        before.incident.triage.as_ref().expect("triage").disposition,
        Disposition::NeedsReview as i32
    );
    let mut retyped = update(&before);
    retyped.incident_type = Some("WELFARE".into());
    let (change, response) = changed(decide(&before, &retyped).expect("decided"));
    assert_eq!(
        kinds(&change),
        vec![IncidentEventKind::Updated, IncidentEventKind::Triaged]
    );
    assert_eq!(change.outbox.len(), 1);
    assert_eq!(change.outbox[0].kind, OutboxKind::Assign);
    let after = response.incident.expect("the incident");
    assert_eq!(routing_state(&after), RoutingState::Pending);
    assert_eq!(
        after.triage.expect("triage").disposition,
        Disposition::CommunityResponse as i32
    );
}

#[test]
fn a_note_alone_is_a_new_revision_without_triage() {
    let before = incident("WELFARE", RoutingState::Assigned);
    let mut noted = update(&before);
    noted.note = Some("caller calmer now".into());
    let (change, response) = changed(decide(&before, &noted).expect("decided"));
    assert_eq!(kinds(&change), vec![IncidentEventKind::Updated]);
    assert!(change.outbox.is_empty());
    assert!(!response.safety_alert_raised);
    let after = response.incident.expect("the incident");
    assert_eq!(after.notes.len(), 1);
    assert_eq!(after.triage, before.incident.triage);
}

#[test]
fn an_update_that_changes_nothing_is_no_revision() {
    let before = incident("WELFARE", RoutingState::Queued);
    let mut same = update(&before);
    same.priority = Some(before.incident.priority);
    same.add_risk_flags = Vec::new();
    match decide(&before, &same).expect("decided") {
        Decided::Unchanged(response) => {
            assert_eq!(response.incident.as_ref(), Some(&before.incident));
            assert!(!response.safety_alert_raised);
        }
        Decided::Changed(..) => panic!("nothing changed"),
    }
}

#[test]
fn a_stale_revision_or_a_closed_incident_is_refused() {
    let before = incident("WELFARE", RoutingState::Queued);
    let mut stale = update(&before);
    stale.expected_revision = before.incident.revision + 5;
    stale.note = Some("late".into());
    assert!(matches!(
        decide(&before, &stale),
        Err(IntakeError::RevisionMismatch { current, expected })
            if current == before.incident.revision && expected == before.incident.revision + 5
    ));
    let mut closed = before.clone();
    closed.incident.state = IncidentState::Closed as i32;
    let mut noted = update(&closed);
    noted.note = Some("after the fact".into());
    assert!(matches!(
        decide(&closed, &noted),
        Err(IntakeError::NotOpen(_))
    ));
}

#[test]
fn an_override_the_flags_forbid_is_refused_before_anything_changes() {
    let mut before = incident("WELFARE", RoutingState::NotRouted);
    before.incident.risk_flags = vec![RiskFlag::Weapons as i32];
    let mut community = update(&before);
    community.override_disposition = Some(Disposition::CommunityResponse);
    assert!(matches!(
        decide(&before, &community),
        Err(IntakeError::OverrideNotAllowed(_))
    ));
}

#[test]
fn closing_an_assigned_call_releases_its_team() {
    let before = incident("WELFARE", RoutingState::Assigned);
    let (change, response) =
        changed(plan_close(&before, 1, &["ref-1".into()], "done", NOW).expect("decided"));
    assert_eq!(
        kinds(&change),
        vec![IncidentEventKind::Released, IncidentEventKind::Closed]
    );
    let request =
        ReleaseTeamRequest::decode(change.outbox[0].payload.as_slice()).expect("a request");
    assert_eq!(request.assignment_id, "a-1");
    let after = response.incident.expect("the incident");
    assert_eq!(after.state, IncidentState::Closed as i32);
    assert_eq!(routing_state(&after), RoutingState::Released);
    assert_eq!(after.referral_ids, vec!["ref-1".to_owned()]);
    assert_eq!(change.incident.expect("stored").team_status, 0);
}

#[test]
fn cancelling_a_call_in_routing_cancels_its_routing() {
    let before = incident("WELFARE", RoutingState::Pending);
    let (change, response) = changed(plan_cancel(&before, "caller hung up", NOW).expect("decided"));
    assert_eq!(kinds(&change), vec![IncidentEventKind::Cancelled]);
    assert_eq!(change.outbox[0].kind, OutboxKind::Cancel);
    let after = response.incident.expect("the incident");
    assert_eq!(after.cancel_reason, "caller hung up");
    assert_eq!(routing_state(&after), RoutingState::Cancelled);
    assert!(matches!(
        plan_cancel(&change.incident.expect("stored"), "again", NOW),
        Err(IntakeError::NotOpen(_))
    ));
}
