//! The domain logic of intake, one concern a module, around the shared [`Intake`] state:
//!
//! - [`domain`]: what a request or a deadline changes, decided as pure functions
//!   (`plan_update(before, update, rules, now) -> Change` and its siblings), tested without
//!   storage;
//! - [`commands`]: submit, update, cancel and close: read, decide, then apply the change (with
//!   its idempotency record) in one store transaction;
//! - [`outbox`]: delivery of the routing requests a change committed, and routing's answers;
//! - [`sequencer`]: the task that gives committed events their gapless per-CAD sequences;
//! - [`upstream`]: routing's assignment events and availability's team events;
//! - [`deadlines`]: calls that waited past a program limit (review, recommendation);
//! - [`retention`]: erasing personal data and old history.
//!
//! Validation of requests is the handler's job (`validate.rs`); storage is behind
//! [`IncidentStore`]; how upstream facts change an incident is `lifecycle.rs`.

use std::sync::Arc;

use relay_proto::{
    common::{AssignmentMode, GeoPoint},
    intake::{CallerContact, Disposition, Incident, RiskFlag},
    routing::routing_service_client::RoutingServiceClient,
};
use relay_runtime::{client::TracePropagation, clock::Clock, idempotency::ReplayError};
use tokio::sync::{Notify, broadcast};
use tonic::{codegen::InterceptedService, transport::Channel};

use crate::{
    program::Programs,
    protocol::Protocol,
    settings::IntakeSettings,
    store::{IncidentStore, StoreError},
};

mod commands;
mod deadlines;
pub mod domain;
mod outbox;
mod retention;
pub mod sequencer;
mod upstream;

pub use sequencer::SEQUENCE_BATCH;

/// The routing client intake uses.
pub type RoutingClient = RoutingServiceClient<InterceptedService<Channel, TracePropagation>>;

/// How many times a change is recomputed after a concurrent change to the same incident.
const MAX_CONFLICTS: usize = 32;

/// Errors of applying what routing or availability reported.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Routing could not be asked about a team's previous assignment.
    #[error("routing unavailable: {0}")]
    Routing(tonic::Status),
}

/// Errors of intake's domain logic, mapped to the API in `handler.rs`.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// No incident has this id.
    #[error("incident {0} not found")]
    NotFound(String),
    /// The incident is closed or cancelled.
    #[error("incident {0} is not open")]
    NotOpen(String),
    /// expected_revision is stale.
    #[error("incident revision is {current}, not {expected}")]
    RevisionMismatch {
        /// The incident's revision.
        current: i64,
        /// The request's expected revision.
        expected: i64,
    },
    /// The dispatcher override is forbidden by the flags.
    #[error("override not allowed: {0}")]
    OverrideNotAllowed(String),
    /// The request_id was used for another request.
    #[error("request_id was already used for a different request")]
    RequestIdReused,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Too many concurrent changes to one incident.
    #[error("incident changed concurrently too often; retry")]
    Contended,
}

impl From<ReplayError> for IntakeError {
    fn from(error: ReplayError) -> Self {
        match error {
            ReplayError::Reused => Self::RequestIdReused,
            ReplayError::Corrupt(error) => Self::Store(StoreError::Corrupt(error.to_string())),
        }
    }
}

/// A notice that a CAD's stream has new events.
#[derive(Debug, Clone)]
pub struct EventNotice {
    /// The CAD system whose stream grew.
    pub cad_system: String,
}

/// A validated SubmitIncident request.
#[derive(Debug, Clone)]
pub struct NewIncident {
    /// See the contract.
    pub cad_system: String,
    /// See the contract.
    pub cad_incident_id: String,
    /// See the contract.
    pub incident_type: String,
    /// See the contract.
    pub priority: i32,
    /// See the contract.
    pub location: GeoPoint,
    /// See the contract.
    pub address: String,
    /// See the contract.
    pub region: String,
    /// See the contract.
    pub narrative: String,
    /// See the contract (deduplicated, in order).
    pub risk_flags: Vec<RiskFlag>,
    /// Micros since the epoch.
    pub received_at: i64,
    /// See the contract.
    pub caller: Option<CallerContact>,
    /// See the contract (deduplicated).
    pub required_capabilities: Vec<String>,
    /// See the contract (deduplicated).
    pub preferred_capabilities: Vec<String>,
    /// AUTO_ASSIGN or RECOMMEND.
    pub routing_mode: AssignmentMode,
}

/// A validated UpdateIncident request.
#[derive(Debug, Clone, Default)]
pub struct IncidentUpdate {
    /// Idempotency key.
    pub request_id: String,
    /// Digest of the request.
    pub fingerprint: String,
    /// The incident.
    pub incident_id: String,
    /// 0 for no check.
    pub expected_revision: i64,
    /// Flags to add.
    pub add_risk_flags: Vec<RiskFlag>,
    /// New location.
    pub location: Option<GeoPoint>,
    /// New address.
    pub address: Option<String>,
    /// New priority.
    pub priority: Option<i32>,
    /// New incident type.
    pub incident_type: Option<String>,
    /// Note to append.
    pub note: Option<String>,
    /// Dispatcher override.
    pub override_disposition: Option<Disposition>,
}

/// The answer to a submission.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The incident as stored (after waiting for routing).
    pub incident: Incident,
    /// Whether this call created it.
    pub created: bool,
}

/// The shared state of the intake service.
#[derive(Debug)]
pub struct Intake {
    pub(crate) store: Arc<dyn IncidentStore>,
    pub(crate) protocol: Arc<Protocol>,
    pub(crate) programs: Programs,
    pub(crate) settings: IntakeSettings,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) routing: RoutingClient,
    pub(crate) notices: broadcast::Sender<EventNotice>,
    pub(crate) outbox_wake: Notify,
    /// Wakes the sequencer: a change committed events.
    pub(crate) sequencer_wake: Notify,
    /// Regions whose routing and availability events intake consumes (or has asked to).
    pub(crate) watched_regions: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Tells the application to start consuming a region's events.
    pub(crate) new_regions: tokio::sync::mpsc::UnboundedSender<String>,
    /// Passes of the background jobs, for tests that wait for one.
    pub(crate) passes: Passes,
}

/// How many passes the outbox worker and the deadline job have finished: a test that must
/// show something did not happen waits for a pass that began after its change, instead of
/// sleeping.
#[derive(Debug, Default)]
pub struct Passes {
    pub(crate) outbox: std::sync::atomic::AtomicU64,
    pub(crate) deadlines: std::sync::atomic::AtomicU64,
}

impl Passes {
    /// Outbox passes finished (each delivered or retried every due row it read).
    #[must_use]
    pub fn outbox(&self) -> u64 {
        self.outbox.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Deadline-job passes finished (each escalated every call past its limit).
    #[must_use]
    pub fn deadlines(&self) -> u64 {
        self.deadlines.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Intake {
    /// How many passes the background jobs have finished.
    #[must_use]
    pub fn passes(&self) -> &Passes {
        &self.passes
    }

    /// Makes sure intake consumes `region`'s routing and availability events (its queue
    /// assignments, escalations and team statuses), starting at its first incident.
    pub(crate) fn watch_region(&self, region: &str) {
        if !self.settings.consume_upstream {
            return;
        }
        let first = self
            .watched_regions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(region.to_owned());
        if first {
            // The receiver lives as long as the application runs; after that nothing listens.
            let _ = self.new_regions.send(region.to_owned());
        }
    }

    fn now(&self) -> i64 {
        self.clock.now_micros()
    }

    /// The outbox lease in clock microseconds, lasting `outbox_lease_ms` of wall time at any
    /// clock speed (a lease guards a delivery in flight, which takes wall time).
    fn lease_micros(&self) -> i64 {
        let lease = self
            .clock
            .elapsed_in(IntakeSettings::ms(self.settings.outbox_lease_ms));
        i64::try_from(lease.as_micros()).unwrap_or(i64::MAX)
    }

    /// A change committed events: the sequencer gives them their sequences, then tells the
    /// watchers.
    fn events_queued(&self) {
        self.sequencer_wake.notify_one();
    }

    /// Intake's clock.
    #[must_use]
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Subscribes to stream-growth notices.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<EventNotice> {
        self.notices.subscribe()
    }

    /// The store (for tests and the retention job).
    #[must_use]
    pub fn store(&self) -> &Arc<dyn IncidentStore> {
        &self.store
    }

    /// The protocol in force.
    #[must_use]
    pub fn protocol(&self) -> &Protocol {
        &self.protocol
    }

    /// Whether `region` is served by this deployment.
    #[must_use]
    pub fn region_known(&self, region: &str) -> bool {
        self.settings.regions.is_empty() || self.settings.regions.iter().any(|r| r == region)
    }
}
