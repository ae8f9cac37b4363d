//! Validation of intake's requests: every field checked before anything is read or written,
//! INVALID_ARGUMENT naming each bad field. The handlers (and the fuzzer, `fuzz/`) call these
//! same functions; what they accept is what the domain logic and the stores rely on.

use relay_proto::{
    common::{AssignmentMode, UnservedReason},
    intake::{
        CancelIncidentRequest, CloseIncidentRequest, CloseOutcome, Disposition, GetIncidentRequest,
        IncidentState, ListIncidentsRequest, RiskFlag, RoutingState, SubmitIncidentRequest,
        UpdateIncidentRequest, WatchIncidentEventsRequest,
    },
};
use relay_runtime::{error::ApiError, idempotency::fingerprint, validate::Violations};

use crate::core::{IncidentUpdate, Intake, NewIncident};

/// Longest `cad_incident_id`.
pub const MAX_CAD_INCIDENT_ID: usize = 128;
/// Longest `incident_type`.
pub const MAX_INCIDENT_TYPE: usize = 32;
/// Longest address, in characters.
pub const MAX_ADDRESS: usize = 512;
/// Longest narrative, in bytes of UTF-8.
pub const MAX_NARRATIVE_BYTES: usize = 8192;
/// Longest note or closing notes, in bytes of UTF-8.
pub const MAX_NOTE_BYTES: usize = 4096;
/// Longest cancel reason, in characters.
pub const MAX_REASON: usize = 256;
/// Most capability tags in one list.
pub const MAX_TAGS: usize = 32;
/// Most referral ids on close.
pub const MAX_REFERRALS: usize = 50;
/// How far ahead of the server's clock received_at may be.
pub const MAX_FUTURE_MICROS: i64 = 60_000_000;
/// How far behind the server's clock received_at may be: a week (a live call, and within
/// the event history a CAD can resume from).
pub const MAX_PAST_MICROS: i64 = 7 * 86_400 * 1_000_000;

fn check_len(v: &mut Violations, field: &str, value: &str, max_chars: usize) {
    if value.chars().count() > max_chars {
        v.add(field, format!("must be at most {max_chars} characters"));
    }
}

fn check_bytes(v: &mut Violations, field: &str, value: &str, max_bytes: usize) {
    if value.len() > max_bytes {
        v.add(field, format!("must be at most {max_bytes} bytes of UTF-8"));
    }
}

fn check_incident_type(v: &mut Violations, field: &str, value: &str) {
    if value.is_empty() {
        v.add(field, "is required");
    } else if value.chars().count() > MAX_INCIDENT_TYPE {
        v.add(
            field,
            format!("must be at most {MAX_INCIDENT_TYPE} characters"),
        );
    } else if value.chars().any(char::is_control) {
        v.add(field, "must not contain control characters");
    }
}

fn check_priority(v: &mut Violations, field: &str, value: i32) {
    if !(1..=5).contains(&value) {
        v.add(field, "must be from 1 (highest) to 5");
    }
}

fn check_flags(v: &mut Violations, field: &str, values: &[i32]) -> Vec<RiskFlag> {
    let mut flags = Vec::new();
    for (index, value) in values.iter().enumerate() {
        match RiskFlag::try_from(*value) {
            Ok(RiskFlag::Unspecified) => v.add(
                format!("{field}[{index}]"),
                "must not be RISK_FLAG_UNSPECIFIED",
            ),
            Ok(flag) if flags.contains(&flag) => {
                v.add(format!("{field}[{index}]"), "repeats a flag already given");
            }
            Ok(flag) => flags.push(flag),
            Err(_) => v.add(
                format!("{field}[{index}]"),
                format!("{value} is not a known risk flag"),
            ),
        }
    }
    flags
}

fn check_tags(v: &mut Violations, field: &str, tags: &[String]) -> Vec<String> {
    if tags.len() > MAX_TAGS {
        v.add(field, format!("must hold at most {MAX_TAGS} tags"));
    }
    v.capabilities(field, tags);
    let mut unique: Vec<String> = Vec::new();
    for tag in tags {
        if !unique.contains(tag) {
            unique.push(tag.clone());
        }
    }
    unique
}

fn check_cad_incident_id(v: &mut Violations, field: &str, value: &str) {
    if value.is_empty() {
        v.add(field, "is required");
    } else if value.len() > MAX_CAD_INCIDENT_ID {
        v.add(
            field,
            format!("must be at most {MAX_CAD_INCIDENT_ID} characters"),
        );
    } else if !value.bytes().all(|b| b.is_ascii_graphic()) {
        v.add(field, "must be printable ASCII without spaces");
    }
}

pub(crate) fn validate_submit(
    intake: &Intake,
    request: SubmitIncidentRequest,
) -> Result<NewIncident, ApiError> {
    let new = check_submit(request, intake.clock.now_micros())?;
    if !intake.region_known(&new.region) {
        return Err(ApiError::invalid_with_reason(
            "REGION_UNKNOWN",
            "region",
            "is not a region this deployment serves",
        ));
    }
    Ok(new)
}

/// Checks a SubmitIncident request's fields, `now` being the server's clock in microseconds
/// (whether the region is served is checked after, against the deployment).
///
/// # Errors
/// INVALID_ARGUMENT naming each bad field.
pub fn check_submit(request: SubmitIncidentRequest, now: i64) -> Result<NewIncident, ApiError> {
    let mut v = Violations::new();
    v.id("cad_system", &request.cad_system);
    check_cad_incident_id(&mut v, "cad_incident_id", &request.cad_incident_id);
    check_incident_type(&mut v, "incident_type", &request.incident_type);
    check_priority(&mut v, "priority", request.priority);
    let location = v.geo_point("location", request.location.as_ref());
    check_len(&mut v, "address", &request.address, MAX_ADDRESS);
    v.id("region", &request.region);
    check_bytes(&mut v, "narrative", &request.narrative, MAX_NARRATIVE_BYTES);
    let risk_flags = check_flags(&mut v, "risk_flags", &request.risk_flags);
    let received_at = if request.received_at.is_none() {
        v.add("received_at", "is required");
        None
    } else {
        v.timestamp("received_at", request.received_at.as_ref())
    };
    if let Some(received) = received_at {
        if received.timestamp_micros() > now + MAX_FUTURE_MICROS {
            v.add(
                "received_at",
                "must not be more than 60 seconds ahead of the server's clock",
            );
        } else if received.timestamp_micros() < now - MAX_PAST_MICROS {
            v.add(
                "received_at",
                "must not be more than 7 days behind the server's clock",
            );
        }
    }
    if let Some(caller) = &request.caller {
        check_len(&mut v, "caller.name", &caller.name, 200);
        check_len(&mut v, "caller.phone", &caller.phone, 32);
        if let Some(callback) = &caller.callback_number {
            check_len(&mut v, "caller.callback_number", callback, 32);
        }
    }
    let required = check_tags(
        &mut v,
        "required_capabilities",
        &request.required_capabilities,
    );
    let preferred = check_tags(
        &mut v,
        "preferred_capabilities",
        &request.preferred_capabilities,
    );
    let routing_mode = match request.routing_mode {
        0 => Some(AssignmentMode::AutoAssign),
        value => v.enum_value::<AssignmentMode>("routing_mode", value),
    };
    v.finish()?;
    let (Some(location), Some(received_at), Some(routing_mode)) =
        (location, received_at, routing_mode)
    else {
        return Err(ApiError::invalid("request", "is incomplete"));
    };
    Ok(NewIncident {
        cad_system: request.cad_system,
        cad_incident_id: request.cad_incident_id,
        incident_type: request.incident_type,
        priority: request.priority,
        location,
        address: request.address,
        region: request.region,
        narrative: request.narrative,
        risk_flags,
        received_at: received_at.timestamp_micros(),
        caller: request.caller,
        required_capabilities: required,
        preferred_capabilities: preferred,
        routing_mode,
    })
}

/// Checks an UpdateIncident request and turns it into an [`IncidentUpdate`].
///
/// # Errors
/// INVALID_ARGUMENT naming each bad field.
pub fn validate_update(request: &UpdateIncidentRequest) -> Result<IncidentUpdate, ApiError> {
    let mut v = Violations::new();
    v.id("request_id", &request.request_id);
    v.id("incident_id", &request.incident_id);
    if request.expected_revision < 0 {
        v.add("expected_revision", "must not be negative");
    }
    let add_risk_flags = check_flags(&mut v, "add_risk_flags", &request.add_risk_flags);
    let location = request
        .location
        .as_ref()
        .and_then(|point| v.geo_point("location", Some(point)));
    if let Some(address) = &request.address {
        check_len(&mut v, "address", address, MAX_ADDRESS);
    }
    if let Some(priority) = request.priority {
        check_priority(&mut v, "priority", priority);
    }
    if let Some(incident_type) = &request.incident_type {
        check_incident_type(&mut v, "incident_type", incident_type);
    }
    if let Some(notes) = &request.notes {
        if notes.is_empty() {
            v.add("notes", "must not be empty when set");
        }
        check_bytes(&mut v, "notes", notes, MAX_NOTE_BYTES);
    }
    let override_disposition = request
        .override_disposition
        .and_then(|value| v.enum_value::<Disposition>("override_disposition", value));
    v.finish()?;
    Ok(IncidentUpdate {
        request_id: request.request_id.clone(),
        fingerprint: fingerprint("UpdateIncident", request),
        incident_id: request.incident_id.clone(),
        expected_revision: request.expected_revision,
        add_risk_flags,
        location,
        address: request.address.clone(),
        priority: request.priority,
        incident_type: request.incident_type.clone(),
        note: request.notes.clone(),
        override_disposition,
    })
}

/// Checks a CancelIncident request.
///
/// # Errors
/// INVALID_ARGUMENT naming each bad field.
pub fn check_cancel(request: &CancelIncidentRequest) -> Result<(), ApiError> {
    let mut v = Violations::new();
    v.id("request_id", &request.request_id);
    v.id("incident_id", &request.incident_id);
    check_len(&mut v, "reason", &request.reason, MAX_REASON);
    v.finish()
}

/// Checks a CloseIncident request.
///
/// # Errors
/// INVALID_ARGUMENT naming each bad field.
pub fn check_close(request: &CloseIncidentRequest) -> Result<(), ApiError> {
    let mut v = Violations::new();
    v.id("request_id", &request.request_id);
    v.id("incident_id", &request.incident_id);
    let _ = v.enum_value::<CloseOutcome>("outcome", request.outcome);
    if request.referral_ids.len() > MAX_REFERRALS {
        v.add(
            "referral_ids",
            format!("must hold at most {MAX_REFERRALS} ids"),
        );
    }
    for (index, id) in request.referral_ids.iter().enumerate() {
        v.id(&format!("referral_ids[{index}]"), id);
    }
    check_bytes(&mut v, "notes", &request.notes, MAX_NOTE_BYTES);
    v.finish()
}

/// Checks a GetIncident request: whether it asks by incident id (else by CAD id).
///
/// # Errors
/// INVALID_ARGUMENT naming each bad field.
pub fn check_get_incident(request: &GetIncidentRequest) -> Result<bool, ApiError> {
    let mut v = Violations::new();
    let by_id = !request.incident_id.is_empty();
    let by_cad = !request.cad_system.is_empty() || !request.cad_incident_id.is_empty();
    if by_id && by_cad {
        v.add(
            "incident_id",
            "give either incident_id or cad_system with cad_incident_id, not both",
        );
    } else if by_id {
        v.id("incident_id", &request.incident_id);
    } else {
        v.id("cad_system", &request.cad_system);
        check_cad_incident_id(&mut v, "cad_incident_id", &request.cad_incident_id);
    }
    v.finish()?;
    Ok(by_id)
}

/// The checked filters of a ListIncidents request.
#[derive(Debug, Clone, Copy)]
pub struct ListBounds {
    /// `received_after`.
    pub after: Option<chrono::DateTime<chrono::Utc>>,
    /// `received_before`.
    pub before: Option<chrono::DateTime<chrono::Utc>>,
    /// The effective page size.
    pub page_size: usize,
}

/// Checks a ListIncidents request.
///
/// # Errors
/// INVALID_ARGUMENT naming each bad field.
pub fn check_list_incidents(request: &ListIncidentsRequest) -> Result<ListBounds, ApiError> {
    let mut v = Violations::new();
    v.optional_id("cad_system", &request.cad_system);
    v.optional_id("region", &request.region);
    if request.state != 0 && IncidentState::try_from(request.state).is_err() {
        v.add("state", format!("{} is not a known value", request.state));
    }
    if request.disposition != 0 && Disposition::try_from(request.disposition).is_err() {
        v.add(
            "disposition",
            format!("{} is not a known value", request.disposition),
        );
    }
    if request.routing_state != 0 && RoutingState::try_from(request.routing_state).is_err() {
        v.add(
            "routing_state",
            format!("{} is not a known value", request.routing_state),
        );
    }
    if request.unserved_reason != 0 && UnservedReason::try_from(request.unserved_reason).is_err() {
        v.add(
            "unserved_reason",
            format!("{} is not a known value", request.unserved_reason),
        );
    }
    let after = v.timestamp("received_after", request.received_after.as_ref());
    let before = v.timestamp("received_before", request.received_before.as_ref());
    if let (Some(after), Some(before)) = (after, before)
        && after >= before
    {
        v.add("received_after", "must be before received_before");
    }
    let page_size = v.page_size("page_size", request.page_size);
    v.finish()?;
    Ok(ListBounds {
        after,
        before,
        page_size,
    })
}

/// Checks a WatchIncidentEvents request.
///
/// # Errors
/// INVALID_ARGUMENT naming each bad field.
pub fn check_watch(request: &WatchIncidentEventsRequest) -> Result<(), ApiError> {
    let mut v = Violations::new();
    v.id("cad_system", &request.cad_system);
    if request.after_sequence < 0 {
        v.add("after_sequence", "must not be negative");
    }
    v.finish()
}
