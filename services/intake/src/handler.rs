//! The gRPC handlers of `relay.intake.v1.IntakeService`: validate every request first
//! (INVALID_ARGUMENT naming each bad field, nothing written), then call the domain logic in
//! [`crate::core`], and map its errors to the API in one place ([`api_error`]).

use std::{sync::Arc, time::Duration};

use relay_proto::intake::{
    CancelIncidentRequest, CancelIncidentResponse, CloseIncidentRequest, CloseIncidentResponse,
    GetEidoRequest, GetEidoResponse, GetIncidentRequest, GetIncidentResponse, Heartbeat,
    ListIncidentsRequest, ListIncidentsResponse, SubmitEidoRequest, SubmitEidoResponse,
    SubmitIncidentRequest, SubmitIncidentResponse, UpdateIncidentRequest, UpdateIncidentResponse,
    WatchIncidentEventsRequest, WatchIncidentEventsResponse, intake_service_server::IntakeService,
    watch_incident_events_response::Kind,
};
use relay_runtime::{
    audit::{AuditRecord, AuditSink},
    error::ApiError,
    idempotency::fingerprint,
    paging::PageTokens,
    security::auth::Principal,
    validate::Violations,
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{
    DOMAIN, caller_details,
    core::{Intake, IntakeError},
    store::{ListFilter, StoreError, StoredIncident, micros_of, timestamp_of},
    validate::{
        ListBounds, check_cancel, check_close, check_get_incident, check_list_incidents,
        check_watch, validate_submit, validate_update,
    },
};

/// Handles `relay.intake.v1.IntakeService` calls.
#[derive(Debug, Clone)]
pub struct IntakeServiceHandler {
    intake: Arc<Intake>,
    tokens: PageTokens,
    shutdown: CancellationToken,
    audit: Option<AuditSink>,
}

impl IntakeServiceHandler {
    /// A handler over the shared intake state.
    #[must_use]
    pub fn new(intake: Arc<Intake>, tokens: PageTokens, shutdown: CancellationToken) -> Self {
        Self {
            intake,
            tokens,
            shutdown,
            audit: None,
        }
    }

    /// With the audit trail: writes commit their record with their change, and a read that
    /// returns caller details is recorded before it is answered.
    #[must_use]
    pub fn with_audit(mut self, sink: AuditSink) -> Self {
        self.audit = Some(sink);
        self
    }

    /// Records that `principal` is about to read the caller details of `incident_ids`; a
    /// principal without `caller.details.read` reads none, and is not recorded here. No
    /// unaudited read: when the record cannot be written the call fails UNAVAILABLE.
    async fn audit_read(
        &self,
        principal: &Principal,
        record: AuditRecord,
        incident_ids: impl Iterator<Item = &str>,
    ) -> Result<(), Status> {
        let Some(sink) = &self.audit else {
            return Ok(());
        };
        if !principal.may_read_caller_details() {
            return Ok(());
        }
        let record = AuditRecord {
            resources: incident_ids.map(|id| format!("incident:{id}")).collect(),
            ..record
        };
        sink.append_alone(&[record]).await.map_err(|error| {
            tracing::warn!(%error, "caller-details read refused: its audit record failed");
            invalid(ApiError::unavailable(
                "STORAGE_UNAVAILABLE",
                "the audit trail is unreachable, so caller details cannot be read",
            ))
        })
    }
}

/// The audit record of a call to intake's `method`, its resources named later.
fn audit_of<T>(request: &Request<T>, method: &str) -> AuditRecord {
    AuditRecord::of_call(
        request,
        &format!("/relay.intake.v1.IntakeService/{method}"),
        Vec::new(),
    )
}

/// [`audit_of`] for a write of incident `incident_id`.
fn audit_write<T>(request: &Request<T>, method: &str, incident_id: &str) -> Option<AuditRecord> {
    let mut record = audit_of(request, method);
    record.resources.push(format!("incident:{incident_id}"));
    Some(record)
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

/// The caller of `request`, as the auth layer established it.
impl IntakeServiceHandler {
    /// Tenancy of an RPC that names an incident by id alone: a CAD-bound principal gets the
    /// same refusal for another CAD's incident as for an unknown id; a region-bound one may
    /// touch incidents of its regions only. Unbound principals pass without a read (the
    /// RPC itself answers NOT_FOUND for an unknown id).
    async fn require_incident(
        &self,
        principal: &Principal,
        incident_id: &str,
    ) -> Result<(), Status> {
        let read = || async {
            let found = self.intake.store.get_incident(incident_id).await;
            found.map_err(|e| status(e.into()))
        };
        principal
            .require_owner_of(read, |s: &StoredIncident| {
                (s.incident.cad_system.as_str(), s.incident.region.as_str())
            })
            .await
    }
}

/// [`IntakeServiceHandler::require_incident`] once the incident (or its absence) is known.
fn check_incident(
    principal: &Principal,
    incident: Option<&relay_proto::intake::Incident>,
) -> Result<(), Status> {
    principal.require_owner(incident.map(|i| (i.cad_system.as_str(), i.region.as_str())))
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
        let principal = Principal::of_call(&request, DOMAIN)?;
        let audit = Some(audit_of(&request, "SubmitIncident"));
        let new = validate_submit(&self.intake, request.into_inner()).map_err(invalid)?;
        principal.require_cad_system(&new.cad_system)?;
        principal.require_region(&new.region)?;
        let mut submitted = self
            .intake
            .submit_audited(new, audit)
            .await
            .map_err(status)?;
        caller_details::present(&principal, &mut submitted.incident);
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
        let principal = Principal::of_call(&request, DOMAIN)?;
        let update = validate_update(request.get_ref()).map_err(invalid)?;
        self.require_incident(&principal, &update.incident_id)
            .await?;
        let audit = audit_write(&request, "UpdateIncident", &update.incident_id);
        let mut response = self.intake.update(update, audit).await.map_err(status)?;
        caller_details::present_opt(&principal, response.incident.as_mut());
        Ok(Response::new(response))
    }

    async fn cancel_incident(
        &self,
        request: Request<CancelIncidentRequest>,
    ) -> Result<Response<CancelIncidentResponse>, Status> {
        let principal = Principal::of_call(&request, DOMAIN)?;
        let audit = audit_write(&request, "CancelIncident", &request.get_ref().incident_id);
        let request = request.into_inner();
        check_cancel(&request).map_err(invalid)?;
        self.require_incident(&principal, &request.incident_id)
            .await?;
        let print = fingerprint("CancelIncident", &request);
        let mut response = self
            .intake
            .cancel(
                &request.request_id,
                &print,
                &request.incident_id,
                &request.reason,
                audit,
            )
            .await
            .map_err(status)?;
        caller_details::present_opt(&principal, response.incident.as_mut());
        Ok(Response::new(response))
    }

    async fn close_incident(
        &self,
        request: Request<CloseIncidentRequest>,
    ) -> Result<Response<CloseIncidentResponse>, Status> {
        let principal = Principal::of_call(&request, DOMAIN)?;
        let audit = audit_write(&request, "CloseIncident", &request.get_ref().incident_id);
        let request = request.into_inner();
        check_close(&request).map_err(invalid)?;
        self.require_incident(&principal, &request.incident_id)
            .await?;
        let print = fingerprint("CloseIncident", &request);
        let mut response = self
            .intake
            .close(
                &request.request_id,
                &print,
                &request.incident_id,
                request.outcome,
                request.referral_ids,
                request.notes,
                audit,
            )
            .await
            .map_err(status)?;
        caller_details::present_opt(&principal, response.incident.as_mut());
        Ok(Response::new(response))
    }

    async fn get_incident(
        &self,
        request: Request<GetIncidentRequest>,
    ) -> Result<Response<GetIncidentResponse>, Status> {
        let principal = Principal::of_call(&request, DOMAIN)?;
        let audit = audit_of(&request, "GetIncident");
        let request = request.into_inner();
        let by_id = check_get_incident(&request).map_err(invalid)?;
        if !by_id {
            // The caller named the CAD: refusing it reveals nothing.
            principal.require_cad_system(&request.cad_system)?;
        }
        let found = if by_id {
            self.intake.store.get_incident(&request.incident_id).await
        } else {
            self.intake
                .store
                .get_by_cad(&request.cad_system, &request.cad_incident_id)
                .await
        }
        .map_err(|e| status(e.into()))?;
        check_incident(&principal, found.as_ref().map(|s| &s.incident))?;
        let mut stored = found.ok_or_else(|| {
            status(IntakeError::NotFound(if by_id {
                request.incident_id.clone()
            } else {
                format!("{}/{}", request.cad_system, request.cad_incident_id)
            }))
        })?;
        self.audit_read(
            &principal,
            audit,
            std::iter::once(stored.incident.incident_id.as_str()),
        )
        .await?;
        caller_details::present(&principal, &mut stored.incident);
        Ok(Response::new(GetIncidentResponse {
            incident: Some(stored.incident),
        }))
    }

    async fn list_incidents(
        &self,
        request: Request<ListIncidentsRequest>,
    ) -> Result<Response<ListIncidentsResponse>, Status> {
        let principal = Principal::of_call(&request, DOMAIN)?;
        let audit = audit_of(&request, "ListIncidents");
        let mut request = request.into_inner();
        let ListBounds {
            after,
            before,
            page_size,
        } = check_list_incidents(&request).map_err(invalid)?;
        // A bound credential lists only its own CAD's (and regions') incidents: an empty
        // filter is filled in, another CAD or region refused.
        request.cad_system = principal.cad_system_filter(&request.cad_system)?;
        request.region = principal.region_filter(&request.region)?;
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
        if !rows.is_empty() {
            let ids = rows.iter().map(|s| s.incident.incident_id.as_str());
            self.audit_read(&principal, audit, ids).await?;
        }
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
            incidents: rows
                .into_iter()
                .map(|s| {
                    let mut incident = s.incident;
                    caller_details::present(&principal, &mut incident);
                    incident
                })
                .collect(),
            next_page_token,
        }))
    }

    async fn watch_incident_events(
        &self,
        request: Request<WatchIncidentEventsRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<WatchIncidentEventsResponse>>, Status> {
        let principal = Principal::of_call(&request, DOMAIN)?;
        let request = request.into_inner();
        check_watch(&request).map_err(invalid)?;
        principal.require_cad_system(&request.cad_system)?;
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
        let principal = Principal::of_call(&request, DOMAIN)?;
        let audit = Some(audit_of(&request, "SubmitEido"));
        let request = request.into_inner();
        if !request.request_id.is_empty() {
            let mut v = Violations::new();
            v.id("request_id", &request.request_id);
            v.finish().map_err(invalid)?;
        }
        let new = crate::eido::prepare(&self.intake, &request.eido_json).map_err(invalid)?;
        principal.require_cad_system(&new.cad_system)?;
        principal.require_region(&new.region)?;
        let mut submitted = self
            .intake
            .submit_audited(new, audit)
            .await
            .map_err(status)?;
        caller_details::present(&principal, &mut submitted.incident);
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
        let principal = Principal::of_call(&request, DOMAIN)?;
        let audit = audit_of(&request, "GetEido");
        let incident_id = &request.get_ref().incident_id;
        crate::eido::check_id(incident_id).map_err(invalid)?;
        self.require_incident(&principal, incident_id).await?;
        let mut stored = self.intake.get(incident_id).await.map_err(status)?;
        self.audit_read(&principal, audit, std::iter::once(incident_id.as_str()))
            .await?;
        caller_details::present(&principal, &mut stored.incident);
        let eido_json = crate::eido::render(&stored.incident).to_string();
        Ok(Response::new(GetEidoResponse { eido_json }))
    }
}
