//! The gRPC handlers of `relay.availability.v1.AvailabilityService`: validate every request
//! first (INVALID_ARGUMENT naming each bad field, nothing written), convert to the domain,
//! call [`Availability`], convert back. Errors become `Status` only through [`ApiError`].

use std::{pin::Pin, time::Duration};

use chrono::{DateTime, Utc};
use futures::{FutureExt, Stream, StreamExt};
use relay_proto::{
    availability::{
        self as pb, FindAvailableTeamsRequest, FindAvailableTeamsResponse, GetTeamRequest,
        GetTeamResponse, ListTeamsRequest, ListTeamsResponse, LocationRejection,
        ReportLocationRequest, ReportLocationResponse, SetTeamStatusRequest, SetTeamStatusResponse,
        StreamLocationsRequest, StreamLocationsResponse, TeamEventKind, TeamMatch,
        UpsertTeamRequest, UpsertTeamResponse, WatchTeamsRequest, WatchTeamsResponse,
        availability_service_server::AvailabilityService,
    },
    common::GeoPoint,
};
use relay_runtime::{
    ApiError, FieldViolation,
    audit::AuditRecord,
    idempotency,
    paging::PageTokens,
    security::auth::{Principal, REGION_NOT_ALLOWED, TEAM_NOT_ALLOWED},
    validate::{Violations, is_capability, to_timestamp},
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use relay_fleet::{
    LocationOutcome, LocationReport, Recorded, RequestRecord,
    model::{EventId, EventKind, Position, Team, TeamDefinition, TeamStatus, is_busy},
};

use crate::{
    DOMAIN,
    error::{AvailabilityError, REQUEST_ID_REUSED, SHUTTING_DOWN, TEAM_NOT_FOUND},
    service::Availability,
};

/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME: usize = 100;
/// Most capability tags on one team or request.
pub const MAX_CAPABILITIES: usize = 32;
/// How far ahead of the server's clock a `recorded_at` may be.
pub const MAX_CLOCK_SKEW: chrono::Duration = chrono::Duration::seconds(60);
/// Largest FindAvailableTeams radius, meters.
pub const MAX_RADIUS_METERS: f64 = 100_000.0;
/// Default and largest FindAvailableTeams limit.
pub const DEFAULT_LIMIT: usize = 10;
/// Largest FindAvailableTeams limit.
pub const MAX_LIMIT: usize = 100;
/// Reports applied in one store call by StreamLocations.
const STREAM_BATCH: usize = 256;
/// Rejections described in a StreamLocations answer.
const MAX_REJECTIONS: usize = 100;
/// How long one WatchTeams read waits for events before checking for shutdown again.
const WATCH_BLOCK: Duration = Duration::from_secs(5);
/// How long request ids are remembered.
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

/// Handles `relay.availability.v1.AvailabilityService` calls.
#[derive(Debug, Clone)]
pub struct AvailabilityServiceHandler {
    domain: Availability,
    pages: PageTokens,
    shutdown: CancellationToken,
    stream_max_age: Duration,
}

impl AvailabilityServiceHandler {
    /// A handler over `domain`, signing page tokens with `pages`; streams end when `shutdown`
    /// is cancelled, and StreamLocations answers early once a stream is `stream_max_age` old
    /// (the server's request timeout bounds a whole client stream).
    #[must_use]
    pub fn new(
        domain: Availability,
        pages: PageTokens,
        shutdown: CancellationToken,
        stream_max_age: Duration,
    ) -> Self {
        Self {
            domain,
            pages,
            shutdown,
            stream_max_age,
        }
    }
}

/// The full method of UpsertTeam, as audit records name it.
const UPSERT_TEAM: &str = "/relay.availability.v1.AvailabilityService/UpsertTeam";

/// The caller of `request`, as the auth layer established it.
fn principal<T>(request: &Request<T>) -> Result<Principal, Status> {
    Principal::of_call(request, DOMAIN)
}

fn status(error: impl Into<ApiError>) -> Status {
    error.into().into_status(DOMAIN)
}

fn api(error: AvailabilityError) -> Status {
    status(ApiError::from(error))
}

/// The proto form of a team.
#[must_use]
pub fn team_to_proto(team: &Team) -> pb::Team {
    pb::Team {
        team_id: team.team_id.clone(),
        display_name: team.display_name.clone(),
        region: team.region.clone(),
        capabilities: team.capabilities.clone(),
        status: team.status as i32,
        location: team.location.map(|p| GeoPoint {
            latitude: p.latitude,
            longitude: p.longitude,
        }),
        location_updated_at: team.location_updated_at.map(to_timestamp),
        incident_id: team.incident_id.clone(),
        shift_ends_at: team.shift_ends_at.map(to_timestamp),
        revision: team.revision,
        create_time: Some(to_timestamp(team.create_time)),
        update_time: Some(to_timestamp(team.update_time)),
    }
}

fn event_kind(kind: EventKind) -> TeamEventKind {
    match kind {
        EventKind::Upserted => TeamEventKind::Upserted,
        EventKind::StatusChanged => TeamEventKind::StatusChanged,
        EventKind::LocationChanged => TeamEventKind::LocationChanged,
        EventKind::Removed => TeamEventKind::Removed,
    }
}

fn display_name(v: &mut Violations, value: &str) {
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
fn capabilities(v: &mut Violations, field: &str, tags: &[String]) -> Vec<String> {
    if tags.len() > MAX_CAPABILITIES {
        v.add(field, format!("holds at most {MAX_CAPABILITIES} tags"));
    }
    v.capabilities(field, tags);
    let mut sorted: Vec<String> = tags.iter().filter(|t| is_capability(t)).cloned().collect();
    sorted.sort();
    sorted.dedup();
    sorted
}

fn expected_revision(v: &mut Violations, value: i64) -> Option<i64> {
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

fn location_report(
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

fn violations_of(error: ApiError) -> Vec<FieldViolation> {
    match error {
        ApiError::InvalidArgument { violations, .. } => violations,
        _ => Vec::new(),
    }
}

/// The answer of a mutation run once per request_id: the change's outcome, applied now or
/// replayed from its record (written in the same step as the change, by the live store);
/// a different request under the same id is REQUEST_ID_REUSED.
fn once<T>(recorded: Recorded<T>) -> Result<(T, bool), Status> {
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

impl AvailabilityServiceHandler {
    /// Tenancy of a report for `team_id` (status, position): a team-bound principal reports
    /// for its own team only (TEAM_NOT_ALLOWED), a region-bound one for the teams of its
    /// regions only (REGION_NOT_ALLOWED, which reads the team's region; an unknown team is
    /// TEAM_NOT_FOUND as it would be anyway).
    async fn require_reporter(&self, principal: &Principal, team_id: &str) -> Result<(), Status> {
        principal.require_team(team_id)?;
        if principal.is_region_bound() {
            let team = self.domain.get(team_id).await.map_err(api)?;
            principal.require_region(&team.region)?;
        }
        Ok(())
    }

    /// Why a StreamLocations report for `team_id` is refused by tenancy, if it is: the
    /// rejection's reason and description. `regions` caches the teams' regions for the
    /// stream; an unknown team is left to the batch (TEAM_NOT_FOUND).
    async fn refusal_of(
        &self,
        principal: &Principal,
        team_id: &str,
        regions: &mut std::collections::HashMap<String, Option<String>>,
    ) -> Result<Option<(&'static str, &'static str)>, Status> {
        if principal.require_team(team_id).is_err() {
            return Ok(Some((
                TEAM_NOT_ALLOWED,
                "the credential is bound to another team",
            )));
        }
        if !principal.is_region_bound() {
            return Ok(None);
        }
        if !regions.contains_key(team_id) {
            let region = match self.domain.get(team_id).await {
                Ok(team) => Some(team.region),
                Err(AvailabilityError::TeamNotFound) => None,
                Err(error) => return Err(api(error)),
            };
            regions.insert(team_id.to_owned(), region);
        }
        Ok(match regions.get(team_id).cloned().flatten() {
            Some(region) if !principal.allows_region(&region) => Some((
                REGION_NOT_ALLOWED,
                "the credential is limited to other regions",
            )),
            _ => None,
        })
    }

    async fn apply_batch(
        &self,
        batch: &mut Vec<(i64, LocationReport)>,
        summary: &mut StreamLocationsResponse,
    ) -> Result<(), Status> {
        if batch.is_empty() {
            summary.rejections.sort_by_key(|r| r.index);
            summary.rejections.truncate(MAX_REJECTIONS);
            return Ok(());
        }
        let reports: Vec<LocationReport> = batch.iter().map(|(_, r)| r.clone()).collect();
        let outcomes = self.domain.report(&reports).await.map_err(api)?;
        for ((index, report), outcome) in batch.drain(..).zip(outcomes) {
            match outcome {
                LocationOutcome::Accepted { .. } => summary.accepted_count += 1,
                LocationOutcome::Stale { .. } => summary.stale_count += 1,
                LocationOutcome::NotFound => reject(
                    summary,
                    index,
                    report.team_id,
                    "team_id",
                    TEAM_NOT_FOUND,
                    "no team has this team_id",
                ),
            }
        }
        // Field rejections were recorded before the batch ran: restore stream order.
        summary.rejections.sort_by_key(|r| r.index);
        summary.rejections.truncate(MAX_REJECTIONS);
        Ok(())
    }
}

fn reject(
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

#[derive(serde::Serialize, serde::Deserialize)]
struct ListCursor {
    after: String,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchTeamsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AvailabilityService for AvailabilityServiceHandler {
    async fn upsert_team(
        &self,
        request: Request<UpsertTeamRequest>,
    ) -> Result<Response<UpsertTeamResponse>, Status> {
        let principal = principal(&request)?;
        let audit = AuditRecord::of_call(
            &request,
            UPSERT_TEAM,
            vec![format!("team:{}", request.get_ref().team_id)],
        );
        let request = request.into_inner();
        let (definition, expected) = check_upsert_team(&request).map_err(status)?;
        // A team-bound credential changes only its own team; a region-bound one only teams
        // of its regions, and moves none into or out of another.
        principal.require_team(&request.team_id)?;
        principal.require_region(&request.region)?;
        if principal.is_region_bound() {
            match self.domain.get(&request.team_id).await {
                Ok(existing) => principal.require_region(&existing.region)?,
                Err(AvailabilityError::TeamNotFound) => {}
                Err(error) => return Err(api(error)),
            }
        }
        let fingerprint = idempotency::fingerprint(
            "UpsertTeam",
            &UpsertTeamRequest {
                request_id: String::new(),
                ..request.clone()
            },
        );
        let record = RequestRecord {
            rpc: "upsert_team",
            request_id: &request.request_id,
            fingerprint: &fingerprint,
            ttl: IDEMPOTENCY_TTL,
        };
        let recorded = self
            .domain
            .upsert_audited(&definition, expected, &record, Some(&audit))
            .await
            .map_err(api)?;
        let (outcome, applied) = once(recorded)?;
        if applied {
            tracing::info!(
                team_id = %outcome.team.team_id,
                region = %outcome.team.region,
                revision = outcome.team.revision,
                created = outcome.created,
                "team upserted"
            );
        }
        Ok(Response::new(UpsertTeamResponse {
            team: Some(team_to_proto(&outcome.team)),
            created: outcome.created,
        }))
    }

    async fn get_team(
        &self,
        request: Request<GetTeamRequest>,
    ) -> Result<Response<GetTeamResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        check_get_team(&request).map_err(status)?;
        let team = self.domain.get(&request.team_id).await.map_err(api)?;
        principal.require_region(&team.region)?;
        Ok(Response::new(GetTeamResponse {
            team: Some(team_to_proto(&team)),
        }))
    }

    async fn list_teams(
        &self,
        request: Request<ListTeamsRequest>,
    ) -> Result<Response<ListTeamsResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let (status_filter, size) = check_list_teams(&request).map_err(status)?;
        // A region-bound credential: a named region must be one of its own; with none named,
        // the page is filtered to its regions (a page may then hold fewer teams, even none,
        // with a next_page_token: keep paging).
        if !request.region.is_empty() {
            principal.require_region(&request.region)?;
        }
        let scope = format!("region={}&status={}", request.region, request.status);
        let cursor: Option<ListCursor> = self
            .pages
            .decode("page_token", &scope, &request.page_token)
            .map_err(status)?;
        let region = (!request.region.is_empty()).then_some(request.region.as_str());
        let page = self
            .domain
            .list(
                region,
                status_filter,
                cursor.as_ref().map(|c| c.after.as_str()),
                size,
            )
            .await
            .map_err(api)?;
        let next_page_token = match (page.more, page.teams.last()) {
            (true, Some(last)) => self.pages.encode(
                &scope,
                &ListCursor {
                    after: last.team_id.clone(),
                },
            ),
            _ => String::new(),
        };
        Ok(Response::new(ListTeamsResponse {
            teams: page
                .teams
                .iter()
                .filter(|team| principal.allows_region(&team.region))
                .map(team_to_proto)
                .collect(),
            next_page_token,
        }))
    }

    async fn set_team_status(
        &self,
        request: Request<SetTeamStatusRequest>,
    ) -> Result<Response<SetTeamStatusResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let (target, expected) = check_set_team_status(&request).map_err(status)?;
        self.require_reporter(&principal, &request.team_id).await?;
        // The incident matters only for busy targets and for clearing to AVAILABLE.
        let incident = if is_busy(target) || target == TeamStatus::Available {
            request.incident_id.as_str()
        } else {
            ""
        };
        let fingerprint = idempotency::fingerprint(
            "SetTeamStatus",
            &SetTeamStatusRequest {
                request_id: String::new(),
                ..request.clone()
            },
        );
        let record = RequestRecord {
            rpc: "set_team_status",
            request_id: &request.request_id,
            fingerprint: &fingerprint,
            ttl: IDEMPOTENCY_TTL,
        };
        let recorded = self
            .domain
            .set_status(&request.team_id, target, incident, expected, &record)
            .await
            .map_err(api)?;
        let ((team, changed), applied) = once(recorded)?;
        if applied && changed {
            tracing::info!(
                team_id = %team.team_id,
                status = target.as_str_name(),
                revision = team.revision,
                "team status changed"
            );
        }
        Ok(Response::new(SetTeamStatusResponse {
            team: Some(team_to_proto(&team)),
        }))
    }

    async fn report_location(
        &self,
        request: Request<ReportLocationRequest>,
    ) -> Result<Response<ReportLocationResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let report = check_location(&ReportFields::of_request(&request), self.domain.now())
            .map_err(status)?;
        self.require_reporter(&principal, &request.team_id).await?;
        let outcome = self
            .domain
            .report(std::slice::from_ref(&report))
            .await
            .map_err(api)?;
        match outcome.first() {
            Some(LocationOutcome::Accepted { revision }) => {
                Ok(Response::new(ReportLocationResponse {
                    accepted: true,
                    stale: false,
                    revision: *revision,
                }))
            }
            Some(LocationOutcome::Stale { revision }) => {
                Ok(Response::new(ReportLocationResponse {
                    accepted: false,
                    stale: true,
                    revision: *revision,
                }))
            }
            _ => Err(api(AvailabilityError::TeamNotFound)),
        }
    }

    async fn stream_locations(
        &self,
        request: Request<Streaming<StreamLocationsRequest>>,
    ) -> Result<Response<StreamLocationsResponse>, Status> {
        let principal = principal(&request)?;
        let mut stream = request.into_inner();
        let mut summary = StreamLocationsResponse::default();
        // The regions of the teams this stream reported for, read once each (region-bound
        // principals only).
        let mut regions: std::collections::HashMap<String, Option<String>> =
            std::collections::HashMap::new();
        let mut batch: Vec<(i64, LocationReport)> = Vec::with_capacity(STREAM_BATCH);
        let mut index: i64 = 0;
        let mut ended = false;
        let deadline = tokio::time::Instant::now() + self.stream_max_age;
        while !ended {
            // At shutdown or at the stream's maximum age, answer early with the counts so
            // far; the client resends from their sum (stale reports are harmless).
            let first = tokio::select! {
                () = self.shutdown.cancelled() => break,
                () = tokio::time::sleep_until(deadline) => break,
                message = stream.next() => message,
            };
            let Some(first) = first else { break };
            let mut messages = vec![first];
            // Take whatever else has already arrived, so a busy feed is applied in pipelines
            // and a quiet one without delay.
            while messages.len() < STREAM_BATCH {
                match stream.next().now_or_never() {
                    Some(Some(message)) => messages.push(message),
                    Some(None) => {
                        ended = true;
                        break;
                    }
                    None => break,
                }
            }
            let now = self.domain.now();
            for message in messages {
                let message = match message {
                    Ok(message) => message,
                    Err(error) => {
                        // Apply what came before the bad message, then end the stream.
                        self.apply_batch(&mut batch, &mut summary).await?;
                        tracing::info!(code = ?error.code(), "location stream ended by an unreadable message");
                        return Err(status(ApiError::invalid(
                            "message",
                            format!("message {index} could not be decoded"),
                        )));
                    }
                };
                match check_location(&ReportFields::of_message(&message), now) {
                    Ok(report) => {
                        // A report for a team the credential may not report for is refused
                        // like an invalid one, naming the team; the stream goes on.
                        match self
                            .refusal_of(&principal, &report.team_id, &mut regions)
                            .await?
                        {
                            Some((reason, description)) => reject(
                                &mut summary,
                                index,
                                message.team_id,
                                "team_id",
                                reason,
                                description,
                            ),
                            None => batch.push((index, report)),
                        }
                    }
                    Err(error) => {
                        let violation = violations_of(error).into_iter().next();
                        let (field, description) = violation
                            .map(|f| (f.field, f.description))
                            .unwrap_or_default();
                        reject(
                            &mut summary,
                            index,
                            message.team_id,
                            &field,
                            ApiError::INVALID_FIELD,
                            &description,
                        );
                    }
                }
                index += 1;
            }
            self.apply_batch(&mut batch, &mut summary).await?;
        }
        self.apply_batch(&mut batch, &mut summary).await?;
        Ok(Response::new(summary))
    }

    async fn find_available_teams(
        &self,
        request: Request<FindAvailableTeamsRequest>,
    ) -> Result<Response<FindAvailableTeamsResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let (point, required, limit) = check_find_available_teams(&request).map_err(status)?;
        principal.require_region(&request.region)?;
        let found = self
            .domain
            .store()
            .find_available(
                &request.region,
                Position {
                    latitude: point.latitude,
                    longitude: point.longitude,
                },
                request.radius_meters,
                &required,
                limit,
            )
            .await
            .map_err(|e| api(e.into()))?;
        Ok(Response::new(FindAvailableTeamsResponse {
            matches: found
                .iter()
                .map(|(team, distance)| TeamMatch {
                    team: Some(team_to_proto(team)),
                    distance_meters: *distance,
                })
                .collect(),
        }))
    }

    async fn watch_teams(
        &self,
        request: Request<WatchTeamsRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let after = check_watch_teams(&request).map_err(status)?;
        principal.require_region(&request.region)?;
        let store = self.domain.store().clone();
        let region = request.region;
        let mut after = match after {
            Some(after) => after,
            None => store
                .last_event_id(&region)
                .await
                .map_err(|e| api(e.into()))?,
        };
        // Fail at once (rather than as the stream's first message) when history is gone.
        let first = store
            .read_events(&region, after, 100, Duration::ZERO)
            .await
            .map_err(|e| api(e.into()))?;
        let shutdown = self.shutdown.clone();
        let (sender, receiver) = tokio::sync::mpsc::channel(64);
        let watcher = relay_runtime::metrics::Watcher::open("WatchTeams");
        tokio::spawn(async move {
            let _watcher = watcher;
            let mut pending = first;
            loop {
                for event in pending.drain(..) {
                    after = event.id;
                    let message = WatchTeamsResponse {
                        event_id: event.id.to_string(),
                        kind: event_kind(event.kind) as i32,
                        team: Some(team_to_proto(&event.team)),
                        event_time: Some(to_timestamp(event.event_time)),
                    };
                    if sender.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
                let read = tokio::select! {
                    () = shutdown.cancelled() => {
                        let _ = sender
                            .send(Err(status(ApiError::unavailable(
                                SHUTTING_DOWN,
                                "the server is shutting down; reconnect with the last event_id",
                            ))))
                            .await;
                        return;
                    }
                    () = sender.closed() => return,
                    read = store.read_events(&region, after, 100, WATCH_BLOCK) => read,
                };
                match read {
                    Ok(events) => pending = events,
                    Err(error) => {
                        let _ = sender.send(Err(api(error.into()))).await;
                        return;
                    }
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
        Ok(Response::new(Box::pin(stream)))
    }
}
