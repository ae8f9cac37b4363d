//! The live state of teams behind one trait, [`TeamStore`], with two backends: Redis
//! ([`RedisTeamStore`], production) and in-process ([`MemoryTeamStore`], `relay dev` and tests).
//! One conformance suite (`tests/conformance.rs`) runs unchanged against both.
//!
//! Routing uses this trait as a library: [`TeamStore::available_near`] to rank candidates,
//! [`TeamStore::claim`] to take a team atomically (returning a fencing token),
//! [`TeamStore::release`] to hand it back, and [`TeamStore::read_events`] to drain its queue when
//! teams become available.
//!
//! Time is always a parameter (`now`), so tests control it; only event ids follow the store's
//! own clock (the Redis server's, or the process's), as Redis stream ids do.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::model::{
    EventId, Position, Team, TeamDefinition, TeamEvent, TeamStatus, TeamSummary, distance_meters,
};

pub mod memory;
pub mod redis;
mod scripts;

pub use memory::MemoryTeamStore;
pub use redis::RedisTeamStore;

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

    /// Claims an AVAILABLE team for an incident in one atomic step: only if its position is
    /// at most `max_position_age` old at `now` (not checked when `None`: a dispatcher's
    /// explicit choice) and its revision equals `expected_revision` when given. The team becomes DISPATCHED on the incident, leaves the GEO set, and its
    /// fencing counter increases.
    async fn claim(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        expected_revision: Option<i64>,
        now: DateTime<Utc>,
        max_position_age: Option<Duration>,
    ) -> Result<Claim, ClaimError>;

    /// Hands a team that is busy on `incident_id` back: AVAILABLE, no incident, back in the
    /// GEO set when it has a position.
    async fn release(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        now: DateTime<Utc>,
    ) -> Result<ReleaseOutcome, ReleaseError>;

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

    /// The stored idempotency record of a request, if any.
    async fn idempotency_get(
        &self,
        rpc: &str,
        request_id: &str,
    ) -> Result<Option<String>, StoreError>;

    /// Stores an idempotency record for `ttl`.
    async fn idempotency_put(
        &self,
        rpc: &str,
        request_id: &str,
        record: &str,
        ttl: Duration,
    ) -> Result<(), StoreError>;

    /// Whether the store is reachable (readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    /// The live-state epoch: a marker written once the live state was built from the roster
    /// ([`Self::adopt_live_epoch`]). `None` means the store lost it (a flush, or a failover to
    /// a replica that never had it), and with it every team written before.
    async fn live_epoch(&self) -> Result<Option<String>, StoreError>;

    /// Writes `candidate` as the live-state epoch unless one is present, atomically, and
    /// returns the epoch in force (another replica's, when it wrote first).
    async fn adopt_live_epoch(&self, candidate: &str) -> Result<String, StoreError>;

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

    /// The `count` nearest AVAILABLE teams of the region within the radius, nearest first
    /// (ties by team id), read without touching the rest of the region: the bounded read
    /// routing ranks from. [`Nearest::frontier`] tells what was left unread.
    async fn nearest_available(
        &self,
        region: &str,
        point: Position,
        radius_meters: f64,
        count: usize,
    ) -> Result<Nearest, StoreError> {
        let mut teams = self.available_within(region, point, radius_meters).await?;
        let frontier = (teams.len() > count).then(|| teams[count].1);
        teams.truncate(count);
        Ok(Nearest {
            teams: teams
                .iter()
                .map(|(team, distance)| (TeamSummary::from(team), *distance))
                .collect(),
            frontier,
        })
    }

    /// Up to `count` teams of the region that are on duty but not AVAILABLE (busy or out of
    /// service) and have a position within `radius_meters` of `point`, nearest first (ties by
    /// team id), as the fields a ranking needs with their distances: what routing lists beside
    /// the nearest AVAILABLE teams, so that every nearer team's exclusion is explained. This
    /// default reads the whole region; the Redis store answers from its GEO set of such teams.
    async fn nearest_unavailable(
        &self,
        region: &str,
        point: Position,
        radius_meters: f64,
        count: usize,
    ) -> Result<Vec<(TeamSummary, f64)>, StoreError> {
        let mut teams = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .list_teams(Some(region), None, after.as_deref(), 500)
                .await?;
            after = page.teams.last().map(|t| t.team_id.clone());
            teams.extend(page.teams.iter().map(TeamSummary::from));
            if !page.more || after.is_none() {
                break;
            }
        }
        let mut found = rank_placed(teams, point, radius_meters, is_unavailable);
        found.truncate(count);
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

/// The answer of [`TeamStore::nearest_available`].
#[derive(Debug, Clone, PartialEq)]
pub struct Nearest {
    /// The teams read (the fields a ranking needs), with their great-circle distances,
    /// nearest first (ties by team id).
    pub teams: Vec<(TeamSummary, f64)>,
    /// `None` when `teams` holds every AVAILABLE team within the radius; otherwise a distance
    /// (meters) that every AVAILABLE team left unread is at least as far as.
    pub frontier: Option<f64>,
}

/// Filters and orders proximity candidates exactly: AVAILABLE, positioned, indexable, within
/// the radius by [`distance_meters`], nearest first, ties by team id. Both backends finish
/// their index query with it, so they agree to the bit.
#[must_use]
pub fn rank_candidates<T: Placed>(
    teams: Vec<T>,
    point: Position,
    radius_meters: f64,
) -> Vec<(T, f64)> {
    rank_placed(teams, point, radius_meters, |status| {
        status == TeamStatus::Available
    })
}

/// Whether a team in `status` belongs to [`TeamStore::nearest_unavailable`]'s answer: on
/// duty, not AVAILABLE.
#[must_use]
pub fn is_unavailable(status: TeamStatus) -> bool {
    !matches!(status, TeamStatus::OffDuty | TeamStatus::Available)
}

/// As [`rank_candidates`], for the teams whose status `keep` accepts.
#[must_use]
pub fn rank_placed<T: Placed>(
    teams: Vec<T>,
    point: Position,
    radius_meters: f64,
    keep: fn(TeamStatus) -> bool,
) -> Vec<(T, f64)> {
    let mut found: Vec<(T, f64)> = teams
        .into_iter()
        .filter(|team| keep(team.status()))
        .filter_map(|team| {
            let position = team.location()?;
            if position.latitude.abs() > MAX_INDEXED_LATITUDE {
                return None;
            }
            let distance = distance_meters(point, position);
            (distance <= radius_meters).then_some((team, distance))
        })
        .collect();
    found.sort_by(|(a, da), (b, db)| da.total_cmp(db).then_with(|| a.id().cmp(b.id())));
    found
}

/// A team as [`rank_candidates`] sees it: [`Team`] or [`TeamSummary`].
pub trait Placed {
    /// The team's id.
    fn id(&self) -> &str;
    /// Its status.
    fn status(&self) -> TeamStatus;
    /// Its last accepted position.
    fn location(&self) -> Option<Position>;
}

/// Both team types carry the fields under the same names.
macro_rules! placed {
    ($($team:ty),*) => {$(
        impl Placed for $team {
            fn id(&self) -> &str {
                &self.team_id
            }
            fn status(&self) -> TeamStatus {
                self.status
            }
            fn location(&self) -> Option<Position> {
                self.location
            }
        }
    )*};
}

placed!(Team, TeamSummary);
