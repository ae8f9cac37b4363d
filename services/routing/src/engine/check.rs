//! Validation of the RPCs' requests (nothing is touched on bad input) and their parameters.

use super::*;

/// Checks an AssignTeam request's fields (whether the region is served is checked after,
/// against the deployment) and returns its parameters.
///
/// # Errors
/// INVALID_ARGUMENT naming each bad field.
pub fn check_assign_team(request: &AssignTeamRequest) -> Result<Params, ApiError> {
    let mut v = Violations::new();
    v.id("request_id", &request.request_id);
    v.id("incident_id", &request.incident_id);
    v.id("region", &request.region);
    v.id("cad_system", &request.cad_system);
    let location = v.geo_point("location", request.location.as_ref());
    for (field, tags) in [
        ("required_capabilities", &request.required_capabilities),
        ("preferred_capabilities", &request.preferred_capabilities),
    ] {
        v.capabilities(field, tags);
        if dedupe(tags).len() > MAX_TAGS {
            v.add(field, format!("holds at most {MAX_TAGS} tags"));
        }
    }
    if !(1..=5).contains(&request.priority) {
        v.add("priority", "must be from 1 (highest) to 5");
    }
    let recommend = match relay_proto::common::AssignmentMode::try_from(request.mode) {
        Ok(relay_proto::common::AssignmentMode::Recommend) => true,
        Ok(_) => false,
        Err(_) => {
            v.add("mode", format!("{} is not a known value", request.mode));
            false
        }
    };
    if let Some(seconds) = request.expected_duration_seconds
        && !(1..=86_400).contains(&seconds)
    {
        v.add(
            "expected_duration_seconds",
            "must be from 1 to 86400 seconds",
        );
    }
    if request.cad_incident_id.chars().count() > MAX_CAD_INCIDENT_ID {
        v.add(
            "cad_incident_id",
            format!("must be at most {MAX_CAD_INCIDENT_ID} characters"),
        );
    }
    v.finish()?;
    Ok(Params {
        incident_id: request.incident_id.clone(),
        region: request.region.clone(),
        location: location.unwrap_or_default(),
        required: dedupe(&request.required_capabilities),
        preferred: dedupe(&request.preferred_capabilities),
        priority: request.priority,
        recommend,
        expected_duration_seconds: request.expected_duration_seconds,
        cad_system: request.cad_system.clone(),
        cad_incident_id: request.cad_incident_id.clone(),
    })
}

/// Checks a ConfirmAssignment request.
///
/// # Errors
/// INVALID_ARGUMENT naming each bad field.
pub fn check_confirm_assignment(request: &ConfirmAssignmentRequest) -> Result<(), ApiError> {
    let mut v = Violations::new();
    v.id("request_id", &request.request_id);
    v.id("incident_id", &request.incident_id);
    v.id("team_id", &request.team_id);
    v.finish()
}

/// Checks a ReleaseTeam request.
///
/// # Errors
/// INVALID_ARGUMENT naming each bad field.
pub fn check_release_team(request: &ReleaseTeamRequest) -> Result<(), ApiError> {
    let mut v = Violations::new();
    v.id("request_id", &request.request_id);
    v.id("assignment_id", &request.assignment_id);
    if request.reason.chars().count() > MAX_REASON {
        v.add("reason", format!("must be at most {MAX_REASON} characters"));
    }
    v.finish()
}

/// Checks a CancelRouting request.
///
/// # Errors
/// INVALID_ARGUMENT naming each bad field.
pub fn check_cancel_routing(request: &CancelRoutingRequest) -> Result<(), ApiError> {
    let mut v = Violations::new();
    v.id("request_id", &request.request_id);
    v.id("incident_id", &request.incident_id);
    if request.reason.chars().count() > MAX_REASON {
        v.add("reason", format!("must be at most {MAX_REASON} characters"));
    }
    v.finish()
}

/// Checks a GetAssignment request.
///
/// # Errors
/// INVALID_ARGUMENT naming the bad field.
pub fn check_get_assignment(request: &GetAssignmentRequest) -> Result<(), ApiError> {
    let mut v = Violations::new();
    v.id("assignment_id", &request.assignment_id);
    v.finish()
}

/// Checks a ListQueue request's fields: the effective page size.
///
/// # Errors
/// INVALID_ARGUMENT naming each bad field.
pub fn check_list_queue(request: &ListQueueRequest) -> Result<usize, ApiError> {
    let mut v = Violations::new();
    v.id("region", &request.region);
    let size = v.page_size("page_size", request.page_size);
    v.finish()?;
    Ok(size)
}

/// Checks a WatchAssignments request's fields: the sequence number to resume after, if any.
///
/// # Errors
/// INVALID_ARGUMENT naming each bad field.
pub fn check_watch_assignments(request: &WatchAssignmentsRequest) -> Result<Option<i64>, ApiError> {
    let mut v = Violations::new();
    v.id("region", &request.region);
    let after = if request.after_event_id.is_empty() {
        None
    } else {
        match request.after_event_id.parse::<i64>() {
            Ok(seq) if seq >= 0 => Some(seq),
            _ => {
                v.add("after_event_id", "is not an event id this service issued");
                None
            }
        }
    };
    v.finish()?;
    Ok(after)
}

/// The validated parameters of an AssignTeam call.
#[derive(Debug, Clone)]
pub struct Params {
    /// The incident.
    pub incident_id: String,
    /// Its region.
    pub region: String,
    /// Where it is.
    pub location: GeoPoint,
    /// Capabilities a team must have, without duplicates.
    pub required: Vec<String>,
    /// Capabilities that rank a team higher, without duplicates.
    pub preferred: Vec<String>,
    /// 1 (highest) to 5.
    pub priority: i32,
    /// RECOMMEND rather than AUTO_ASSIGN.
    pub recommend: bool,
    /// How long the call is expected to take, seconds.
    pub expected_duration_seconds: Option<i32>,
    /// The CAD that sent it.
    pub cad_system: String,
    /// The CAD's own id of the incident.
    pub cad_incident_id: String,
}

impl Params {
    /// The incident as routing records it once ranked (state ROUTED).
    pub(super) fn routed(&self, version: i64, now: DateTime<Utc>) -> IncidentRecord {
        IncidentRecord {
            incident_id: self.incident_id.clone(),
            region: self.region.clone(),
            cad_system: self.cad_system.clone(),
            priority: self.priority,
            location: self.location,
            required_capabilities: self.required.clone(),
            preferred_capabilities: self.preferred.clone(),
            expected_duration_seconds: self.expected_duration_seconds,
            state: IncidentState::Routed,
            queued_time: None,
            escalate_time: None,
            unserved_reason: 0,
            version,
            update_time: now,
            cad_incident_id: self.cad_incident_id.clone(),
        }
    }
}

/// The remembered response of a request (the runtime's replay path; routing's records keep
/// no RPC column), unless the request_id was used for another request.
pub(super) fn replayed<R: Message + Default>(
    record: &RequestRecord,
    fingerprint: &str,
) -> Result<R, RoutingError> {
    idempotency::replay_stored("", &record.fingerprint, &record.response, fingerprint).map_err(
        |error| match error {
            ReplayError::Reused => RoutingError::RequestIdReused,
            ReplayError::Corrupt(e) => RoutingError::Store(StoreError::Backend(Box::new(e))),
        },
    )
}

pub(super) fn dedupe(tags: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for tag in tags {
        if !out.contains(tag) {
            out.push(tag.clone());
        }
    }
    out
}
