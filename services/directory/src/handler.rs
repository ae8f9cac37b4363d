//! The gRPC handlers of `relay.directory.v1.DirectoryService`.
//!
//! RPCs not implemented yet answer `UNIMPLEMENTED` (the generated default).

use relay_proto::directory::directory_service_server::DirectoryService;

/// Handles `relay.directory.v1.DirectoryService` calls.
#[derive(Debug, Clone, Default)]
pub struct DirectoryServiceHandler;

#[tonic::async_trait]
impl DirectoryService for DirectoryServiceHandler {}
