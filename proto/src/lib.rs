//! Relay's v1 gRPC API, generated from the `.proto` files beside this crate.
//!
//! Modules follow the proto packages: `relay::intake::v1`, `relay::availability::v1`,
//! `relay::routing::v1`, `relay::directory::v1`, `relay::reports::v1` and the shared `relay::common::v1`.
//! The `client` feature brings the client stubs, `server` the service traits; both are on by
//! default. [`FILE_DESCRIPTOR_SET`] is the encoded descriptor set, for gRPC server reflection.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// The encoded `google.protobuf.FileDescriptorSet` of every Relay proto file, the files they
/// import, and the vendored `google/rpc` files (Status, Code, error details) so that
/// reflection clients can decode error details.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("relay_descriptor");

/// The scope each RPC requires, declared once in the protos by `(relay.auth.v1.scope)`
/// (relay/auth/v1/options.proto) and read from the descriptors at build time.
pub mod scopes {
    include!(concat!(env!("OUT_DIR"), "/relay_scopes.rs"));

    /// The scope the RPC at `path` (`/relay.intake.v1.IntakeService/SubmitIncident`)
    /// requires: `None` for a path that is no Relay RPC, `Some("")` for an RPC declared
    /// without a scope (which no credential can call).
    #[must_use]
    pub fn scope_of(path: &str) -> Option<&'static str> {
        scope_entry(path).map(|(_, scope)| scope)
    }

    /// As [`scope_of`], with the table's own (static) copy of the path.
    #[must_use]
    pub fn scope_entry(path: &str) -> Option<(&'static str, &'static str)> {
        METHOD_SCOPES
            .binary_search_by(|(candidate, _)| (*candidate).cmp(path))
            .ok()
            .map(|index| METHOD_SCOPES[index])
    }
}

pub mod relay {
    pub mod common {
        pub mod v1 {
            tonic::include_proto!("relay.common.v1");
        }
    }
    pub mod availability {
        pub mod v1 {
            tonic::include_proto!("relay.availability.v1");
        }
    }
    pub mod routing {
        pub mod v1 {
            tonic::include_proto!("relay.routing.v1");
        }
    }
    pub mod intake {
        pub mod v1 {
            tonic::include_proto!("relay.intake.v1");
        }
    }
    pub mod directory {
        pub mod v1 {
            tonic::include_proto!("relay.directory.v1");
        }
    }
    pub mod reports {
        pub mod v1 {
            tonic::include_proto!("relay.reports.v1");
        }
    }
}

pub use relay::reports::v1 as reports;
pub use relay::{availability::v1 as availability, common::v1 as common};
pub use relay::{directory::v1 as directory, intake::v1 as intake, routing::v1 as routing};
