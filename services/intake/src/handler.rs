//! The gRPC handlers of `relay.intake.v1.IntakeService`: validate every request first
//! (INVALID_ARGUMENT naming each bad field, nothing written), then call the domain logic in
//! [`crate::core`], and map its errors to the API in one place ([`api_error`]).

use std::{sync::Arc, time::Duration};

use relay_proto::{
    common::{AssignmentMode, UnservedReason},
    intake::{
        CancelIncidentRequest, CancelIncidentResponse, CloseIncidentRequest, CloseIncidentResponse,
        CloseOutcome, Disposition, GetEidoRequest, GetEidoResponse, GetIncidentRequest,
        GetIncidentResponse, Heartbeat, IncidentState, ListIncidentsRequest, ListIncidentsResponse,
        RiskFlag, RoutingState, SubmitEidoRequest, SubmitEidoResponse, SubmitIncidentRequest,
        SubmitIncidentResponse, UpdateIncidentRequest, UpdateIncidentResponse,
        WatchIncidentEventsRequest, WatchIncidentEventsResponse,
        intake_service_server::IntakeService, watch_incident_events_response::Kind,
    },
};
use relay_runtime::{error::ApiError, paging::PageTokens, validate::Violations};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{
    DOMAIN,
    core::{IncidentUpdate, Intake, IntakeError, NewIncident, fingerprint},
    store::{ListFilter, StoreError, micros_of, timestamp_of},
};

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

/// Handles `relay.intake.v1.IntakeService` calls.
#[derive(Debug, Clone)]
pub struct IntakeServiceHandler {
    intake: Arc<Intake>,
    tokens: PageTokens,
    shutdown: CancellationToken,
}

impl IntakeServiceHandler {
    /// A handler over the shared intake state.
    #[must_use]
    pub fn new(intake: Arc<Intake>, tokens: PageTokens, shutdown: CancellationToken) -> Self {
        Self {
            intake,
            tokens,
            shutdown,
        }
    }
}

/// Maps a domain error to the API: the one place intake errors meet the wire.
#[must_use]
pub fn api_error(error: IntakeError) -> ApiError {
    match error {
        IntakeError::NotFound(id) => {
            ApiError::not_found("INCIDENT_NOT_FOUND", format!("no incident has id {id}"))
        }
        IntakeError::NotOpen(id) => ApiError::failed_precondition(
            "INCIDENT_NOT_OPEN",
            format!("incident {id} is already closed or cancelled"),
        ),
        IntakeError::RevisionMismatch { current, expected } => ApiError::aborted(
            "REVISION_MISMATCH",
            format!("expected revision {expected}, but the incident is at revision {current}"),
        ),
        IntakeError::OverrideNotAllowed(why) => {
            ApiError::failed_precondition("OVERRIDE_NOT_ALLOWED", why)
        }
        IntakeError::RequestIdReused => ApiError::invalid_with_reason(
            "REQUEST_ID_REUSED",
            "request_id",
            "was already used for a different request",
        ),
        IntakeError::Contended => ApiError::unavailable(
            "CONTENDED",
            "the incident is changing concurrently; retry with the same request_id",
        ),
        // With TLS compiled in, a connection the server (or a proxy) drops during the
        // SSLRequest or the TLS handshake fails as Tls or Protocol, not Io.
        IntakeError::Store(StoreError::Database(
            error @ (sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)),
        )) => {
            tracing::warn!(error = %error, "database unavailable");
            ApiError::unavailable("STORAGE_UNAVAILABLE", "the incident store is unreachable")
        }
        IntakeError::Store(error) => ApiError::internal(error),
    }
}

fn status(error: IntakeError) -> Status {
    api_error(error).into_status(DOMAIN)
}

fn invalid(error: ApiError) -> Status {
    error.into_status(DOMAIN)
}

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

#[derive(serde::Serialize, serde::Deserialize)]
struct ListCursor {
    received_at: i64,
    incident_id: String,
}

#[tonic::async_trait]
impl IntakeService for IntakeServiceHandler {
    async fn submit_incident(
        &self,
        request: Request<SubmitIncidentRequest>,
    ) -> Result<Response<SubmitIncidentResponse>, Status> {
        let new = validate_submit(&self.intake, request.into_inner()).map_err(invalid)?;
        let submitted = self.intake.submit(new).await.map_err(status)?;
        Ok(Response::new(SubmitIncidentResponse {
            triage: submitted.incident.triage.clone(),
            routing: submitted.incident.routing.clone(),
            incident: Some(submitted.incident),
            created: submitted.created,
        }))
    }

    async fn update_incident(
        &self,
        request: Request<UpdateIncidentRequest>,
    ) -> Result<Response<UpdateIncidentResponse>, Status> {
        let update = validate_update(request.get_ref()).map_err(invalid)?;
        let response = self.intake.update(update).await.map_err(status)?;
        Ok(Response::new(response))
    }

    async fn cancel_incident(
        &self,
        request: Request<CancelIncidentRequest>,
    ) -> Result<Response<CancelIncidentResponse>, Status> {
        let request = request.into_inner();
        check_cancel(&request).map_err(invalid)?;
        let print = fingerprint("CancelIncident", &request);
        let response = self
            .intake
            .cancel(
                &request.request_id,
                &print,
                &request.incident_id,
                &request.reason,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(response))
    }

    async fn close_incident(
        &self,
        request: Request<CloseIncidentRequest>,
    ) -> Result<Response<CloseIncidentResponse>, Status> {
        let request = request.into_inner();
        check_close(&request).map_err(invalid)?;
        let print = fingerprint("CloseIncident", &request);
        let response = self
            .intake
            .close(
                &request.request_id,
                &print,
                &request.incident_id,
                request.outcome,
                request.referral_ids,
                request.notes,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(response))
    }

    async fn get_incident(
        &self,
        request: Request<GetIncidentRequest>,
    ) -> Result<Response<GetIncidentResponse>, Status> {
        let request = request.into_inner();
        let by_id = check_get_incident(&request).map_err(invalid)?;
        let found = if by_id {
            self.intake.store.get_incident(&request.incident_id).await
        } else {
            self.intake
                .store
                .get_by_cad(&request.cad_system, &request.cad_incident_id)
                .await
        }
        .map_err(|e| status(e.into()))?;
        let stored = found.ok_or_else(|| {
            status(IntakeError::NotFound(if by_id {
                request.incident_id.clone()
            } else {
                format!("{}/{}", request.cad_system, request.cad_incident_id)
            }))
        })?;
        Ok(Response::new(GetIncidentResponse {
            incident: Some(stored.incident),
        }))
    }

    async fn list_incidents(
        &self,
        request: Request<ListIncidentsRequest>,
    ) -> Result<Response<ListIncidentsResponse>, Status> {
        let request = request.into_inner();
        let ListBounds {
            after,
            before,
            page_size,
        } = check_list_incidents(&request).map_err(invalid)?;
        let scope = format!(
            "list|{}|{}|{}|{}|{}|{}|{:?}|{:?}",
            request.cad_system,
            request.region,
            request.state,
            request.disposition,
            request.routing_state,
            request.unserved_reason,
            after.map(|t| t.timestamp_micros()),
            before.map(|t| t.timestamp_micros())
        );
        let cursor: Option<ListCursor> = self
            .tokens
            .decode("page_token", &scope, &request.page_token)
            .map_err(invalid)?;
        let limit = i64::try_from(page_size).unwrap_or(50);
        let filter = ListFilter {
            cad_system: request.cad_system,
            region: request.region,
            state: request.state,
            disposition: request.disposition,
            routing_state: request.routing_state,
            unserved_reason: request.unserved_reason,
            received_after: after.map(|t| t.timestamp_micros()),
            received_before: before.map(|t| t.timestamp_micros()),
            after: cursor.map(|c| (c.received_at, c.incident_id)),
            limit: limit + 1,
        };
        let mut rows = self
            .intake
            .store
            .list_incidents(&filter)
            .await
            .map_err(|e| status(e.into()))?;
        let more = rows.len() > page_size;
        rows.truncate(page_size);
        let next_page_token = match (more, rows.last()) {
            (true, Some(last)) => self.tokens.encode(
                &scope,
                &ListCursor {
                    received_at: micros_of(last.incident.received_at.as_ref()),
                    incident_id: last.incident.incident_id.clone(),
                },
            ),
            _ => String::new(),
        };
        Ok(Response::new(ListIncidentsResponse {
            incidents: rows.into_iter().map(|s| s.incident).collect(),
            next_page_token,
        }))
    }

    async fn watch_incident_events(
        &self,
        request: Request<WatchIncidentEventsRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<WatchIncidentEventsResponse>>, Status> {
        let request = request.into_inner();
        check_watch(&request).map_err(invalid)?;
        let cad = request.cad_system;
        let after = request.after_sequence;
        // Subscribe before reading, so no event committed from now on is missed.
        let mut notices = self.intake.subscribe();
        // Sequence what is pending, so the stream starts after every change committed before
        // this call (a CAD that submits, then watches, sees its submission).
        self.intake
            .sequence_now()
            .await
            .map_err(|e| status(e.into()))?;
        let (last, first) = self
            .intake
            .store
            .sequence_bounds(&cad)
            .await
            .map_err(|e| status(e.into()))?;
        if after > last {
            return Err(relay_runtime::error::status(
                tonic::Code::OutOfRange,
                DOMAIN,
                "SEQUENCE_AHEAD",
                format!("after_sequence {after} is beyond the last sequence issued ({last})"),
                std::collections::HashMap::new(),
            ));
        }
        let expired = match first {
            Some(first) => after + 1 < first,
            None => after < last,
        };
        if expired {
            return Err(ApiError::failed_precondition(
                "EVENT_HISTORY_EXPIRED",
                "events after after_sequence are no longer retained; resynchronise with ListIncidents",
            )
            .into_status(DOMAIN));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let intake = Arc::clone(&self.intake);
        let shutdown = self.shutdown.clone();
        let heartbeat_every = Duration::from_millis(intake.settings.heartbeat_ms.max(1));
        let poll_every = Duration::from_millis(intake.settings.watch_poll_ms.max(1));
        let watcher = relay_runtime::metrics::Watcher::open("WatchIncidentEvents");
        tokio::spawn(async move {
            let heartbeat = |last_sequence: i64| {
                Ok(WatchIncidentEventsResponse {
                    kind: Some(Kind::Heartbeat(Heartbeat {
                        last_sequence,
                        server_time: Some(timestamp_of(intake.clock.now_micros())),
                    })),
                })
            };
            if tx.send(heartbeat(last)).await.is_err() {
                return;
            }
            let mut cursor = after;
            let mut last_sent = tokio::time::Instant::now();
            loop {
                let batch = match intake.store.events_after(&cad, cursor, 500).await {
                    Ok(batch) => batch,
                    Err(error) => {
                        tracing::warn!(error = %error, "watch could not read events");
                        let _ = tx
                            .send(Err(Status::unavailable(
                                "the event store is unreachable; reconnect with the last sequence",
                            )))
                            .await;
                        return;
                    }
                };
                let full = batch.len() == 500;
                for event in batch {
                    cursor = event.sequence;
                    let message = WatchIncidentEventsResponse {
                        kind: Some(Kind::Event(event)),
                    };
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                    last_sent = tokio::time::Instant::now();
                }
                if full {
                    continue;
                }
                let heartbeat_at = last_sent + heartbeat_every;
                tokio::select! {
                    () = shutdown.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("server shutting down; reconnect with the last sequence"))).await;
                        return;
                    }
                    () = tx.closed() => return,
                    notice = notices.recv() => {
                        match notice {
                            Ok(notice) if notice.cad_system != cad => continue,
                            _ => {}
                        }
                    }
                    () = tokio::time::sleep(poll_every) => {}
                    () = tokio::time::sleep_until(heartbeat_at) => {
                        watcher.heartbeat();
                        let last = intake.store.sequence_bounds(&cad).await.map_or(cursor, |(l, _)| l);
                        if tx.send(heartbeat(last)).await.is_err() {
                            return;
                        }
                        last_sent = tokio::time::Instant::now();
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
    async fn submit_eido(
        &self,
        request: Request<SubmitEidoRequest>,
    ) -> Result<Response<SubmitEidoResponse>, Status> {
        let request = request.into_inner();
        if !request.request_id.is_empty() {
            let mut v = Violations::new();
            v.id("request_id", &request.request_id);
            v.finish().map_err(invalid)?;
        }
        let submitted = crate::eido::submit(&self.intake, &request.eido_json)
            .await
            .map_err(invalid)?;
        Ok(Response::new(SubmitEidoResponse {
            triage: submitted.incident.triage.clone(),
            routing: submitted.incident.routing.clone(),
            incident: Some(submitted.incident),
            created: submitted.created,
        }))
    }

    async fn get_eido(
        &self,
        request: Request<GetEidoRequest>,
    ) -> Result<Response<GetEidoResponse>, Status> {
        let eido_json = crate::eido::get(&self.intake, &request.get_ref().incident_id)
            .await
            .map_err(invalid)?;
        Ok(Response::new(GetEidoResponse { eido_json }))
    }
}
