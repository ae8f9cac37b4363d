//! The gRPC handlers of `relay.routing.v1.RoutingService`.
//!
//! RPCs not implemented yet answer `UNIMPLEMENTED` (the generated default).

use relay_proto::routing::routing_service_server::RoutingService;

/// Handles `relay.routing.v1.RoutingService` calls.
#[derive(Debug, Clone, Default)]
pub struct RoutingServiceHandler;

#[tonic::async_trait]
impl RoutingService for RoutingServiceHandler {}
