//! What both backends share for routing's reads: the team as routing sees it, announcements of
//! freed teams, paging through a region, and the nearest-team ranking over placed teams.

use super::*;

/// One team as routing sees it: what ranking needs, its region, its incident and the times
/// reconciliation judges it by.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetTeam {
    /// The team's region.
    pub region: String,
    /// What ranking needs.
    pub snapshot: TeamSummary,
    /// The incident a busy team is working; `None` when not busy.
    pub incident_id: Option<String>,
    /// When the team last changed (for the reconciliation grace period).
    pub status_since: DateTime<Utc>,
    /// When the live record of the team was created. A record created after an assignment
    /// began never held that assignment's claim: the live state was lost and rebuilt in
    /// between.
    pub live_since: DateTime<Utc>,
}

impl From<&Team> for FleetTeam {
    fn from(team: &Team) -> Self {
        Self {
            region: team.region.clone(),
            snapshot: TeamSummary::from(team),
            incident_id: (!team.incident_id.is_empty()).then(|| team.incident_id.clone()),
            status_since: team.update_time,
            live_since: team.create_time,
        }
    }
}

/// A team became AVAILABLE or OFF_DUTY (see [`DispatchStore::subscribe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamAvailable {
    /// The team's region.
    pub region: String,
    /// The team.
    pub team_id: String,
}

/// Whether a change to `team` (of `kind`) is announced to [`DispatchStore::subscribe`]rs: a
/// status change or upsert that leaves it AVAILABLE, or OFF_DUTY (a team whose shift ended
/// goes there straight from its call as it clears, and its assignment ends at once).
#[must_use]
pub fn announces(kind: crate::model::EventKind, team: &Team) -> bool {
    use crate::model::EventKind;
    matches!(kind, EventKind::StatusChanged | EventKind::Upserted)
        && matches!(team.status, TeamStatus::Available | TeamStatus::OffDuty)
}

/// Teams read per page when a region is scanned.
pub(super) const PAGE: usize = 500;

/// Every team of a region, page by page.
///
/// # Errors
/// When the store fails.
pub async fn region_teams(
    store: &(impl TeamStore + ?Sized),
    region: &str,
) -> Result<Vec<Team>, StoreError> {
    let mut teams = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list_teams(Some(region), None, after.as_deref(), PAGE)
            .await?;
        after = page.teams.last().map(|t| t.team_id.clone());
        teams.extend(page.teams);
        if !page.more || after.is_none() {
            return Ok(teams);
        }
    }
}

/// [`DispatchStore::teams_near`] over a region's teams.
pub(super) fn on_duty_near(
    teams: &[Team],
    point: Position,
    radius_meters: f64,
) -> Vec<TeamSummary> {
    teams
        .iter()
        .filter(|team| team.status != TeamStatus::OffDuty)
        .filter(|team| {
            team.location
                .is_none_or(|at| distance_meters(at, point) <= radius_meters)
        })
        .map(TeamSummary::from)
        .collect()
}

/// [`DispatchStore::busy_teams`] over a region's teams.
pub(super) fn busy_of(teams: &[Team]) -> Vec<FleetTeam> {
    teams
        .iter()
        .filter(|team| crate::model::is_busy(team.status))
        .map(FleetTeam::from)
        .collect()
}

/// The answer of [`DispatchStore::nearest_available`].
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

/// Whether a team in `status` belongs to [`DispatchStore::nearest_unavailable`]'s answer: on
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
