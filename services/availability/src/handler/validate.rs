//! The request validators of the availability handler (pub `check_*`, also used by the fuzz
//! targets), and the conversions of a location report they share.

use super::*;

pub(super) fn display_name(v: &mut Violations, value: &str) {
    let length = value.chars().count();
    if length == 0 || value.trim().is_empty() {
        v.add("display_name", "is required");
    } else if length > MAX_DISPLAY_NAME {
        v.add(
            "display_name",
            format!("must be at most {MAX_DISPLAY_NAME} characters"),
        );
    } else if value.chars().any(char::is_control) {
        v.add("display_name", "must not contain control characters");
    }
}

/// Checks a list of capability tags and returns it sorted without duplicates.
pub(super) fn capabilities(v: &mut Violations, field: &str, tags: &[String]) -> Vec<String> {
    if tags.len() > MAX_CAPABILITIES {
        v.add(field, format!("holds at most {MAX_CAPABILITIES} tags"));
    }
    v.capabilities(field, tags);
    let mut sorted: Vec<String> = tags.iter().filter(|t| is_capability(t)).cloned().collect();
    sorted.sort();
    sorted.dedup();
    sorted
}

pub(super) fn expected_revision(v: &mut Violations, value: i64) -> Option<i64> {
    if value < 0 {
        v.add("expected_revision", "must be 0 (no check) or a revision");
    }
    (value > 0).then_some(value)
}

/// The fields of one position report, shared by ReportLocation and StreamLocations.
#[derive(Debug, Clone, Copy)]
pub struct ReportFields<'a> {
    team_id: &'a str,
    location: Option<&'a GeoPoint>,
    recorded_at: Option<&'a prost_types::Timestamp>,
    heading: Option<f64>,
    speed: Option<f64>,
    accuracy: Option<f64>,
}

impl<'a> ReportFields<'a> {
    /// The fields of a ReportLocation request.
    #[must_use]
    pub fn of_request(r: &'a ReportLocationRequest) -> Self {
        Self {
            team_id: &r.team_id,
            location: r.location.as_ref(),
            recorded_at: r.recorded_at.as_ref(),
            heading: r.heading_degrees,
            speed: r.speed_meters_per_second,
            accuracy: r.accuracy_meters,
        }
    }

    /// The fields of one StreamLocations message.
    #[must_use]
    pub fn of_message(m: &'a StreamLocationsRequest) -> Self {
        Self {
            team_id: &m.team_id,
            location: m.location.as_ref(),
            recorded_at: m.recorded_at.as_ref(),
            heading: m.heading_degrees,
            speed: m.speed_meters_per_second,
            accuracy: m.accuracy_meters,
        }
    }
}

/// Checks one position report as ReportLocation and StreamLocations do, `now` being the
/// server's clock.
///
/// # Errors
/// INVALID_ARGUMENT naming each bad field.
pub fn check_location(
    fields: &ReportFields<'_>,
    now: DateTime<Utc>,
) -> Result<LocationReport, ApiError> {
    let mut v = Violations::new();
    let report = location_report(&mut v, fields, now);
    v.finish()?;
    report.ok_or_else(|| ApiError::invalid("location", "is required"))
}

pub(super) fn location_report(
    v: &mut Violations,
    fields: &ReportFields<'_>,
    now: DateTime<Utc>,
) -> Option<LocationReport> {
    v.id("team_id", fields.team_id);
    let point = v.geo_point("location", fields.location);
    let recorded_at = if fields.recorded_at.is_none() {
        v.add("recorded_at", "is required");
        None
    } else {
        v.timestamp("recorded_at", fields.recorded_at)
    };
    if let Some(at) = recorded_at
        && at > now + MAX_CLOCK_SKEW
    {
        v.add(
            "recorded_at",
            "is more than 60 seconds ahead of the server's clock",
        );
    }
    if let Some(heading) = fields.heading
        && !(heading.is_finite() && (0.0..360.0).contains(&heading))
    {
        v.add("heading_degrees", "must be a number in [0, 360)");
    }
    if let Some(speed) = fields.speed
        && !(speed.is_finite() && speed >= 0.0)
    {
        v.add("speed_meters_per_second", "must be a finite number >= 0");
    }
    if let Some(accuracy) = fields.accuracy
        && !(accuracy.is_finite() && accuracy >= 0.0)
    {
        v.add("accuracy_meters", "must be a finite number >= 0");
    }
    if !v.is_empty() {
        return None;
    }
    Some(LocationReport {
        team_id: fields.team_id.to_owned(),
        position: point.map(|p| Position {
            latitude: p.latitude,
            longitude: p.longitude,
        })?,
        recorded_at: recorded_at?,
        heading_degrees: fields.heading,
        speed_meters_per_second: fields.speed,
        accuracy_meters: fields.accuracy,
    })
}

pub(super) fn violations_of(error: ApiError) -> Vec<FieldViolation> {
    match error {
        ApiError::InvalidArgument { violations, .. } => violations,
        _ => Vec::new(),
    }
}

/// The answer of a mutation run once per request_id: the change's outcome, applied now or
/// replayed from its record (written in the same step as the change, by the live store);
/// a different request under the same id is REQUEST_ID_REUSED.
pub(super) fn once<T>(recorded: Recorded<T>) -> Result<(T, bool), Status> {
    match recorded {
        Recorded::Applied(outcome) => Ok((outcome, true)),
        Recorded::Replayed(outcome) => Ok((outcome, false)),
        Recorded::Reused => Err(status(ApiError::invalid_with_reason(
            REQUEST_ID_REUSED,
            "request_id",
            "was already used for a different request",
        ))),
    }
}

pub(super) fn reject(
    summary: &mut StreamLocationsResponse,
    index: i64,
    team_id: String,
    field: &str,
    reason: &str,
    description: &str,
) {
    summary.rejected_count += 1;
    if reason == ApiError::INVALID_FIELD {
        crate::metrics::record_invalid_report();
    }
    // Kept past the limit until the batch is applied; `apply_batch` orders and trims them.
    if summary.rejections.len() < MAX_REJECTIONS + STREAM_BATCH {
        summary.rejections.push(LocationRejection {
            index,
            team_id,
            field: field.to_owned(),
            reason: reason.to_owned(),
            description: description.to_owned(),
        });
    }
}

/// Checks an UpsertTeam request: the team it defines and the expected revision (if any).
///
/// # Errors
/// INVALID_ARGUMENT naming each bad field.
pub fn check_upsert_team(
    request: &UpsertTeamRequest,
) -> Result<(TeamDefinition, Option<i64>), ApiError> {
    let mut v = Violations::new();
    v.id("request_id", &request.request_id);
    v.id("team_id", &request.team_id);
    display_name(&mut v, &request.display_name);
    v.id("region", &request.region);
    let tags = capabilities(&mut v, "capabilities", &request.capabilities);
    let shift_ends_at = v.timestamp("shift_ends_at", request.shift_ends_at.as_ref());
    let expected = expected_revision(&mut v, request.expected_revision);
    v.finish()?;
    let definition = TeamDefinition {
        team_id: request.team_id.clone(),
        display_name: request.display_name.clone(),
        region: request.region.clone(),
        capabilities: tags,
        shift_ends_at,
    };
    Ok((definition, expected))
}

/// Checks a GetTeam request.
///
/// # Errors
/// INVALID_ARGUMENT naming the bad field.
pub fn check_get_team(request: &GetTeamRequest) -> Result<(), ApiError> {
    let mut v = Violations::new();
    v.id("team_id", &request.team_id);
    v.finish()
}

/// Checks a ListTeams request: the status filter and the page size.
///
/// # Errors
/// INVALID_ARGUMENT naming each bad field.
pub fn check_list_teams(
    request: &ListTeamsRequest,
) -> Result<(Option<TeamStatus>, usize), ApiError> {
    let mut v = Violations::new();
    v.optional_id("region", &request.region);
    let status_filter = if request.status == 0 {
        None
    } else {
        v.enum_value::<TeamStatus>("status", request.status)
    };
    let size = v.page_size("page_size", request.page_size);
    v.finish()?;
    Ok((status_filter, size))
}

/// Checks a SetTeamStatus request: the target status and the expected revision (if any).
///
/// # Errors
/// INVALID_ARGUMENT naming each bad field.
pub fn check_set_team_status(
    request: &SetTeamStatusRequest,
) -> Result<(TeamStatus, Option<i64>), ApiError> {
    let mut v = Violations::new();
    v.id("request_id", &request.request_id);
    v.id("team_id", &request.team_id);
    let target = v.enum_value::<TeamStatus>("status", request.status);
    if target.is_some_and(is_busy) {
        v.id("incident_id", &request.incident_id);
    } else {
        v.optional_id("incident_id", &request.incident_id);
    }
    let expected = expected_revision(&mut v, request.expected_revision);
    v.finish()?;
    let target = target.ok_or_else(|| ApiError::invalid("status", "is required"))?;
    Ok((target, expected))
}

/// Checks a FindAvailableTeams request: the point, the required tags (sorted, without
/// duplicates) and the effective limit.
///
/// # Errors
/// INVALID_ARGUMENT naming each bad field.
pub fn check_find_available_teams(
    request: &FindAvailableTeamsRequest,
) -> Result<(GeoPoint, Vec<String>, usize), ApiError> {
    let mut v = Violations::new();
    v.id("region", &request.region);
    let point = v.geo_point("location", request.location.as_ref());
    if !(request.radius_meters.is_finite()
        && request.radius_meters > 0.0
        && request.radius_meters <= MAX_RADIUS_METERS)
    {
        v.add("radius_meters", "must be greater than 0 and at most 100000");
    }
    let required = capabilities(
        &mut v,
        "required_capabilities",
        &request.required_capabilities,
    );
    let limit = match usize::try_from(request.limit) {
        Err(_) => {
            v.add("limit", "must not be negative");
            0
        }
        Ok(0) => DEFAULT_LIMIT,
        Ok(limit) => limit.min(MAX_LIMIT),
    };
    v.finish()?;
    let point = point.ok_or_else(|| ApiError::invalid("location", "is required"))?;
    Ok((point, required, limit))
}

/// Checks a WatchTeams request: the event to resume after, if any.
///
/// # Errors
/// INVALID_ARGUMENT naming each bad field.
pub fn check_watch_teams(request: &WatchTeamsRequest) -> Result<Option<EventId>, ApiError> {
    let mut v = Violations::new();
    v.id("region", &request.region);
    let after = if request.after_event_id.is_empty() {
        None
    } else {
        let parsed = EventId::parse(&request.after_event_id);
        if parsed.is_none() {
            v.add("after_event_id", "is not an event id this service issued");
        }
        parsed
    };
    v.finish()?;
    Ok(after)
}
