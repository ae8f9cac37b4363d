//! The team model shared by availability and routing: a team, its status rules (the one
//! [`is_busy`], the state machine, "off duty after this call"), events, and the great-circle
//! geometry of `relay_runtime::geo` that every backend uses (re-exported, not copied).
//! Nothing here knows about Redis, SQL or protobuf encoding.

use chrono::{DateTime, TimeZone, Utc};
pub use relay_proto::common::TeamStatus;

pub use relay_runtime::geo::{EARTH_RADIUS_METERS, Point as Position, distance_meters};

/// The roster fields of a team: who it is, not where it is. Durable in PostgreSQL (or SQLite).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamDefinition {
    /// The team's id.
    pub team_id: String,
    /// Name shown to dispatchers.
    pub display_name: String,
    /// The region whose calls the team takes.
    pub region: String,
    /// Capability tags, sorted and without duplicates.
    pub capabilities: Vec<String>,
    /// When the current shift ends, if known.
    pub shift_ends_at: Option<DateTime<Utc>>,
}

/// A team's roster fields and live state, as the store holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Team {
    /// The team's id.
    pub team_id: String,
    /// Name shown to dispatchers.
    pub display_name: String,
    /// The team's region.
    pub region: String,
    /// Capability tags, sorted and without duplicates.
    pub capabilities: Vec<String>,
    /// Current status.
    pub status: TeamStatus,
    /// Last accepted position.
    pub location: Option<Position>,
    /// Device time of the last accepted position.
    pub location_updated_at: Option<DateTime<Utc>>,
    /// Heading of the last accepted position, degrees from north.
    pub heading_degrees: Option<f64>,
    /// Speed of the last accepted position, m/s.
    pub speed_meters_per_second: Option<f64>,
    /// Accuracy of the last accepted position, meters.
    pub accuracy_meters: Option<f64>,
    /// The incident the team works while busy; empty otherwise.
    pub incident_id: String,
    /// When the shift ends, if known.
    pub shift_ends_at: Option<DateTime<Utc>>,
    /// Increases with every change.
    pub revision: i64,
    /// The per-team fencing counter: increased by every claim, never decreases.
    pub fencing_token: i64,
    /// When the team was created.
    pub create_time: DateTime<Utc>,
    /// When the team last changed.
    pub update_time: DateTime<Utc>,
}

/// What a proximity ranking needs of a team: its identity, capabilities, status, position and
/// shift ([`DispatchStore::nearest_available`](crate::DispatchStore::nearest_available) reads only
/// these, about half of a team's fields).
#[derive(Debug, Clone, PartialEq)]
pub struct TeamSummary {
    /// The team's id.
    pub team_id: String,
    /// Name shown to dispatchers.
    pub display_name: String,
    /// Capability tags, sorted and without duplicates.
    pub capabilities: Vec<String>,
    /// Current status.
    pub status: TeamStatus,
    /// Last accepted position.
    pub location: Option<Position>,
    /// Device time of the last accepted position.
    pub location_updated_at: Option<DateTime<Utc>>,
    /// When the shift ends, if known.
    pub shift_ends_at: Option<DateTime<Utc>>,
}

impl From<&Team> for TeamSummary {
    fn from(team: &Team) -> Self {
        Self {
            team_id: team.team_id.clone(),
            display_name: team.display_name.clone(),
            capabilities: team.capabilities.clone(),
            status: team.status,
            location: team.location,
            location_updated_at: team.location_updated_at,
            shift_ends_at: team.shift_ends_at,
        }
    }
}

impl Team {
    /// The roster fields of this team.
    #[must_use]
    pub fn definition(&self) -> TeamDefinition {
        TeamDefinition {
            team_id: self.team_id.clone(),
            display_name: self.display_name.clone(),
            region: self.region.clone(),
            capabilities: self.capabilities.clone(),
            shift_ends_at: self.shift_ends_at,
        }
    }

    /// Whether the team has every capability in `required`.
    #[must_use]
    pub fn has_capabilities(&self, required: &[String]) -> bool {
        required
            .iter()
            .all(|tag| self.capabilities.binary_search(tag).is_ok())
    }
}

/// Whether `status` is one of the busy statuses (DISPATCHED, EN_ROUTE, ON_SCENE,
/// TRANSPORTING), which always carry an incident.
#[must_use]
pub fn is_busy(status: TeamStatus) -> bool {
    matches!(
        status,
        TeamStatus::Dispatched
            | TeamStatus::EnRoute
            | TeamStatus::OnScene
            | TeamStatus::Transporting
    )
}

/// The statuses from which `target` may be reached (the state machine of
/// `relay.common.v1.TeamStatus`). Both backends use this one table: the Redis script receives
/// it as an argument.
#[must_use]
pub fn allowed_from(target: TeamStatus) -> &'static [TeamStatus] {
    use TeamStatus as S;
    match target {
        S::OffDuty => &[S::Available, S::OutOfService],
        S::Available => &[
            S::OffDuty,
            S::Dispatched,
            S::EnRoute,
            S::OnScene,
            S::Transporting,
            S::OutOfService,
        ],
        S::Dispatched => &[S::Available],
        S::EnRoute => &[S::Dispatched],
        S::OnScene => &[S::Dispatched, S::EnRoute],
        S::Transporting => &[S::OnScene],
        S::OutOfService => &[S::OffDuty, S::Available],
        S::Unspecified => &[],
    }
}

/// The status a team asking for `target` lands in: "off duty after this call". A busy team
/// that clears (AVAILABLE) once its shift has ended (`shift_ends_at` at or before `now`) goes
/// OFF_DUTY instead, so a team finishes the call it is on when its shift ends and is then
/// off duty, with no AVAILABLE moment in which routing could offer it a new call. Both
/// backends apply this one rule (the Redis script mirrors it).
#[must_use]
pub fn landing_status(
    current: TeamStatus,
    target: TeamStatus,
    shift_ends_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> TeamStatus {
    let shift_over = shift_ends_at.is_some_and(|end| end <= now);
    if target == TeamStatus::Available && is_busy(current) && shift_over {
        TeamStatus::OffDuty
    } else {
        target
    }
}

/// What kind of change an event reports (mirrors `TeamEventKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Created, roster changed, or moved into the region.
    Upserted,
    /// Status (and possibly incident) changed.
    StatusChanged,
    /// A new position was accepted.
    LocationChanged,
    /// The team left the region.
    Removed,
}

impl EventKind {
    /// The short code stored in the event stream.
    #[must_use]
    pub fn code(self) -> &'static str {
        match self {
            Self::Upserted => "upserted",
            Self::StatusChanged => "status",
            Self::LocationChanged => "location",
            Self::Removed => "removed",
        }
    }

    /// The kind for a stored code.
    #[must_use]
    pub fn from_code(code: &str) -> Option<Self> {
        Some(match code {
            "upserted" => Self::Upserted,
            "status" => Self::StatusChanged,
            "location" => Self::LocationChanged,
            "removed" => Self::Removed,
            _ => return None,
        })
    }
}

/// The id of an event in a region's stream: `<milliseconds>-<sequence>`, ordered as Redis
/// stream ids are. Clients treat it as opaque.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence within the millisecond.
    pub seq: u64,
}

impl EventId {
    /// The id before every event.
    pub const ZERO: Self = Self { ms: 0, seq: 0 };

    /// Parses `<ms>-<seq>`.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let (ms, seq) = text.split_once('-')?;
        let digits =
            |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return None;
        }
        Some(Self {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// One change to one team of a region.
#[derive(Debug, Clone, PartialEq)]
pub struct TeamEvent {
    /// Position in the region's stream.
    pub id: EventId,
    /// What changed.
    pub kind: EventKind,
    /// The team after the change (before it, for `Removed`).
    pub team: Team,
    /// When the change was applied.
    pub event_time: DateTime<Utc>,
}

/// Microseconds since the Unix epoch, the unit times are stored in.
#[must_use]
pub fn to_micros(time: DateTime<Utc>) -> i64 {
    time.timestamp_micros()
}

/// The time for stored microseconds (the epoch for values out of range).
#[must_use]
pub fn from_micros(micros: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(micros)
        .single()
        .unwrap_or(DateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_matches_known_values() {
        let eugene = Position {
            latitude: 44.0521,
            longitude: -123.0868,
        };
        let portland = Position {
            latitude: 45.5152,
            longitude: -122.6784,
        };
        let d = distance_meters(eugene, portland);
        assert!((d - 165_000.0).abs() < 2_000.0, "{d}");
        assert!(distance_meters(eugene, eugene).abs() < 1e-9);
    }

    #[test]
    fn event_ids_parse_and_order() {
        let a = EventId::parse("1700000000000-0").expect("valid");
        let b = EventId::parse("1700000000000-1").expect("valid");
        assert!(a < b);
        assert_eq!(a.to_string(), "1700000000000-0");
        for bad in ["", "-", "1-", "-1", "a-1", "1-2-3", "1"] {
            assert!(EventId::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_state_machine_matches_the_contract() {
        use TeamStatus as S;
        assert!(allowed_from(S::Dispatched).contains(&S::Available));
        assert!(!allowed_from(S::OffDuty).contains(&S::Dispatched));
        assert!(!allowed_from(S::OutOfService).contains(&S::OnScene));
        for busy in [S::Dispatched, S::EnRoute, S::OnScene, S::Transporting] {
            assert!(is_busy(busy));
            assert!(allowed_from(S::Available).contains(&busy));
        }
    }
}
