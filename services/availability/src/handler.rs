//! The gRPC handlers of `relay.availability.v1.AvailabilityService`.
//!
//! RPCs not implemented yet answer `UNIMPLEMENTED` (the generated default).

use relay_proto::availability::availability_service_server::AvailabilityService;

/// Handles `relay.availability.v1.AvailabilityService` calls.
#[derive(Debug, Clone, Default)]
pub struct AvailabilityServiceHandler;

#[tonic::async_trait]
impl AvailabilityService for AvailabilityServiceHandler {}
