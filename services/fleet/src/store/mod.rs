//! The live state of teams behind two traits, with two backends each: Redis
//! ([`RedisTeamStore`], production) and in-process ([`MemoryTeamStore`], `relay dev` and tests).
//! One conformance suite (`crate::conformance`, `testing` feature) runs unchanged against both.
//!
//! - [`TeamStore`] is the live state availability serves: roster upserts, statuses, positions,
//!   queries, events, the live-state epoch.
//! - [`DispatchStore`] is what routing needs: [`DispatchStore::nearest_available`] to rank
//!   candidates (and [`DispatchStore::nearest_unavailable`] to explain the nearer teams that
//!   lost), [`DispatchStore::claim`] to take a team atomically (returning a fencing token),
//!   [`DispatchStore::release`] to hand it back, the recommendations routing remembers, and
//!   [`DispatchStore::subscribe`], announcements of teams becoming free for its queue.
//!
//! [`FleetStore`] is both, for code (the conformance suite, `relay dev`) that holds one store
//! for the two services.
//!
//! Time is always a parameter (`now`), so tests control it; only event ids follow the store's
//! own clock (the Redis server's, or the process's), as Redis stream ids do.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::broadcast;

use crate::model::{
    EventId, Position, Team, TeamDefinition, TeamEvent, TeamStatus, TeamSummary, distance_meters,
};

mod announce;
pub mod memory;
pub mod redis;
mod scripts;

pub use memory::MemoryTeamStore;
pub use redis::RedisTeamStore;

mod search;
pub use search::*;

/// Latitudes beyond this cannot be indexed by Redis GEO (its Web Mercator limit). Teams
/// positioned beyond it are never returned by proximity queries, in either backend.
pub const MAX_INDEXED_LATITUDE: f64 = 85.051_128_78;

/// How long event history is kept by default (24 hours).
pub const DEFAULT_EVENT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// A failure of the storage itself (unreachable, or a record it cannot read).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis refused or is unreachable.
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// A stored record could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

/// Why a roster upsert or a status change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// No team has this id.
    #[error("team not found")]
    NotFound,
    /// `expected_revision` differs from the current revision (0 when the team does not exist).
    #[error("revision mismatch: current revision is {current}")]
    RevisionMismatch {
        /// The team's current revision.
        current: i64,
    },
    /// The state machine forbids the change.
    #[error("a team cannot go from {from:?} to {to:?}")]
    InvalidTransition {
        /// Current status.
        from: TeamStatus,
        /// Requested status.
        to: TeamStatus,
    },
    /// The change names another incident than the team's current one.
    #[error("the team is working another incident")]
    IncidentMismatch {
        /// The team's current incident (empty when none).
        current_incident: String,
    },
    /// AVAILABLE -> DISPATCHED happens only through a claim.
    #[error("only routing dispatches a team")]
    DispatchRequiresRouting,
    /// A region change while the team is on duty.
    #[error("the region can change only while the team is off duty or out of service")]
    RegionChangeNotAllowed {
        /// Current status.
        status: TeamStatus,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a claim was refused.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// No team has this id in this region.
    #[error("team not found")]
    NotFound,
    /// The team is not AVAILABLE.
    #[error("team is {status:?}, not available")]
    NotAvailable {
        /// Its current status.
        status: TeamStatus,
    },
    /// The team has no position, or one older than the allowed age.
    #[error("team position is missing or stale")]
    StalePosition,
    /// `expected_revision` differs from the current revision.
    #[error("revision mismatch: current revision is {current}")]
    RevisionMismatch {
        /// The current revision.
        current: i64,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a release was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// No team has this id in this region.
    #[error("team not found")]
    NotFound,
    /// The team is not working this incident.
    #[error("team is not on this incident")]
    NotOnIncident {
        /// Its current status.
        status: TeamStatus,
        /// Its current incident (empty when not busy).
        current_incident: String,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why events could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The requested position is older than the retained history.
    #[error("event history before this id is no longer retained")]
    HistoryExpired,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A mutation's request id and what a retry is checked against (availability's idempotency).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestRecord<'a> {
    /// The RPC: records are kept per RPC.
    pub rpc: &'a str,
    /// The client's request id.
    pub request_id: &'a str,
    /// What makes two requests the same (a digest of the request without its id).
    pub fingerprint: &'a str,
    /// How long the record is kept.
    pub ttl: Duration,
}

/// What a change under a request id did.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded<T> {
    /// The change ran now, and its record was written with it.
    Applied(T),
    /// The request id already ran with this fingerprint: what it answered then (the team as
    /// it was right after that change); nothing changed now.
    Replayed(T),
    /// The request id already ran with another fingerprint; nothing changed.
    Reused,
}

/// A successful upsert.
#[derive(Debug, Clone, PartialEq)]
pub struct UpsertOutcome {
    /// The team after the upsert.
    pub team: Team,
    /// Whether the team was created.
    pub created: bool,
    /// Whether anything changed (false: same fields, no new revision, no event).
    pub changed: bool,
}

/// A successful claim.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// The team's fencing counter after the claim: strictly greater than every earlier claim's.
    pub fencing_token: i64,
    /// The team's revision after the claim.
    pub revision: i64,
    /// The team after the claim (DISPATCHED on the incident).
    pub team: Team,
}

/// A successful release.
#[derive(Debug, Clone, PartialEq)]
pub enum ReleaseOutcome {
    /// The team was busy on the incident and is AVAILABLE now.
    Released(Team),
    /// The team had already left this incident (and is on no other); nothing changed.
    AlreadyReleased(Team),
}

/// One position report.
#[derive(Debug, Clone, PartialEq)]
pub struct LocationReport {
    /// The team.
    pub team_id: String,
    /// Where it was.
    pub position: Position,
    /// Device time of the fix.
    pub recorded_at: DateTime<Utc>,
    /// Heading, degrees.
    pub heading_degrees: Option<f64>,
    /// Speed, m/s.
    pub speed_meters_per_second: Option<f64>,
    /// Accuracy, meters.
    pub accuracy_meters: Option<f64>,
}

/// What happened to one position report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocationOutcome {
    /// It became the team's position; the team's revision after it.
    Accepted {
        /// Revision after the report.
        revision: i64,
    },
    /// The stored position was as new or newer; unchanged revision.
    Stale {
        /// Current revision.
        revision: i64,
    },
    /// No team has this id.
    NotFound,
}

/// One page of teams.
#[derive(Debug, Clone, PartialEq)]
pub struct TeamPage {
    /// Teams ordered by id.
    pub teams: Vec<Team>,
    /// Whether more teams follow the last one.
    pub more: bool,
}

/// The live state of teams. Every method that changes a team is one atomic step.
#[tonic::async_trait]
pub trait TeamStore: Send + Sync + 'static {
    /// Creates a team (OFF_DUTY, revision 1) or replaces its roster fields. A region change is
    /// allowed only while the team is OFF_DUTY or OUT_OF_SERVICE. `expected_revision` on a
    /// team that does not exist is a mismatch with current revision 0.
    async fn upsert_team(
        &self,
        definition: &TeamDefinition,
        expected_revision: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<UpsertOutcome, ChangeError>;

    /// Recreates a team from the durable roster after the live state was lost; does nothing
    /// when the team is present. The new team starts OFF_DUTY with a revision and a fencing
    /// counter of at least `floor` (callers pass a value above any issued before, such as the
    /// current time in microseconds), so neither ever decreases. Returns whether it created.
    async fn seed_team(
        &self,
        definition: &TeamDefinition,
        floor: i64,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// One team by id.
    async fn get_team(&self, team_id: &str) -> Result<Option<Team>, StoreError>;

    /// Teams ordered by id, after `after`, optionally of one region and one status.
    async fn list_teams(
        &self,
        region: Option<&str>,
        status: Option<TeamStatus>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<TeamPage, StoreError>;

    /// Changes a team's status following the state machine, atomically. Returns the team and
    /// whether anything changed.
    async fn set_status(
        &self,
        team_id: &str,
        status: TeamStatus,
        incident_id: &str,
        expected_revision: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<(Team, bool), ChangeError>;

    /// Applies position reports in order (pipelined on Redis); one outcome per report.
    async fn report_locations(
        &self,
        reports: &[LocationReport],
        now: DateTime<Utc>,
    ) -> Result<Vec<LocationOutcome>, StoreError>;

    /// Every AVAILABLE team of the region with a position within `radius_meters` of `point`,
    /// nearest first by great-circle distance, ties by team id, with its distance.
    async fn available_within(
        &self,
        region: &str,
        point: Position,
        radius_meters: f64,
    ) -> Result<Vec<(Team, f64)>, StoreError>;

    /// Up to `max` events of the region after `after`, waiting up to `block` for the first
    /// one. An empty answer means none arrived in time.
    async fn read_events(
        &self,
        region: &str,
        after: EventId,
        max: usize,
        block: Duration,
    ) -> Result<Vec<TeamEvent>, EventsError>;

    /// The id of the region's latest event ([`EventId::ZERO`] when there is none): reading
    /// after it yields only later changes.
    async fn last_event_id(&self, region: &str) -> Result<EventId, StoreError>;

    /// As [`Self::upsert_team`] under a request id: the request's record (its fingerprint and
    /// the team after the change) is written in the same atomic step as the change, so a
    /// retry of a request that changed the team replays it whatever happened after the change
    /// (a crash, a lost reply), and two requests under one id never both apply. A refused
    /// change writes no record.
    async fn upsert_team_once(
        &self,
        definition: &TeamDefinition,
        expected_revision: Option<i64>,
        now: DateTime<Utc>,
        request: &RequestRecord<'_>,
    ) -> Result<Recorded<UpsertOutcome>, ChangeError>;

    /// Undoes [`Self::upsert_team_once`]'s creation of `team` when the durable roster could
    /// not commit it (a failed request records nothing): removes the team and the request's
    /// record, only while nothing changed the team since (its revision is `team.revision`).
    /// Whether it was removed; `false` leaves a team another change already moved on, for the
    /// retry to converge.
    async fn undo_create(
        &self,
        team: &Team,
        request: &RequestRecord<'_>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// As [`Self::set_status`] under a request id (see [`Self::upsert_team_once`]).
    async fn set_status_once(
        &self,
        team_id: &str,
        status: TeamStatus,
        incident_id: &str,
        expected_revision: Option<i64>,
        now: DateTime<Utc>,
        request: &RequestRecord<'_>,
    ) -> Result<Recorded<(Team, bool)>, ChangeError>;

    /// Whether the store is reachable (readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    /// The live-state epoch: a marker written once the live state was built from the roster
    /// ([`Self::adopt_live_epoch`]). `None` means the store lost it (a flush, or a failover to
    /// a replica that never had it), and with it every team written before.
    async fn live_epoch(&self) -> Result<Option<String>, StoreError>;

    /// Writes `candidate` as the live-state epoch unless one is present, atomically, and
    /// returns the epoch in force (another replica's, when it wrote first).
    async fn adopt_live_epoch(&self, candidate: &str) -> Result<String, StoreError>;

    /// The epoch stamped in each of `regions` ([`Self::stamp_region_epochs`]), in order;
    /// `None` for a region never stamped, or whose keys the store lost.
    async fn region_epochs(&self, regions: &[String]) -> Result<Vec<Option<String>>, StoreError>;

    /// Stamps `epoch` in each of `regions` (after their teams were built from the roster).
    async fn stamp_region_epochs(&self, regions: &[String], epoch: &str) -> Result<(), StoreError>;

    /// The `limit` nearest AVAILABLE teams of the region within the radius, with distances,
    /// nearest first (ties by team id). No capability filter: routing ranks and explains.
    async fn available_near(
        &self,
        region: &str,
        point: Position,
        radius_meters: f64,
        limit: usize,
    ) -> Result<Vec<(Team, f64)>, StoreError> {
        let mut found = self.available_within(region, point, radius_meters).await?;
        found.truncate(limit);
        Ok(found)
    }

    /// As [`Self::available_near`], keeping only teams with every required capability.
    async fn find_available(
        &self,
        region: &str,
        point: Position,
        radius_meters: f64,
        required_capabilities: &[String],
        limit: usize,
    ) -> Result<Vec<(Team, f64)>, StoreError> {
        let mut found = self.available_within(region, point, radius_meters).await?;
        found.retain(|(team, _)| team.has_capabilities(required_capabilities));
        found.truncate(limit);
        Ok(found)
    }
}

/// What routing needs of the live state: the teams around a call, the atomic claim and its
/// release, the recommendations it remembers, and announcements of teams becoming free.
/// Every method that changes a team is one atomic step.
#[tonic::async_trait]
pub trait DispatchStore: Send + Sync + std::fmt::Debug + 'static {
    /// Every team of `region` that is not OFF_DUTY and is within `radius_meters` of `point`,
    /// plus such teams without a position; any status. Reads the whole region: routing passes
    /// `f64::INFINITY` when the nearest teams cannot serve a call and it must say why.
    async fn teams_near(
        &self,
        region: &str,
        point: Position,
        radius_meters: f64,
    ) -> Result<Vec<TeamSummary>, StoreError>;

    /// The `count` nearest AVAILABLE teams of the region within the radius, nearest first
    /// (ties by team id), read without touching the rest of the region: the bounded read
    /// routing ranks from. [`Nearest::frontier`] tells what was left unread.
    async fn nearest_available(
        &self,
        region: &str,
        point: Position,
        radius_meters: f64,
        count: usize,
    ) -> Result<Nearest, StoreError>;

    /// Up to `count` teams of the region that are on duty but not AVAILABLE (busy or out of
    /// service) and have a position within `radius_meters` of `point`, nearest first (ties by
    /// team id), as the fields a ranking needs with their distances: what routing lists beside
    /// the nearest AVAILABLE teams, so that every nearer team's exclusion is explained. The
    /// Redis store answers from its GEO set of such teams.
    async fn nearest_unavailable(
        &self,
        region: &str,
        point: Position,
        radius_meters: f64,
        count: usize,
    ) -> Result<Vec<(TeamSummary, f64)>, StoreError>;

    /// One team, in any status and region, as routing sees it.
    async fn fleet_team(&self, team_id: &str) -> Result<Option<FleetTeam>, StoreError>;

    /// Every busy team of `region` (DISPATCHED, EN_ROUTE, ON_SCENE, TRANSPORTING).
    async fn busy_teams(&self, region: &str) -> Result<Vec<FleetTeam>, StoreError>;

    /// Claims an AVAILABLE team for an incident in one atomic step: only if its position is
    /// at most `max_position_age` old at `now` (not checked when `None`: a dispatcher's
    /// explicit choice) and its revision equals `expected_revision` when given. The team
    /// becomes DISPATCHED on the incident, leaves the GEO set, and its fencing counter
    /// increases. A team of another region is [`ClaimError::NotFound`].
    async fn claim(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        expected_revision: Option<i64>,
        now: DateTime<Utc>,
        max_position_age: Option<Duration>,
    ) -> Result<Claim, ClaimError>;

    /// As [`Self::claim`] for a team restoring its call after a loss of the live state: the
    /// team may be OFF_DUTY (as the rebuild left it) as well as AVAILABLE, so that its device
    /// need not set it AVAILABLE first, when the queue could give it another call. No
    /// position check.
    async fn claim_to_restore(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Claim, ClaimError>;

    /// Hands a team that is busy on `incident_id` back: AVAILABLE, no incident, back in the
    /// GEO set when it has a position. The team is announced to [`Self::subscribe`]rs.
    async fn release(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        now: DateTime<Utc>,
    ) -> Result<ReleaseOutcome, ReleaseError>;

    /// As [`Self::release`], without announcing the team to this store's subscribers (other
    /// replicas still hear of it): the caller offers it to the queue itself (ReleaseTeam and
    /// CancelRouting do, right after their record write), so the queue is not read twice for
    /// one release.
    async fn release_quietly(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        now: DateTime<Utc>,
    ) -> Result<ReleaseOutcome, ReleaseError>;

    /// Remembers, for `ttl` after `now`, the routing request of an incident that was only
    /// recommended, so that ConfirmAssignment or CancelRouting on any replica finds the
    /// incident. Live state like the teams': lost with them, never the record. Its own key
    /// family ([`crate::Keyspace::recommendation`]).
    async fn remember_recommendation(
        &self,
        incident_id: &str,
        request: &[u8],
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// The request remembered by [`Self::remember_recommendation`], if it has not expired at
    /// `now`.
    async fn recommendation(
        &self,
        incident_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<u8>>, StoreError>;

    /// Announcements of teams becoming AVAILABLE (they cleared, came on duty, or a claim was
    /// undone) or OFF_DUTY (a shift that ended on a call): either may end an assignment or
    /// serve the queue. Best effort: the queue is also re-checked periodically. The Redis
    /// store reads each region's event stream from the first time the region is looked at.
    fn subscribe(&self) -> broadcast::Receiver<TeamAvailable>;
}

/// Both traits: the whole live state, for code that holds one store for availability and
/// routing (the conformance suite, `relay dev`).
pub trait FleetStore: TeamStore + DispatchStore {}

impl<T: TeamStore + DispatchStore + ?Sized> FleetStore for T {}
