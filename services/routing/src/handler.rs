//! The gRPC handlers of `relay.routing.v1.RoutingService`: thin adapters over [`Engine`].

use std::{pin::Pin, time::Duration};

use relay_proto::routing::{
    AssignTeamRequest, AssignTeamResponse, Assignment, CancelRoutingRequest, CancelRoutingResponse,
    ConfirmAssignmentRequest, ConfirmAssignmentResponse, GetAssignmentRequest,
    GetAssignmentResponse, ListQueueRequest, ListQueueResponse, ReleaseTeamRequest,
    ReleaseTeamResponse, RestoreAssignmentRequest, RestoreAssignmentResponse,
    WatchAssignmentsRequest, WatchAssignmentsResponse, routing_service_server::RoutingService,
};
use relay_runtime::{audit::AuditRecord, security::auth::Principal};
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{
    DOMAIN,
    engine::{
        CALL_AUDIT, Engine, check_assign_team, check_cancel_routing, check_confirm_assignment,
        check_get_assignment, check_list_queue, check_release_team,
    },
    error::RoutingError,
    store::IncidentRecord,
};

/// How often a watcher polls the record for events written by other replicas.
const WATCH_POLL: Duration = Duration::from_millis(200);
/// Events read per round trip.
const WATCH_BATCH: usize = 256;

/// Handles `relay.routing.v1.RoutingService` calls.
#[derive(Debug, Clone)]
pub struct RoutingServiceHandler {
    engine: Engine,
    shutdown: CancellationToken,
}

impl RoutingServiceHandler {
    /// A handler over `engine`; streams end when `shutdown` is cancelled.
    #[must_use]
    pub fn new(engine: Engine, shutdown: CancellationToken) -> Self {
        Self { engine, shutdown }
    }
}

/// The caller of `request`, as the auth layer established it.
impl RoutingServiceHandler {
    /// Tenancy of an RPC naming an incident routing knows: a region-bound principal acts on
    /// incidents of its regions only (REGION_NOT_ALLOWED); a CAD-bound one on its CAD's only,
    /// with the same refusal for an unknown incident (CAD_SYSTEM_NOT_ALLOWED). An unbound
    /// principal passes without a read.
    async fn require_incident(
        &self,
        principal: &Principal,
        incident_id: &str,
    ) -> Result<(), Status> {
        let read = || async {
            let found = self.engine.store().incident(incident_id).await;
            Ok(found.map_err(RoutingError::Store)?)
        };
        principal
            .require_owner_of(read, |r: &IncidentRecord| {
                (r.cad_system.as_str(), r.region.as_str())
            })
            .await
    }

    /// [`Self::require_incident`] for an RPC naming an assignment.
    async fn require_assignment(
        &self,
        principal: &Principal,
        assignment_id: &str,
    ) -> Result<(), Status> {
        let read = || async {
            let found = self.engine.store().assignment(assignment_id).await;
            Ok(found.map_err(RoutingError::Store)?)
        };
        principal
            .require_owner_of(read, |a: &Assignment| {
                (a.cad_system.as_str(), a.region.as_str())
            })
            .await
    }
}

/// The audit record of a call to routing's `method`; the engine names what its write touched
/// and commits it with the write (see [`CALL_AUDIT`]).
fn audit_of_call<T>(request: &Request<T>, method: &str) -> AuditRecord {
    AuditRecord::of_call(
        request,
        &format!("/relay.routing.v1.RoutingService/{method}"),
        Vec::new(),
    )
}

type EventStream = Pin<Box<dyn Stream<Item = Result<WatchAssignmentsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RoutingService for RoutingServiceHandler {
    async fn assign_team(
        &self,
        request: Request<AssignTeamRequest>,
    ) -> Result<Response<AssignTeamResponse>, Status> {
        let principal = Principal::of_call(&request, DOMAIN)?;
        let audit = audit_of_call(&request, "AssignTeam");
        let request = request.into_inner();
        principal.require_no_team("route an incident")?;
        check_assign_team(&request).map_err(RoutingError::from)?;
        principal.require_region(&request.region)?;
        principal.require_cad_system(&request.cad_system)?;
        Ok(Response::new(
            CALL_AUDIT
                .scope(audit, self.engine.assign_team(request))
                .await?,
        ))
    }

    async fn confirm_assignment(
        &self,
        request: Request<ConfirmAssignmentRequest>,
    ) -> Result<Response<ConfirmAssignmentResponse>, Status> {
        let principal = Principal::of_call(&request, DOMAIN)?;
        let audit = audit_of_call(&request, "ConfirmAssignment");
        let request = request.into_inner();
        check_confirm_assignment(&request).map_err(RoutingError::from)?;
        principal.require_team(&request.team_id)?;
        self.require_incident(&principal, &request.incident_id)
            .await?;
        Ok(Response::new(
            CALL_AUDIT
                .scope(audit, self.engine.confirm_assignment(request))
                .await?,
        ))
    }

    async fn restore_assignment(
        &self,
        request: Request<RestoreAssignmentRequest>,
    ) -> Result<Response<RestoreAssignmentResponse>, Status> {
        let principal = Principal::of_call(&request, DOMAIN)?;
        let audit = audit_of_call(&request, "RestoreAssignment");
        let request = request.into_inner();
        // Restore checks the same fields as Confirm.
        check_confirm_assignment(&ConfirmAssignmentRequest {
            request_id: request.request_id.clone(),
            incident_id: request.incident_id.clone(),
            team_id: request.team_id.clone(),
        })
        .map_err(RoutingError::from)?;
        // A device restores only its own team's call.
        principal.require_team(&request.team_id)?;
        self.require_incident(&principal, &request.incident_id)
            .await?;
        Ok(Response::new(
            CALL_AUDIT
                .scope(audit, self.engine.restore_assignment(request))
                .await?,
        ))
    }

    async fn release_team(
        &self,
        request: Request<ReleaseTeamRequest>,
    ) -> Result<Response<ReleaseTeamResponse>, Status> {
        let principal = Principal::of_call(&request, DOMAIN)?;
        let audit = audit_of_call(&request, "ReleaseTeam");
        let request = request.into_inner();
        check_release_team(&request).map_err(RoutingError::from)?;
        self.require_assignment(&principal, &request.assignment_id)
            .await?;
        // A device releases its own team only.
        if principal.team_id.is_some()
            && let Some(assignment) = self
                .engine
                .store()
                .assignment(&request.assignment_id)
                .await
                .map_err(RoutingError::Store)?
        {
            principal.require_team(&assignment.team_id)?;
        }
        Ok(Response::new(
            CALL_AUDIT
                .scope(audit, self.engine.release_team(request))
                .await?,
        ))
    }

    async fn cancel_routing(
        &self,
        request: Request<CancelRoutingRequest>,
    ) -> Result<Response<CancelRoutingResponse>, Status> {
        let principal = Principal::of_call(&request, DOMAIN)?;
        let audit = audit_of_call(&request, "CancelRouting");
        let request = request.into_inner();
        principal.require_no_team("cancel an incident's routing")?;
        check_cancel_routing(&request).map_err(RoutingError::from)?;
        self.require_incident(&principal, &request.incident_id)
            .await?;
        Ok(Response::new(
            CALL_AUDIT
                .scope(audit, self.engine.cancel_routing(request))
                .await?,
        ))
    }

    async fn get_assignment(
        &self,
        request: Request<GetAssignmentRequest>,
    ) -> Result<Response<GetAssignmentResponse>, Status> {
        let principal = Principal::of_call(&request, DOMAIN)?;
        let request = request.into_inner();
        check_get_assignment(&request).map_err(RoutingError::from)?;
        self.require_assignment(&principal, &request.assignment_id)
            .await?;
        let assignment = self.engine.get_assignment(request).await?;
        Ok(Response::new(GetAssignmentResponse {
            assignment: Some(assignment),
        }))
    }

    async fn list_queue(
        &self,
        request: Request<ListQueueRequest>,
    ) -> Result<Response<ListQueueResponse>, Status> {
        let principal = Principal::of_call(&request, DOMAIN)?;
        let request = request.into_inner();
        check_list_queue(&request).map_err(RoutingError::from)?;
        principal.require_region(&request.region)?;
        let mut response = self.engine.list_queue(request).await?;
        // A CAD-bound credential sees its own CAD's queued calls only (a page may then hold
        // fewer, with a next_page_token: keep paging).
        response
            .queued_incidents
            .retain(|queued| principal.allows_cad_system(&queued.cad_system));
        Ok(Response::new(response))
    }

    async fn watch_assignments(
        &self,
        request: Request<WatchAssignmentsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let principal = Principal::of_call(&request, DOMAIN)?;
        let request = request.into_inner();
        crate::engine::check_watch_assignments(&request).map_err(RoutingError::from)?;
        principal.require_region(&request.region)?;
        let after = start_of_watch(&self.engine, &request).await?;
        let (sender, receiver) = mpsc::channel(WATCH_BATCH);
        let engine = self.engine.clone();
        let shutdown = self.shutdown.clone();
        let watcher = relay_runtime::metrics::Watcher::open("WatchAssignments");
        tokio::spawn(async move {
            let _watcher = watcher;
            let ended = watch(
                engine,
                request.region,
                after,
                &principal,
                &sender,
                &shutdown,
            )
            .await;
            if let Err(status) = ended {
                let _ = sender.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// Checks a watch request and finds the sequence number after which it starts.
async fn start_of_watch(
    engine: &Engine,
    request: &WatchAssignmentsRequest,
) -> Result<i64, RoutingError> {
    let after = crate::engine::check_watch_assignments(request)?;
    engine.region("region", &request.region)?;
    let (first, last) = engine.store().event_bounds(&request.region).await?;
    match after {
        None => Ok(last),
        Some(seq) if seq.saturating_add(1) < first => Err(RoutingError::EventHistoryExpired(
            request.after_event_id.clone(),
        )),
        Some(seq) => Ok(seq),
    }
}

/// Sends the region's events after `after` (those of `principal`'s CAD, when it is bound to
/// one) until the client leaves or the server stops.
async fn watch(
    engine: Engine,
    region: String,
    mut after: i64,
    principal: &Principal,
    sender: &mpsc::Sender<Result<WatchAssignmentsResponse, Status>>,
    shutdown: &CancellationToken,
) -> Result<(), Status> {
    let written = engine.written().clone();
    loop {
        let notified = written.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let events = engine
            .store()
            .events(&region, after, WATCH_BATCH)
            .await
            .map_err(|e| RoutingError::Store(e).into_status())?;
        let full = events.len() == WATCH_BATCH;
        for (seq, event) in events {
            // A CAD-bound credential gets its own CAD's events only.
            if !principal.allows_cad_system(&event.cad_system) {
                after = seq;
                continue;
            }
            if sender
                .send(Ok(WatchAssignmentsResponse { event: Some(event) }))
                .await
                .is_err()
            {
                return Ok(());
            }
            after = seq;
        }
        if full {
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => {
                return Err(Status::unavailable("server shutting down; reconnect with the last event_id"));
            }
            () = sender.closed() => return Ok(()),
            () = &mut notified => {}
            () = tokio::time::sleep(WATCH_POLL) => {}
        }
    }
}
