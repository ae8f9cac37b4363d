//! The fleet port: routing's view of the teams' live state (who is where, in what status) and
//! the atomic claim that makes a team DISPATCHED on one incident.
//!
//! In production the fleet is availability's Redis keyspace (its GEO query and its Lua claim
//! script); an adapter maps that store onto [`Fleet`]. [`MemoryFleet`] is the in-process
//! implementation: one lock, atomic claims, and a per-team fencing token that only grows
//! (until [`MemoryFleet::flush`], which stands in for a Redis failover that lost writes).
//!
//! Round trips per assignment (with the Redis adapter): one `available_near` (a bounded GEO
//! search, then the hashes of the teams it found, pipelined: two round trips), one `claim`
//! (one script call) per candidate tried, then one PostgreSQL transaction for the record. Only
//! when the nearest teams cannot serve the call does routing read the whole region
//! (`teams_near`), to say exactly why no team can.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use relay_proto::common::{GeoPoint, TeamStatus};
use tokio::sync::broadcast;

use crate::{eta::great_circle_meters, ranking::TeamSnapshot};

/// A failure to reach the fleet's store (Redis down, a timeout).
#[derive(Debug, thiserror::Error)]
#[error("fleet unavailable: {0}")]
pub struct FleetError(pub String);

/// A successful claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The team's claim counter after this claim: larger than every earlier claim's token.
    pub fencing_token: i64,
}

/// Why a claim was refused. Nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimRefused {
    /// No team has this id.
    UnknownTeam,
    /// The team belongs to another region.
    WrongRegion,
    /// The team is not AVAILABLE (another call claimed it, or it went off duty).
    NotAvailable,
    /// The team's position is older than the limit given to the claim.
    StalePosition,
}

/// One team as the fleet knows it, with its region and current incident.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetTeam {
    /// The team's region.
    pub region: String,
    /// What ranking needs.
    pub snapshot: TeamSnapshot,
    /// The incident a busy team is working; `None` when not busy.
    pub incident_id: Option<String>,
    /// When the team's status last changed (for the reconciliation grace period).
    pub status_since: DateTime<Utc>,
    /// When the fleet's live record of the team was created (availability's `create_time`).
    /// A record created after an assignment began never held that assignment's claim: the
    /// live state was lost and rebuilt in between (see [`crate::engine::lost_live_state`]).
    pub live_since: DateTime<Utc>,
}

/// The nearest AVAILABLE teams around a point, as [`Fleet::available_near`] answers.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NearestTeams {
    /// The teams read (AVAILABLE, positioned, within the radius), nearest first.
    pub teams: Vec<TeamSnapshot>,
    /// `None` when `teams` holds every AVAILABLE team within the radius; otherwise a
    /// great-circle distance (meters) that every AVAILABLE team left unread is at least as far.
    pub frontier: Option<f64>,
}

/// A team became AVAILABLE (it cleared, came on duty, or a claim was undone), or OFF_DUTY
/// (its shift ended while it was on a call, and it cleared): either may end its assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamAvailable {
    /// The team's region.
    pub region: String,
    /// The team.
    pub team_id: String,
}

/// Routing's port to the live team state. Every method is one atomic step of the store.
#[tonic::async_trait]
pub trait Fleet: Send + Sync + std::fmt::Debug {
    /// Every team of `region` that is not OFF_DUTY and is within `radius_meters` of `point`,
    /// plus such teams without a position; any status. Routing passes `f64::INFINITY` (the
    /// whole region), because the candidate list and the unserved reason must see busy and
    /// out-of-range teams too.
    async fn teams_near(
        &self,
        region: &str,
        point: GeoPoint,
        radius_meters: f64,
    ) -> Result<Vec<TeamSnapshot>, FleetError>;

    /// At most `count` AVAILABLE, positioned teams of `region` within `radius_meters` of
    /// `point`, nearest first (ties by team_id), without reading the rest of the region.
    async fn available_near(
        &self,
        region: &str,
        point: GeoPoint,
        radius_meters: f64,
        count: usize,
    ) -> Result<NearestTeams, FleetError>;

    /// At most `count` teams of `region` that are on duty but not AVAILABLE (busy or out of
    /// service) and have a position within `radius_meters` of `point`, nearest first (ties by
    /// team_id): the teams [`Fleet::available_near`] leaves out, read so that the candidate
    /// list can say why each team nearer than the chosen one lost. The default filters
    /// [`Fleet::teams_near`] (the whole region); the Redis fleet reads availability's GEO set
    /// of such teams.
    async fn unavailable_near(
        &self,
        region: &str,
        point: GeoPoint,
        radius_meters: f64,
        count: usize,
    ) -> Result<Vec<TeamSnapshot>, FleetError> {
        let mut found: Vec<(f64, TeamSnapshot)> = self
            .teams_near(region, point, radius_meters)
            .await?
            .into_iter()
            .filter(|t| !matches!(t.status, TeamStatus::OffDuty | TeamStatus::Available))
            .filter_map(|t| {
                let distance = great_circle_meters(t.position?.point, point);
                (distance <= radius_meters).then_some((distance, t))
            })
            .collect();
        nearest_first(&mut found);
        found.truncate(count);
        Ok(found.into_iter().map(|(_, team)| team).collect())
    }

    /// Remembers, for `ttl`, the routing request of an incident that was only recommended,
    /// so that ConfirmAssignment or CancelRouting on any replica finds the incident. Live
    /// state like the teams': lost with them, never the record.
    async fn remember_recommendation(
        &self,
        incident_id: &str,
        request: &[u8],
        ttl: Duration,
    ) -> Result<(), FleetError>;

    /// The request remembered by [`Fleet::remember_recommendation`], if it has not expired.
    async fn recommendation(&self, incident_id: &str) -> Result<Option<Vec<u8>>, FleetError>;

    /// One team, in any status and region.
    async fn team(&self, team_id: &str) -> Result<Option<FleetTeam>, FleetError>;

    /// Every busy team of `region` (DISPATCHED, EN_ROUTE, ON_SCENE, TRANSPORTING).
    async fn busy_teams(&self, region: &str) -> Result<Vec<FleetTeam>, FleetError>;

    /// Atomically: if the team is in `region`, AVAILABLE, and (when `max_position_age` is
    /// given) has a position no older than that at `now`, make it DISPATCHED on
    /// `incident_id` and return its next fencing token.
    async fn claim(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        now: DateTime<Utc>,
        max_position_age: Option<Duration>,
    ) -> Result<Result<Claim, ClaimRefused>, FleetError>;

    /// Atomically: if the team is busy on `incident_id`, make it AVAILABLE. Returns whether
    /// it did. With `announce` false, the team is not announced to this replica's
    /// [`Fleet::subscribe`]rs (other replicas still hear of it): the caller offers it to the
    /// queue itself (ReleaseTeam and CancelRouting do, right after their record write), so
    /// the queue is not read twice for one release.
    async fn release(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        announce: bool,
    ) -> Result<bool, FleetError>;

    /// Announcements of teams becoming AVAILABLE, for the queue. Best effort: the queue is
    /// also re-checked periodically.
    fn subscribe(&self) -> broadcast::Receiver<TeamAvailable>;
}

/// Sorts teams with their distances nearest first, ties by team_id.
fn nearest_first(found: &mut [(f64, TeamSnapshot)]) {
    found.sort_by(|(a, ta), (b, tb)| a.total_cmp(b).then_with(|| ta.team_id.cmp(&tb.team_id)));
}

fn is_busy(status: TeamStatus) -> bool {
    matches!(
        status,
        TeamStatus::Dispatched
            | TeamStatus::EnRoute
            | TeamStatus::OnScene
            | TeamStatus::Transporting
    )
}

#[derive(Debug, Default)]
struct State {
    teams: BTreeMap<String, FleetTeam>,
    tokens: BTreeMap<String, i64>,
    recommendations: BTreeMap<String, (Vec<u8>, DateTime<Utc>)>,
}

/// The in-process fleet: a faithful model of the Redis store (one lock makes each method
/// atomic; tokens only grow). Used by tests and by `routing.fleet = "memory"`.
#[derive(Debug, Clone)]
pub struct MemoryFleet {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<TeamAvailable>,
    clock: Arc<dyn relay_runtime::clock::Clock>,
}

impl Default for MemoryFleet {
    fn default() -> Self {
        Self::new(Arc::new(relay_runtime::clock::SystemClock))
    }
}

impl MemoryFleet {
    /// An empty fleet whose status changes are timed by `clock`.
    #[must_use]
    pub fn new(clock: Arc<dyn relay_runtime::clock::Clock>) -> Self {
        Self {
            state: Arc::default(),
            events: broadcast::channel(4096).0,
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn announce(&self, region: &str, team_id: &str) {
        // No receiver is fine: the queue is also re-checked periodically.
        let _ = self.events.send(TeamAvailable {
            region: region.to_owned(),
            team_id: team_id.to_owned(),
        });
    }

    /// Adds or replaces a team (keeps its fencing counter, and its live record's creation
    /// time, as availability's upsert does).
    pub fn upsert_team(&self, region: &str, snapshot: TeamSnapshot) {
        let now = self.clock.now();
        let available = snapshot.status == TeamStatus::Available;
        let team_id = snapshot.team_id.clone();
        let mut state = self.lock();
        let live_since = state.teams.get(&team_id).map_or(now, |t| t.live_since);
        state.teams.insert(
            team_id.clone(),
            FleetTeam {
                region: region.to_owned(),
                snapshot,
                incident_id: None,
                status_since: now,
                live_since,
            },
        );
        drop(state);
        if available {
            self.announce(region, &team_id);
        }
    }

    /// Sets a team's status as availability's `SetTeamStatus` would (busy statuses keep the
    /// current incident). Returns false for an unknown team.
    pub fn set_status(&self, team_id: &str, status: TeamStatus) -> bool {
        let now = self.clock.now();
        let region = {
            let mut state = self.lock();
            let Some(team) = state.teams.get_mut(team_id) else {
                return false;
            };
            if team.snapshot.status == status {
                return true;
            }
            team.snapshot.status = status;
            team.status_since = now;
            if !is_busy(status) {
                team.incident_id = None;
            }
            team.region.clone()
        };
        if status == TeamStatus::Available {
            self.announce(&region, team_id);
        }
        true
    }

    /// Forgets every status and claim counter: each team becomes AVAILABLE with no incident
    /// and its counter restarts at 0, as after a Redis failover that lost recent writes and an
    /// availability rebuild from the roster.
    pub fn flush(&self) {
        let now = self.clock.now();
        let mut state = self.lock();
        state.tokens.clear();
        for team in state.teams.values_mut() {
            team.snapshot.status = TeamStatus::Available;
            team.incident_id = None;
            team.status_since = now;
            team.live_since = now;
        }
    }

    /// Every team (for test assertions).
    #[must_use]
    pub fn all_teams(&self) -> Vec<FleetTeam> {
        self.lock().teams.values().cloned().collect()
    }
}

#[tonic::async_trait]
impl Fleet for MemoryFleet {
    async fn teams_near(
        &self,
        region: &str,
        point: GeoPoint,
        radius_meters: f64,
    ) -> Result<Vec<TeamSnapshot>, FleetError> {
        Ok(self
            .lock()
            .teams
            .values()
            .filter(|t| t.region == region && t.snapshot.status != TeamStatus::OffDuty)
            .filter(|t| {
                t.snapshot
                    .position
                    .is_none_or(|p| great_circle_meters(p.point, point) <= radius_meters)
            })
            .map(|t| t.snapshot.clone())
            .collect())
    }

    async fn available_near(
        &self,
        region: &str,
        point: GeoPoint,
        radius_meters: f64,
        count: usize,
    ) -> Result<NearestTeams, FleetError> {
        let mut found: Vec<(f64, TeamSnapshot)> = self
            .lock()
            .teams
            .values()
            .filter(|t| t.region == region && t.snapshot.status == TeamStatus::Available)
            .filter_map(|t| {
                let distance = great_circle_meters(t.snapshot.position?.point, point);
                (distance <= radius_meters).then(|| (distance, t.snapshot.clone()))
            })
            .collect();
        nearest_first(&mut found);
        let frontier = found.get(count).map(|(distance, _)| *distance);
        found.truncate(count);
        Ok(NearestTeams {
            teams: found.into_iter().map(|(_, team)| team).collect(),
            frontier,
        })
    }

    async fn remember_recommendation(
        &self,
        incident_id: &str,
        request: &[u8],
        ttl: Duration,
    ) -> Result<(), FleetError> {
        let expires =
            self.clock.now() + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        self.lock()
            .recommendations
            .insert(incident_id.to_owned(), (request.to_vec(), expires));
        Ok(())
    }

    async fn recommendation(&self, incident_id: &str) -> Result<Option<Vec<u8>>, FleetError> {
        let now = self.clock.now();
        Ok(self
            .lock()
            .recommendations
            .get(incident_id)
            .filter(|(_, expires)| *expires > now)
            .map(|(request, _)| request.clone()))
    }

    async fn team(&self, team_id: &str) -> Result<Option<FleetTeam>, FleetError> {
        Ok(self.lock().teams.get(team_id).cloned())
    }

    async fn busy_teams(&self, region: &str) -> Result<Vec<FleetTeam>, FleetError> {
        Ok(self
            .lock()
            .teams
            .values()
            .filter(|t| t.region == region && is_busy(t.snapshot.status))
            .cloned()
            .collect())
    }

    async fn claim(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        now: DateTime<Utc>,
        max_position_age: Option<Duration>,
    ) -> Result<Result<Claim, ClaimRefused>, FleetError> {
        let mut state = self.lock();
        let Some(team) = state.teams.get_mut(team_id) else {
            return Ok(Err(ClaimRefused::UnknownTeam));
        };
        if team.region != region {
            return Ok(Err(ClaimRefused::WrongRegion));
        }
        if team.snapshot.status != TeamStatus::Available {
            return Ok(Err(ClaimRefused::NotAvailable));
        }
        if let Some(limit) = max_position_age {
            let fresh = team.snapshot.position.is_some_and(|p| {
                now.signed_duration_since(p.recorded_at)
                    .to_std()
                    .map_or(true, |age| age <= limit)
            });
            if !fresh {
                return Ok(Err(ClaimRefused::StalePosition));
            }
        }
        team.snapshot.status = TeamStatus::Dispatched;
        team.incident_id = Some(incident_id.to_owned());
        team.status_since = self.clock.now();
        let token = state.tokens.entry(team_id.to_owned()).or_insert(0);
        *token += 1;
        Ok(Ok(Claim {
            fencing_token: *token,
        }))
    }

    async fn release(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        announce: bool,
    ) -> Result<bool, FleetError> {
        let released = {
            let mut state = self.lock();
            match state.teams.get_mut(team_id) {
                Some(team)
                    if team.region == region
                        && is_busy(team.snapshot.status)
                        && team.incident_id.as_deref() == Some(incident_id) =>
                {
                    team.snapshot.status = TeamStatus::Available;
                    team.incident_id = None;
                    team.status_since = self.clock.now();
                    true
                }
                _ => false,
            }
        };
        if released && announce {
            self.announce(region, team_id);
        }
        Ok(released)
    }

    fn subscribe(&self) -> broadcast::Receiver<TeamAvailable> {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ranking::Position;
    use relay_runtime::clock::ManualClock;

    fn snapshot(id: &str) -> TeamSnapshot {
        TeamSnapshot {
            team_id: id.to_owned(),
            display_name: id.to_owned(),
            status: TeamStatus::Available,
            capabilities: vec![],
            position: Some(Position {
                point: GeoPoint {
                    latitude: 44.0,
                    longitude: -123.0,
                },
                recorded_at: Utc::now(),
            }),
            shift_ends_at: None,
        }
    }

    #[tokio::test]
    async fn claims_are_exclusive_and_tokens_grow() {
        let fleet = MemoryFleet::new(Arc::new(ManualClock::default()));
        fleet.upsert_team("r", snapshot("t1"));
        let now = Utc::now();
        let first = fleet.claim("r", "t1", "i1", now, None).await.expect("up");
        assert_eq!(first, Ok(Claim { fencing_token: 1 }));
        let second = fleet.claim("r", "t1", "i2", now, None).await.expect("up");
        assert_eq!(second, Err(ClaimRefused::NotAvailable));
        assert!(!fleet.release("r", "t1", "i2", true).await.expect("up"));
        let mut events = fleet.subscribe();
        assert!(fleet.release("r", "t1", "i1", true).await.expect("up"));
        assert_eq!(events.try_recv().expect("announced").team_id, "t1");
        let third = fleet.claim("r", "t1", "i2", now, None).await.expect("up");
        assert_eq!(third, Ok(Claim { fencing_token: 2 }));
        assert_eq!(
            fleet.claim("x", "t1", "i2", now, None).await.expect("up"),
            Err(ClaimRefused::WrongRegion)
        );
        assert_eq!(
            fleet.claim("r", "nope", "i2", now, None).await.expect("up"),
            Err(ClaimRefused::UnknownTeam)
        );
        fleet.flush();
        let after = fleet.claim("r", "t1", "i3", now, None).await.expect("up");
        assert_eq!(
            after,
            Ok(Claim { fencing_token: 1 }),
            "a flush loses counters"
        );
    }

    #[tokio::test]
    async fn stale_positions_are_not_claimed_when_a_limit_is_given() {
        let fleet = MemoryFleet::default();
        let mut team = snapshot("t1");
        if let Some(p) = team.position.as_mut() {
            p.recorded_at = Utc::now() - chrono::Duration::minutes(30);
        }
        fleet.upsert_team("r", team);
        let limit = Some(Duration::from_secs(300));
        assert_eq!(
            fleet
                .claim("r", "t1", "i", Utc::now(), limit)
                .await
                .expect("up"),
            Err(ClaimRefused::StalePosition)
        );
        assert!(
            fleet
                .claim("r", "t1", "i", Utc::now(), None)
                .await
                .expect("up")
                .is_ok()
        );
    }
}
