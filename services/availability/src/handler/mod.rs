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
    audit::{AuditRecord, AuditSink},
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
    error::{
        AvailabilityError, REQUEST_ID_REUSED, SHUTTING_DOWN, STORE_UNAVAILABLE, TEAM_NOT_FOUND,
    },
    service::Availability,
};

mod validate;
pub use validate::*;
mod reports;

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
    audit: Option<AuditSink>,
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
            audit: None,
        }
    }

    /// With the audit trail: status and location reports, which change the live store in
    /// Redis (no transaction to share with the trail), are recorded before they are applied.
    #[must_use]
    pub fn with_audit(mut self, sink: AuditSink) -> Self {
        self.audit = Some(sink);
        self
    }
}

/// The full method of UpsertTeam, as audit records name it.
const UPSERT_TEAM: &str = "/relay.availability.v1.AvailabilityService/UpsertTeam";
/// The full methods of the reports, as audit records name them.
const SET_TEAM_STATUS: &str = "/relay.availability.v1.AvailabilityService/SetTeamStatus";
const REPORT_LOCATION: &str = "/relay.availability.v1.AvailabilityService/ReportLocation";
const STREAM_LOCATIONS: &str = "/relay.availability.v1.AvailabilityService/StreamLocations";

/// A `Status` of `error`, in this service's domain.
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
        let principal = Principal::of_call(&request, DOMAIN)?;
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
        let principal = Principal::of_call(&request, DOMAIN)?;
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
        let principal = Principal::of_call(&request, DOMAIN)?;
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
        let principal = Principal::of_call(&request, DOMAIN)?;
        let audit = AuditRecord::of_call(&request, SET_TEAM_STATUS, Vec::new());
        let request = request.into_inner();
        let (target, expected) = check_set_team_status(&request).map_err(status)?;
        self.require_reporter(&principal, &request.team_id).await?;
        self.audit_report(audit, [request.team_id.as_str()]).await?;
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
        let principal = Principal::of_call(&request, DOMAIN)?;
        let audit = AuditRecord::of_call(&request, REPORT_LOCATION, Vec::new());
        let request = request.into_inner();
        let report = check_location(&ReportFields::of_request(&request), self.domain.now())
            .map_err(status)?;
        self.require_reporter(&principal, &request.team_id).await?;
        self.audit_report(audit, [request.team_id.as_str()]).await?;
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
        let principal = Principal::of_call(&request, DOMAIN)?;
        let audit = AuditRecord::of_call(&request, STREAM_LOCATIONS, Vec::new());
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
                        self.apply_batch(&audit, &mut batch, &mut summary).await?;
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
            self.apply_batch(&audit, &mut batch, &mut summary).await?;
        }
        self.apply_batch(&audit, &mut batch, &mut summary).await?;
        Ok(Response::new(summary))
    }

    async fn find_available_teams(
        &self,
        request: Request<FindAvailableTeamsRequest>,
    ) -> Result<Response<FindAvailableTeamsResponse>, Status> {
        let principal = Principal::of_call(&request, DOMAIN)?;
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
        let principal = Principal::of_call(&request, DOMAIN)?;
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
