//! Intake's storage: a trait the domain logic uses, with one implementation per backend
//! (PostgreSQL for production, SQLite for `relay dev`): [`PostgresStore`] and [`SqliteStore`].
//! Both run the same SQL text (numbered `$n` parameters, `ON CONFLICT`, `RETURNING`, integer
//! micros for times): the statements are constants in `sql.rs`, the row and parameter
//! mapping is here, and one implementation generic over the sqlx database runs them
//! ([`SqlStore`], `sql_store.rs`). What differs is a [`Dialect`]: PostgreSQL inserts a new
//! incident in one statement and locks its sequencer (`postgres.rs`); SQLite does neither
//! (`sqlite.rs`).
//!
//! The domain never sees SQL. It reads an incident, computes the new snapshot and the events
//! the change produces, and hands them to [`IncidentStore::apply_change`], which commits
//! everything in one transaction: the incident (checked against the revision it read:
//! optimistic concurrency), its events (queued for sequencing, below), the outbox rows for
//! routing, the idempotency record of the request, and the consumed event id of an upstream
//! stream.
//!
//! The request record and the sequencer are the runtime's
//! ([`relay_runtime::idempotency`], [`relay_runtime::sequencer`]), used here on intake's
//! tables ([`REQUEST_LOG`](sql::REQUEST_LOG), [`SEQUENCER_TABLES`](sql::SEQUENCER_TABLES)).
//!
//! **Sequencing.** A change does not allocate its events' per-CAD sequences: doing so took
//! the row lock on the CAD's counter and held it through the commit's WAL flush, so every
//! commit of one CAD waited for the previous one. Instead a change appends its events to
//! `pending_events` (an id from a sequence object, no shared row locked), and
//! [`IncidentStore::sequence_events`], run by one sequencer at a time across replicas (a
//! transaction-scoped advisory lock on PostgreSQL; SQLite has one writer anyway), moves
//! committed pending events into `incident_events` in batches, in id order, giving each
//! CAD's events the next gapless sequences, in one transaction per batch.
//!
//! - Gapless and resumable: sequences are allocated by the sequencer at move time, under its
//!   lock, so they are consecutive whatever order the changes committed in; the move is one
//!   transaction, so a crash leaves the rows pending, never half-moved.
//! - Per-incident order: the changes of one incident are ordered by the revision check on
//!   its row (a change's `UPDATE` waits for the previous writer's commit, and the events are
//!   inserted after it), so a later change draws a higher id and becomes visible no earlier.
//!   A lower id still uncommitted while a higher one is moved belongs to another incident and
//!   simply gets a later sequence.
//! - A watcher sees an event once it is sequenced: shortly after its commit (the sequencer is
//!   woken in-process right after each commit and polls for other replicas' events).

use prost::Message;
use relay_proto::intake::{Incident, IncidentEvent};
use relay_runtime::audit::AuditRecord;
use relay_runtime::{
    idempotency::RequestRecord,
    sequencer::{Numbered, PendingRow},
};

mod bounded;
mod postgres;
mod sql;
mod sql_store;
mod sqlite;

pub use postgres::PostgresStore;
pub use relay_runtime::storage::Bounded;
pub use relay_runtime::storage::RowsAffected;
pub use sql_store::{Dialect, SqlStore};
pub use sqlite::SqliteStore;

mod rows;
pub use rows::*;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed or is unreachable.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored row could not be decoded (a defect or a corrupted row).
    #[error("stored row is corrupt: {0}")]
    Corrupt(String),
}

impl From<prost::DecodeError> for StoreError {
    fn from(error: prost::DecodeError) -> Self {
        Self::Corrupt(error.to_string())
    }
}

/// An incident as stored: the API view plus internal state.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredIncident {
    /// The incident as the API returns it.
    pub incident: Incident,
    /// The dispatcher override in force (`Disposition` as i32, 0 for none).
    pub override_disposition: i32,
    /// The assigned team's last known status (`TeamStatus` as i32, 0 for none).
    pub team_status: i32,
}

/// A routing request waiting to be delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    /// Unique id of the row.
    pub outbox_id: String,
    /// The incident it concerns.
    pub incident_id: String,
    /// What to call.
    pub kind: OutboxKind,
    /// The prost-encoded request (its request_id makes retries harmless).
    pub payload: Vec<u8>,
    /// Delivery attempts made so far.
    pub attempts: i32,
    /// Not delivered before this time (micros); also the lease of the attempt in progress.
    pub next_attempt_at: i64,
}

/// The routing RPC an outbox row calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxKind {
    /// `RoutingService.AssignTeam`.
    Assign,
    /// `RoutingService.CancelRouting`.
    Cancel,
    /// `RoutingService.ReleaseTeam`.
    Release,
}

impl OutboxKind {
    /// The stored name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Assign => "assign",
            Self::Cancel => "cancel",
            Self::Release => "release",
        }
    }

    pub(crate) fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "assign" => Ok(Self::Assign),
            "cancel" => Ok(Self::Cancel),
            "release" => Ok(Self::Release),
            other => Err(StoreError::Corrupt(format!("outbox kind {other}"))),
        }
    }
}

/// An event consumed from another service's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    /// `routing` or `availability`.
    pub source: &'static str,
    /// The region of the stream.
    pub region: String,
    /// The upstream event id.
    pub event_id: String,
}

/// One change to commit atomically.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// The incident's new state, `None` when the change touches no incident.
    pub incident: Option<StoredIncident>,
    /// The revision the change was computed from (optimistic concurrency).
    pub expected_revision: i64,
    /// Events to append (queued for the sequencer; `sequence` is ignored).
    pub events: Vec<IncidentEvent>,
    /// Outbox rows to add.
    pub outbox: Vec<OutboxItem>,
    /// Outbox row this change settles (refused if already settled).
    pub settles_outbox: Option<String>,
    /// The mutation's idempotency record (refused if the request_id is taken).
    pub request: Option<RequestRecord>,
    /// The audit record of the call that made the change, appended last in its transaction.
    pub audit: Option<AuditRecord>,
    /// Upstream event consumed (refused if already consumed).
    pub consumed: Option<Consumed>,
    /// Team statuses to keep for the incident until its assignment is recorded.
    pub observe: Vec<Observation>,
    /// Kept team statuses the change applied (deleted with it).
    pub applied_observations: Vec<Observation>,
    /// The commit time (micros).
    pub now: i64,
}

/// A team status availability reported for an incident before intake recorded that team's
/// assignment to it. Applied, in order, when the assignment is recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    /// The incident the team reported the status for.
    pub incident_id: String,
    /// The team.
    pub team_id: String,
    /// Availability's event id (the key, with the incident and team).
    pub event_id: String,
    /// The `TeamStatus` reported, as i32.
    pub status: i32,
    /// The team's own time of the status (micros).
    pub source_time: i64,
    /// When intake observed it (micros).
    pub record_time: i64,
}

/// What happened to a [`Change`].
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeOutcome {
    /// Committed; how many events were queued for the sequencer.
    Applied(usize),
    /// The incident's revision moved on; re-read and recompute.
    Conflict,
    /// The request_id was taken (by this or another request); nothing was written.
    RequestExists(RequestRecord),
    /// The outbox row was already settled; nothing was written.
    AlreadySettled,
    /// The upstream event was already consumed; nothing was written.
    AlreadyConsumed,
}

/// What `create_incident` did.
#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    /// The incident is new; its events are queued for the sequencer.
    Created,
    /// `(cad_system, cad_incident_id)` existed: the stored incident.
    Existing(Box<StoredIncident>),
}

/// What one [`IncidentStore::sequence_events`] pass moved.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sequenced {
    /// How many events were given sequences.
    pub events: usize,
    /// The CAD systems whose streams grew.
    pub cad_systems: Vec<String>,
    /// The earliest commit time (micros) among the moved events: how far behind the
    /// sequencer was.
    pub oldest_event_time: Option<i64>,
    /// The events moved, in sequence order (each counted once, by the replica that moved it).
    pub moved: Vec<IncidentEvent>,
}

/// Filters of `list_incidents`.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// CAD system, empty for any.
    pub cad_system: String,
    /// Region, empty for any.
    pub region: String,
    /// `IncidentState`, 0 for any.
    pub state: i32,
    /// `Disposition`, 0 for any.
    pub disposition: i32,
    /// `RoutingState`, 0 for any.
    pub routing_state: i32,
    /// `UnservedReason` (the first one the incident had), 0 for any.
    pub unserved_reason: i32,
    /// Inclusive lower bound of received_at (micros).
    pub received_after: Option<i64>,
    /// Exclusive upper bound of received_at (micros).
    pub received_before: Option<i64>,
    /// Keyset cursor: strictly after (received_at, incident_id) in descending order.
    pub after: Option<(i64, String)>,
    /// Page size.
    pub limit: i64,
}

/// Intake's storage.
#[tonic::async_trait]
pub trait IncidentStore: Send + Sync + std::fmt::Debug + 'static {
    /// Inserts a new incident with its events and outbox rows, unless its
    /// `(cad_system, cad_incident_id)` exists, in which case nothing is written.
    async fn create_incident(
        &self,
        incident: &StoredIncident,
        events: Vec<IncidentEvent>,
        outbox: Vec<OutboxItem>,
        now: i64,
    ) -> Result<CreateOutcome, StoreError> {
        self.create_audited(incident, events, outbox, now, None)
            .await
    }
    /// [`Self::create_incident`] with the audit record of the call that submitted it,
    /// appended in the same transaction (written only when the incident is).
    async fn create_audited(
        &self,
        incident: &StoredIncident,
        events: Vec<IncidentEvent>,
        outbox: Vec<OutboxItem>,
        now: i64,
        audit: Option<&AuditRecord>,
    ) -> Result<CreateOutcome, StoreError>;
    /// One incident by Relay id.
    async fn get_incident(&self, incident_id: &str) -> Result<Option<StoredIncident>, StoreError>;
    /// One incident by the CAD's id.
    async fn get_by_cad(
        &self,
        cad_system: &str,
        cad_incident_id: &str,
    ) -> Result<Option<StoredIncident>, StoreError>;
    /// Incidents matching `filter`, newest received_at first, ties by incident_id descending.
    async fn list_incidents(&self, filter: &ListFilter) -> Result<Vec<StoredIncident>, StoreError>;
    /// The open incident whose assigned team is `team_id`, if any.
    async fn incident_for_team(&self, team_id: &str) -> Result<Option<StoredIncident>, StoreError>;
    /// Incidents (in any state) whose routing shows `team_id` ASSIGNED, newest first.
    async fn assigned_to_team(&self, team_id: &str) -> Result<Vec<StoredIncident>, StoreError>;
    /// The team statuses kept for an incident, in the order they were observed.
    async fn observations(&self, incident_id: &str) -> Result<Vec<Observation>, StoreError>;
    /// Commits a change (see [`Change`]).
    async fn apply_change(&self, change: Change) -> Result<ChangeOutcome, StoreError>;
    /// A remembered mutation.
    async fn find_request(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError>;
    /// Takes up to `limit` due outbox rows and leases them until `lease_until`.
    async fn claim_outbox(
        &self,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<OutboxItem>, StoreError>;
    /// Schedules the next attempt of an undelivered row after a failure.
    async fn reschedule_outbox(
        &self,
        outbox_id: &str,
        next_attempt_at: i64,
        error: &str,
    ) -> Result<(), StoreError>;
    /// Undelivered outbox rows (for tests and metrics).
    async fn pending_outbox(&self) -> Result<i64, StoreError>;
    /// Undelivered outbox rows: their count, and the earliest creation time (micros).
    async fn outbox_backlog(&self) -> Result<(i64, Option<i64>), StoreError>;
    /// Moves up to `limit` committed pending events, oldest first, into the event stream,
    /// allocating each CAD's next gapless sequences, in one transaction. One sequencer runs
    /// at a time across every store on the same database (others wait).
    async fn sequence_events(&self, limit: i64) -> Result<Sequenced, StoreError>;
    /// Events committed but not sequenced yet: their count, and the earliest commit time.
    async fn pending_events(&self) -> Result<(i64, Option<i64>), StoreError>;
    /// Sequenced events of `cad_system` with a sequence above `after`, at most `limit`, in
    /// order.
    async fn events_after(
        &self,
        cad_system: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<IncidentEvent>, StoreError>;
    /// The last sequence issued for `cad_system` (0 when none) and the first retained one.
    async fn sequence_bounds(&self, cad_system: &str) -> Result<(i64, Option<i64>), StoreError>;
    /// The last upstream event id consumed from `source` for `region`.
    async fn stream_cursor(&self, source: &str, region: &str)
    -> Result<Option<String>, StoreError>;
    /// Records an upstream event that changes no incident; false if already consumed.
    async fn record_consumed(&self, consumed: &Consumed, now: i64) -> Result<bool, StoreError>;
    /// Erases narrative, caller contact and notes of incidents received before `before`.
    async fn purge_personal_data(&self, before: i64, now: i64) -> Result<u64, StoreError>;
    /// Deletes sequenced events, consumed ids and request records older than `before`.
    async fn purge_history(&self, before: i64) -> Result<u64, StoreError>;
    /// Hands `visit` every incident received (by the CAD's received_at, micros) in
    /// `[from, to)`, of `region` (empty: every region), in no particular order, as stored
    /// without its personal columns (no narrative, caller contact or notes): what a program
    /// report reads. Returns how many it visited.
    async fn scan_received(
        &self,
        from: i64,
        to: i64,
        region: &str,
        visit: &mut (dyn FnMut(Incident) + Send),
    ) -> Result<u64, StoreError>;
}
