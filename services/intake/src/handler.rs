//! The gRPC handlers of `relay.intake.v1.IntakeService`.
//!
//! RPCs not implemented yet answer `UNIMPLEMENTED` (the generated default).

use relay_proto::intake::intake_service_server::IntakeService;

/// Handles `relay.intake.v1.IntakeService` calls.
#[derive(Debug, Clone, Default)]
pub struct IntakeServiceHandler;

#[tonic::async_trait]
impl IntakeService for IntakeServiceHandler {}
