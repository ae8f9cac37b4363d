//! A RoutingService stand-in whose `ListQueue` takes as long as the request's `region` says,
//! in milliseconds, and tells the test when a call has reached it. For tests of the server's
//! layers (timeouts, load shedding, draining) that need a call to be in flight.

use std::{sync::Arc, time::Duration};

use relay_proto::routing::{
    ListQueueRequest, ListQueueResponse, routing_service_server::RoutingService,
};
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

/// See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct Slow {
    /// Notified once per call that reaches the handler.
    pub entered: Arc<Notify>,
}

/// A request that keeps the handler busy for `millis` milliseconds.
#[must_use]
pub fn slow_request(millis: u64) -> ListQueueRequest {
    ListQueueRequest {
        region: millis.to_string(),
        ..ListQueueRequest::default()
    }
}

#[tonic::async_trait]
impl RoutingService for Slow {
    async fn list_queue(
        &self,
        request: Request<ListQueueRequest>,
    ) -> Result<Response<ListQueueResponse>, Status> {
        let millis: u64 = request.into_inner().region.parse().unwrap_or(0);
        self.entered.notify_one();
        tokio::time::sleep(Duration::from_millis(millis)).await;
        Ok(Response::new(ListQueueResponse::default()))
    }
}
