//! The gRPC handlers of `relay.routing.v1.RoutingService`: thin adapters over [`Engine`].

use std::{pin::Pin, time::Duration};

use relay_proto::routing::{
    AssignTeamRequest, AssignTeamResponse, CancelRoutingRequest, CancelRoutingResponse,
    ConfirmAssignmentRequest, ConfirmAssignmentResponse, GetAssignmentRequest,
    GetAssignmentResponse, ListQueueRequest, ListQueueResponse, ReleaseTeamRequest,
    ReleaseTeamResponse, RestoreAssignmentRequest, RestoreAssignmentResponse,
    WatchAssignmentsRequest, WatchAssignmentsResponse, routing_service_server::RoutingService,
};
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{engine::Engine, error::RoutingError};

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

type EventStream = Pin<Box<dyn Stream<Item = Result<WatchAssignmentsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RoutingService for RoutingServiceHandler {
    async fn assign_team(
        &self,
        request: Request<AssignTeamRequest>,
    ) -> Result<Response<AssignTeamResponse>, Status> {
        Ok(Response::new(
            self.engine.assign_team(request.into_inner()).await?,
        ))
    }

    async fn confirm_assignment(
        &self,
        request: Request<ConfirmAssignmentRequest>,
    ) -> Result<Response<ConfirmAssignmentResponse>, Status> {
        Ok(Response::new(
            self.engine.confirm_assignment(request.into_inner()).await?,
        ))
    }

    async fn restore_assignment(
        &self,
        request: Request<RestoreAssignmentRequest>,
    ) -> Result<Response<RestoreAssignmentResponse>, Status> {
        Ok(Response::new(
            self.engine.restore_assignment(request.into_inner()).await?,
        ))
    }

    async fn release_team(
        &self,
        request: Request<ReleaseTeamRequest>,
    ) -> Result<Response<ReleaseTeamResponse>, Status> {
        Ok(Response::new(
            self.engine.release_team(request.into_inner()).await?,
        ))
    }

    async fn cancel_routing(
        &self,
        request: Request<CancelRoutingRequest>,
    ) -> Result<Response<CancelRoutingResponse>, Status> {
        Ok(Response::new(
            self.engine.cancel_routing(request.into_inner()).await?,
        ))
    }

    async fn get_assignment(
        &self,
        request: Request<GetAssignmentRequest>,
    ) -> Result<Response<GetAssignmentResponse>, Status> {
        let assignment = self.engine.get_assignment(request.into_inner()).await?;
        Ok(Response::new(GetAssignmentResponse {
            assignment: Some(assignment),
        }))
    }

    async fn list_queue(
        &self,
        request: Request<ListQueueRequest>,
    ) -> Result<Response<ListQueueResponse>, Status> {
        Ok(Response::new(
            self.engine.list_queue(request.into_inner()).await?,
        ))
    }

    async fn watch_assignments(
        &self,
        request: Request<WatchAssignmentsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let request = request.into_inner();
        let after = start_of_watch(&self.engine, &request).await?;
        let (sender, receiver) = mpsc::channel(WATCH_BATCH);
        let engine = self.engine.clone();
        let shutdown = self.shutdown.clone();
        let watcher = relay_runtime::metrics::Watcher::open("WatchAssignments");
        tokio::spawn(async move {
            let _watcher = watcher;
            let ended = watch(engine, request.region, after, &sender, &shutdown).await;
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

/// Sends the region's events after `after` until the client leaves or the server stops.
async fn watch(
    engine: Engine,
    region: String,
    mut after: i64,
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
