//! The shared runtime of every Relay service.
//!
//! A service crate is a library with a thin `main`: it builds its gRPC handlers, hands them to a
//! [`server::ServiceHost`] together with the readiness checks of its dependencies, binds, and
//! runs until a shutdown signal. Everything cross-cutting lives here so the handlers hold domain
//! logic only:
//!
//! - [`clock`]: the one clock of every time rule (wall, manual for tests, or simulated).
//! - [`config`]: typed configuration from defaults, a TOML file and `RELAY_*` variables.
//! - [`telemetry`]: `tracing` logs, OpenTelemetry traces over OTLP, W3C trace context.
//! - [`server`]: health (`grpc.health.v1`), reflection, tower layers, graceful shutdown.
//! - [`layers`]: the request id and trace context layer every request passes through.
//! - [`security`]: TLS on the listener, bearer tokens and client certificates, per-RPC scopes.
//! - [`client`]: channels to other services with deadlines and trace propagation.
//! - [`geo`]: positions, great-circle distances and search boxes, one Earth radius.
//! - [`error`] and [`validate`]: typed errors mapped to `tonic::Status` in one place.
//! - [`paging`]: opaque, tamper-evident page tokens.
//! - [`idempotency`]: request fingerprints and the replay of remembered responses.
//! - [`sequencer`]: gapless per-stream sequence numbers for events committed in parallel.
//! - [`storage`]: PostgreSQL pools (one schema per service), migrations, Redis connections.
//! - [`redis_link`]: the one Redis connection type (a single server or a Redis Cluster).
//! - [`audit`]: the tamper-evident audit trail (hash chain), its refusal layer and pruning.
//! - [`cli`]: the `main` of every service binary (`serve` and `migrate`).

pub mod audit;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod error;
pub mod geo;
pub mod idempotency;
pub mod layers;
pub mod metrics;
pub mod paging;
pub mod redis_link;
pub mod security;
pub mod sequencer;
pub mod server;
pub mod shutdown;
pub mod storage;
pub mod telemetry;
pub mod tenancy;
pub mod validate;

pub use config::Config;
pub use error::{ApiError, FieldViolation};

/// A boxed error for places that only pass errors on.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
