//! The record: routing's durable memory of incidents, assignments, idempotent responses and
//! the region event log, behind the [`Store`] trait (PostgreSQL in production, SQLite for
//! `relay dev`). Domain logic never sees SQL.
//!
//! Every change goes through [`Store::write`], one transaction that:
//! - remembers the request's response (refusing a request_id already remembered),
//! - creates or updates the incident, only if its version is still the one read
//!   (optimistic concurrency: replicas that race on one incident cannot both win),
//! - ends an ACTIVE assignment, only if it is still ACTIVE,
//! - records a new ACTIVE assignment, only if its fencing token is larger than the last one
//!   recorded for the team and neither the team nor the incident has another ACTIVE one
//!   (unique partial indexes),
//! - appends the events, unnumbered; [`Store::sequence_events`] numbers them later, gapless
//!   per region, with [`relay_runtime::sequencer`] (on both backends).
//!
//! On PostgreSQL the write is a single statement run on its own, so one round trip; a failed
//! check aborts it whole.
//!
//! The trait is implemented once, by [`SqlStore`] (`sql_store.rs`), generic over the database,
//! with the SQL of `sql.rs` and the row mapping of this module; what differs between
//! PostgreSQL and SQLite is a [`Dialect`] (`postgres.rs`, `sqlite.rs`).

use chrono::{DateTime, Utc};
use relay_proto::{
    common::GeoPoint,
    routing::{Assignment, AssignmentEndCause, AssignmentEvent, AssignmentState},
};

mod bounded;
mod postgres;
mod sql;
mod sql_store;
mod sqlite;

pub use postgres::PostgresStore;
pub use relay_runtime::storage::Bounded;
pub use sql::PendingEvent;
pub use sql_store::{Dialect, SqlStore};
pub use sqlite::SqliteStore;

/// What routing last did with an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncidentState {
    /// Ranked (recommended) and waiting for a dispatcher.
    Routed,
    /// In its region's queue.
    Queued,
    /// A team is actively assigned.
    Assigned,
    /// Its assignment ended normally.
    Released,
    /// CancelRouting stopped its routing.
    Cancelled,
    /// It waited too long and left the queue.
    Escalated,
}

impl IncidentState {
    /// The stored name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Routed => "ROUTED",
            Self::Queued => "QUEUED",
            Self::Assigned => "ASSIGNED",
            Self::Released => "RELEASED",
            Self::Cancelled => "CANCELLED",
            Self::Escalated => "ESCALATED",
        }
    }

    /// The state with this stored name.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "ROUTED" => Self::Routed,
            "QUEUED" => Self::Queued,
            "ASSIGNED" => Self::Assigned,
            "RELEASED" => Self::Released,
            "CANCELLED" => Self::Cancelled,
            "ESCALATED" => Self::Escalated,
            _ => return None,
        })
    }
}

/// An incident as routing knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentRecord {
    /// The incident.
    pub incident_id: String,
    /// Its region.
    pub region: String,
    /// The CAD it came from.
    pub cad_system: String,
    /// 1..5.
    pub priority: i32,
    /// Where the team should go.
    pub location: GeoPoint,
    /// Capabilities a team must have.
    pub required_capabilities: Vec<String>,
    /// Capabilities that reorder near-ties.
    pub preferred_capabilities: Vec<String>,
    /// The expected duration given by the caller, seconds.
    pub expected_duration_seconds: Option<i32>,
    /// What routing last did with it.
    pub state: IncidentState,
    /// When it was first queued (kept while it stays queued).
    pub queued_time: Option<DateTime<Utc>>,
    /// When it is escalated if still queued.
    pub escalate_time: Option<DateTime<Utc>>,
    /// Why no team could take it (`UnservedReason` as i32; 0 when served).
    pub unserved_reason: i32,
    /// Incremented by every write; a write names the version it read.
    pub version: i64,
    /// When it last changed.
    pub update_time: DateTime<Utc>,
    /// The CAD's own incident number, as the first AssignTeam of the incident gave it (empty
    /// when none did); later calls keep it.
    pub cad_incident_id: String,
}

/// The position after which a queue page starts (serving order).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QueueCursor {
    /// Priority of the last entry returned.
    pub priority: i32,
    /// Its queued_time.
    pub queued_time: DateTime<Utc>,
    /// Its incident_id.
    pub incident_id: String,
}

impl QueueCursor {
    /// The position just after `last`, a queued incident.
    #[must_use]
    pub fn after(last: &IncidentRecord) -> Self {
        Self {
            priority: last.priority,
            queued_time: last.queued_time.unwrap_or_default(),
            incident_id: last.incident_id.clone(),
        }
    }
}

/// A remembered response of a mutation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// The caller's request_id.
    pub request_id: String,
    /// Identifies the request (method and content) so a reuse for another request is seen.
    pub fingerprint: Vec<u8>,
    /// The encoded response.
    pub response: Vec<u8>,
}

/// The answer of [`Store::lookup`] and [`Store::lookup_assignment`].
#[derive(Debug, Clone, PartialEq)]
pub struct Lookup {
    /// The remembered response of the request_id, if any.
    pub request: Option<RequestRecord>,
    /// The incident, if recorded.
    pub incident: Option<IncidentRecord>,
    /// For `lookup`, the incident's ACTIVE assignment; for `lookup_assignment`, the
    /// assignment named, in whatever state.
    pub assignment: Option<Assignment>,
}

/// Creates or updates an incident.
#[derive(Debug, Clone)]
pub struct IncidentWrite {
    /// The incident as it is after the write (its `version` is ignored: the store sets
    /// `expected_version + 1`).
    pub record: IncidentRecord,
    /// The version read before deciding; 0 means the incident must not exist yet.
    pub expected_version: i64,
}

/// Ends an ACTIVE assignment.
#[derive(Debug, Clone)]
pub struct EndAssignment {
    /// The assignment.
    pub assignment_id: String,
    /// RELEASED or CANCELLED.
    pub state: AssignmentState,
    /// When it ended.
    pub end_time: DateTime<Utc>,
    /// Why, in the caller's words.
    pub end_reason: String,
    /// Why, as routing records it: TEAM_CLEARED, RELEASED, CANCELLED or LIVE_STATE_LOST.
    pub end_cause: AssignmentEndCause,
}

/// One transaction of the record (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct Write {
    /// The region the events belong to.
    pub region: String,
    /// The idempotent response to remember.
    pub request: Option<RequestRecord>,
    /// The incident change.
    pub incident: Option<IncidentWrite>,
    /// The assignment to end.
    pub end_assignment: Option<EndAssignment>,
    /// The assignment to record (state ACTIVE).
    pub new_assignment: Option<Assignment>,
    /// The events to append (their `event_id` is assigned by the store).
    pub events: Vec<AssignmentEvent>,
    /// The audit record of the call that made the write, appended last in its transaction.
    pub audit: Option<relay_runtime::audit::AuditRecord>,
}

/// Why the record refused a write, or could not be reached. A refused write changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The incident changed since it was read (or already exists).
    #[error("the incident changed since it was read")]
    VersionConflict,
    /// The claim's fencing token is not larger than the last one recorded for the team.
    #[error("stale fencing token")]
    StaleToken,
    /// The team already has an ACTIVE assignment.
    #[error("the team already has an active assignment")]
    TeamBusy,
    /// The incident already has an ACTIVE assignment.
    #[error("the incident already has an active assignment")]
    IncidentBusy,
    /// The assignment to end is not ACTIVE.
    #[error("the assignment is not active")]
    NotActive,
    /// The request_id is already remembered.
    #[error("the request was already recorded")]
    DuplicateRequest,
    /// The database failed.
    #[error("record unavailable")]
    Backend(#[source] relay_runtime::BoxError),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        Self::Backend(Box::new(error))
    }
}

/// The record. Every method is one statement or one transaction.
#[tonic::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// One incident.
    async fn incident(&self, incident_id: &str) -> Result<Option<IncidentRecord>, StoreError>;
    /// One assignment.
    async fn assignment(&self, assignment_id: &str) -> Result<Option<Assignment>, StoreError>;
    /// The ACTIVE assignment of an incident.
    async fn active_assignment_of_incident(
        &self,
        incident_id: &str,
    ) -> Result<Option<Assignment>, StoreError>;
    /// The latest assignment of an incident (by assigned_at), in whatever state.
    async fn latest_assignment_of_incident(
        &self,
        incident_id: &str,
    ) -> Result<Option<Assignment>, StoreError>;
    /// The ACTIVE assignment of a team.
    async fn active_assignment_of_team(
        &self,
        team_id: &str,
    ) -> Result<Option<Assignment>, StoreError>;
    /// Every ACTIVE assignment of a region.
    async fn active_assignments(&self, region: &str) -> Result<Vec<Assignment>, StoreError>;
    /// Queued incidents of a region in serving order (priority, queued_time, incident_id),
    /// after `after`.
    async fn queue(
        &self,
        region: &str,
        after: Option<&QueueCursor>,
        limit: usize,
    ) -> Result<Vec<IncidentRecord>, StoreError>;
    /// Queued incidents whose escalate_time is at or before `now`, any region.
    async fn due_escalations(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<IncidentRecord>, StoreError>;
    /// Regions with a queued incident, an ACTIVE assignment, or any event.
    async fn regions(&self) -> Result<Vec<String>, StoreError>;
    /// A remembered response.
    async fn request(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError>;
    /// What AssignTeam reads first, in one round trip where the backend can: the remembered
    /// response of `request_id`, the incident, and its ACTIVE assignment.
    async fn lookup(&self, request_id: &str, incident_id: &str) -> Result<Lookup, StoreError> {
        lookup_each(self, request_id, incident_id).await
    }
    /// What ReleaseTeam reads first, in one round trip where the backend can: the remembered
    /// response of `request_id`, the assignment (in any state) and its incident.
    async fn lookup_assignment(
        &self,
        request_id: &str,
        assignment_id: &str,
    ) -> Result<Lookup, StoreError> {
        lookup_assignment_each(self, request_id, assignment_id).await
    }
    /// One transaction; see [`Write`].
    async fn write(&self, write: Write) -> Result<(), StoreError>;
    /// Numbers the events written since the last call (numbering is kept out of the request
    /// path); reading events does it first. Returns how many.
    async fn sequence_events(&self) -> Result<usize, StoreError>;
    /// Events written and not yet numbered: how many, and the oldest one's time.
    async fn pending_events(&self) -> Result<(i64, Option<DateTime<Utc>>), StoreError>;
    /// Events of a region with sequence number above `after`, oldest first, with event_id set.
    async fn events(
        &self,
        region: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, AssignmentEvent)>, StoreError>;
    /// The oldest retained and the last sequence numbers of a region; the oldest is last + 1
    /// when no event is retained (and (1, 0) for a region without events).
    async fn event_bounds(&self, region: &str) -> Result<(i64, i64), StoreError>;
    /// Forgets events and remembered responses older than `before`; returns how many rows.
    async fn prune(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
}

/// [`Store::lookup`] as one read after another (for a backend without a joined read).
pub(crate) async fn lookup_each<S: Store + ?Sized>(
    store: &S,
    request_id: &str,
    incident_id: &str,
) -> Result<Lookup, StoreError> {
    Ok(Lookup {
        request: store.request(request_id).await?,
        incident: store.incident(incident_id).await?,
        assignment: store.active_assignment_of_incident(incident_id).await?,
    })
}

/// [`Store::lookup_assignment`] as one read after another.
pub(crate) async fn lookup_assignment_each<S: Store + ?Sized>(
    store: &S,
    request_id: &str,
    assignment_id: &str,
) -> Result<Lookup, StoreError> {
    let assignment = store.assignment(assignment_id).await?;
    let incident = match &assignment {
        Some(a) => store.incident(&a.incident_id).await?,
        None => None,
    };
    Ok(Lookup {
        request: store.request(request_id).await?,
        incident,
        assignment,
    })
}

/// A row of the record's tables, decoded: the row mapping both backends share. Implemented
/// for every row type that decodes the columns' types (PostgreSQL's and SQLite's).
pub(crate) trait RecordRow {
    /// An incident from columns named `<prefix><column>` (see `sql::INCIDENT_COLUMNS`).
    fn incident_at(&self, prefix: &str) -> Result<IncidentRecord, StoreError>;
    /// An assignment from columns named `<prefix><column>` (see `sql::ASSIGNMENT_COLUMNS`).
    fn assignment_at(&self, prefix: &str) -> Result<Assignment, StoreError>;
}

impl<R> RecordRow for R
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> f64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> DateTime<Utc>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn incident_at(&self, prefix: &str) -> Result<IncidentRecord, StoreError> {
        let c = |name: &str| format!("{prefix}{name}");
        let state: String = self.try_get(c("state").as_str())?;
        let required: String = self.try_get(c("required_capabilities").as_str())?;
        let preferred: String = self.try_get(c("preferred_capabilities").as_str())?;
        Ok(IncidentRecord {
            incident_id: self.try_get(c("incident_id").as_str())?,
            region: self.try_get(c("region").as_str())?,
            cad_system: self.try_get(c("cad_system").as_str())?,
            priority: self.try_get(c("priority").as_str())?,
            location: GeoPoint {
                latitude: self.try_get(c("latitude").as_str())?,
                longitude: self.try_get(c("longitude").as_str())?,
            },
            required_capabilities: split_tags(&required),
            preferred_capabilities: split_tags(&preferred),
            expected_duration_seconds: self.try_get(c("expected_duration_seconds").as_str())?,
            state: IncidentState::parse(&state)
                .ok_or_else(|| StoreError::Backend(format!("unknown state {state}").into()))?,
            queued_time: self.try_get(c("queued_time").as_str())?,
            escalate_time: self.try_get(c("escalate_time").as_str())?,
            unserved_reason: self.try_get(c("unserved_reason").as_str())?,
            version: self.try_get(c("version").as_str())?,
            update_time: self.try_get(c("update_time").as_str())?,
            cad_incident_id: self.try_get(c("cad_incident_id").as_str())?,
        })
    }

    fn assignment_at(&self, prefix: &str) -> Result<Assignment, StoreError> {
        let c = |name: &str| format!("{prefix}{name}");
        let state = parse_assignment_state(&self.try_get::<String, _>(c("state").as_str())?);
        let end_time: Option<DateTime<Utc>> = self.try_get(c("end_time").as_str())?;
        let end_reason: String = self.try_get(c("end_reason").as_str())?;
        let end_cause = end_cause_of(state, self.try_get(c("end_cause").as_str())?, &end_reason);
        Ok(Assignment {
            assignment_id: self.try_get(c("assignment_id").as_str())?,
            incident_id: self.try_get(c("incident_id").as_str())?,
            team_id: self.try_get(c("team_id").as_str())?,
            region: self.try_get(c("region").as_str())?,
            distance_meters: self.try_get(c("distance_meters").as_str())?,
            eta_seconds: self.try_get(c("eta_seconds").as_str())?,
            assigned_at: Some(timestamp(self.try_get(c("assigned_at").as_str())?)),
            fencing_token: self.try_get(c("fencing_token").as_str())?,
            state: state.into(),
            source: self.try_get(c("source").as_str())?,
            cad_system: self.try_get(c("cad_system").as_str())?,
            end_time: end_time.map(timestamp),
            end_reason,
            end_cause: end_cause.into(),
            cad_incident_id: self.try_get(c("cad_incident_id").as_str())?,
        })
    }
}

pub(crate) fn join_tags(tags: &[String]) -> String {
    tags.join(",")
}

pub(crate) fn split_tags(tags: &str) -> Vec<String> {
    if tags.is_empty() {
        Vec::new()
    } else {
        tags.split(',').map(str::to_owned).collect()
    }
}

pub(crate) fn assignment_state_name(state: AssignmentState) -> &'static str {
    match state {
        AssignmentState::Released => "RELEASED",
        AssignmentState::Cancelled => "CANCELLED",
        AssignmentState::Active | AssignmentState::Unspecified => "ACTIVE",
    }
}

pub(crate) fn parse_assignment_state(name: &str) -> AssignmentState {
    match name {
        "RELEASED" => AssignmentState::Released,
        "CANCELLED" => AssignmentState::Cancelled,
        _ => AssignmentState::Active,
    }
}

/// The end reason routing writes when a team cleared to AVAILABLE with an ACTIVE assignment.
pub const TEAM_CLEARED: &str = "team cleared";

/// The end reason routing writes when Redis lost the live state that held the claim.
pub const LIVE_STATE_LOST: &str = "live state lost";

/// The end cause of a stored assignment. A row ended before the `end_cause` column existed
/// (or by a replica of the previous release) has cause 0 while not ACTIVE: its cause is
/// derived from what it does say. CANCELLED only ever came from CancelRouting; the
/// [`TEAM_CLEARED`] reason is what routing wrote when a team cleared (a ReleaseTeam caller
/// could pass the same text, which only the new column tells apart); anything else was a
/// ReleaseTeam.
pub(crate) fn end_cause_of(
    state: AssignmentState,
    stored: i32,
    end_reason: &str,
) -> AssignmentEndCause {
    match (state, AssignmentEndCause::try_from(stored)) {
        (AssignmentState::Active | AssignmentState::Unspecified, _) => {
            AssignmentEndCause::Unspecified
        }
        (_, Ok(cause)) if cause != AssignmentEndCause::Unspecified => cause,
        (AssignmentState::Cancelled, _) => AssignmentEndCause::Cancelled,
        (AssignmentState::Released, _) if end_reason == TEAM_CLEARED => {
            AssignmentEndCause::TeamCleared
        }
        (AssignmentState::Released, _) => AssignmentEndCause::Released,
    }
}

pub(crate) fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    relay_runtime::validate::to_timestamp(time)
}

pub(crate) fn from_timestamp(time: Option<&prost_types::Timestamp>) -> DateTime<Utc> {
    time.and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
        .unwrap_or_default()
}
