//! Ranking: which teams may take a call, in what order, and why the others may not.
//!
//! Pure and synchronous: it sees a snapshot of the region's teams and a clock reading, and
//! storage never enters it, so its answer can be checked against a brute-force scan.
//!
//! Hard constraints, checked in the order the contract gives (the first failing one is the
//! team's exclusion reason; the rationale names the rest): every required capability; status
//! AVAILABLE; a position; a position fresher than the region's staleness limit; distance and
//! ETA within the region's range; a shift that does not end before now + ETA + the call's
//! expected duration. Eligible teams are ordered by ETA, then team_id. Preferred
//! capabilities only reorder near-ties: starting from the fastest team not yet placed, every
//! team whose ETA is within the region's tie window of it forms a group, ordered by the number
//! of preferred capabilities it has (more first), then ETA, then team_id.

use chrono::{DateTime, Utc};
use relay_proto::common::{ExclusionReason, GeoPoint, TeamStatus, UnservedReason};

use crate::{eta::EtaEstimator, settings::RegionSettings};

/// A team's position and when it was recorded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Position {
    /// Where the team was.
    pub point: GeoPoint,
    /// When it was there.
    pub recorded_at: DateTime<Utc>,
}

/// What ranking needs to know about one team.
#[derive(Debug, Clone, PartialEq)]
pub struct TeamSnapshot {
    /// The team.
    pub team_id: String,
    /// Its name, for the dispatcher.
    pub display_name: String,
    /// Its status.
    pub status: TeamStatus,
    /// Its capability tags.
    pub capabilities: Vec<String>,
    /// Its last position, if it ever reported one.
    pub position: Option<Position>,
    /// When its shift ends, if known.
    pub shift_ends_at: Option<DateTime<Utc>>,
}

impl From<relay_fleet::model::TeamSummary> for TeamSnapshot {
    /// What ranking needs of a team of the fleet (a position needs its time).
    fn from(team: relay_fleet::model::TeamSummary) -> Self {
        Self {
            position: team
                .location
                .zip(team.location_updated_at)
                .map(|(point, recorded_at)| Position {
                    point: GeoPoint {
                        latitude: point.latitude,
                        longitude: point.longitude,
                    },
                    recorded_at,
                }),
            team_id: team.team_id,
            display_name: team.display_name,
            status: team.status,
            capabilities: team.capabilities,
            shift_ends_at: team.shift_ends_at,
        }
    }
}

/// The call being ranked for.
#[derive(Debug, Clone, Copy)]
pub struct RankInput<'a> {
    /// Where the team should go.
    pub location: GeoPoint,
    /// Capabilities a team must all have.
    pub required: &'a [String],
    /// Capabilities that reorder near-ties.
    pub preferred: &'a [String],
    /// How long the call is likely to take, seconds.
    pub expected_duration_seconds: u32,
    /// The clock reading to judge freshness and shifts by.
    pub now: DateTime<Utc>,
}

/// One team's place in the ranking.
#[derive(Debug, Clone, PartialEq)]
pub struct RankedTeam {
    /// The team.
    pub team_id: String,
    /// Its name.
    pub display_name: String,
    /// Every reason it may not take the call, in the contract's order; empty when eligible.
    pub exclusions: Vec<ExclusionReason>,
    /// Great-circle distance, meters (0 without a position).
    pub distance_meters: f64,
    /// ETA, seconds (0 without a position).
    pub eta_seconds: u32,
    /// The preferred capabilities it has.
    pub matched_preferred: Vec<String>,
    /// One sentence on its rank or exclusion.
    pub rationale: String,
    facts: Facts,
}

impl RankedTeam {
    /// Whether the team met every hard constraint.
    #[must_use]
    pub fn eligible(&self) -> bool {
        self.exclusions.is_empty()
    }

    /// The reported exclusion reason (the first), if any.
    #[must_use]
    pub fn exclusion(&self) -> Option<ExclusionReason> {
        self.exclusions.first().copied()
    }
}

/// The funnel stages a team passed, for the unserved reason.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Facts {
    on_duty: bool,
    capable: bool,
    free: bool,
    fresh: bool,
    in_range: bool,
}

/// The ranked candidates of one call.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranking {
    /// Eligible teams in rank order, then excluded teams by ETA (teams without a position
    /// last). OFF_DUTY teams are not candidates (and are never on duty for the funnel).
    pub candidates: Vec<RankedTeam>,
    /// `None` when the ranking saw every team of the region. Otherwise it saw only the
    /// nearest AVAILABLE teams, and every team it did not see has an ETA of at least this
    /// many seconds: see [`Ranking::settled`].
    pub horizon: Option<u32>,
    /// The tie window (seconds) preferred capabilities reordered by; 0 without preferences.
    pub window: u32,
}

impl Ranking {
    /// The eligible teams, best first.
    pub fn eligible(&self) -> impl Iterator<Item = &RankedTeam> {
        self.candidates.iter().take_while(|team| team.eligible())
    }

    /// Whether `team`'s place is certain: no unseen team could rank ahead of it (always, for
    /// a ranking of the whole region). Its tie group ends within the window of its own ETA,
    /// so it is complete when that is still below the horizon.
    #[must_use]
    pub fn settled(&self, team: &RankedTeam) -> bool {
        self.horizon
            .is_none_or(|horizon| team.eta_seconds.saturating_add(self.window) < horizon)
    }

    /// Records that `team_id` was claimed by another call between ranking and claiming: it
    /// becomes excluded (CLAIMED_BY_ANOTHER_CALL, and busy for the funnel) and moves behind
    /// the eligible teams.
    pub fn mark_claimed_by_another_call(&mut self, team_id: &str) {
        let Some(index) = self.candidates.iter().position(|t| t.team_id == team_id) else {
            return;
        };
        let mut team = self.candidates.remove(index);
        if !team
            .exclusions
            .contains(&ExclusionReason::ClaimedByAnotherCall)
        {
            team.exclusions.push(ExclusionReason::ClaimedByAnotherCall);
        }
        team.facts.free = false;
        team.facts.fresh = false;
        team.facts.in_range = false;
        team.rationale = String::from("excluded: another call claimed this team first");
        let eligible = self.eligible().count();
        self.candidates.insert(eligible, team);
    }

    /// Why no team can take the call, or `None` when one can: the first funnel stage at
    /// which the region's last teams dropped out (NO_TEAMS_IN_REGION, MISSING_CAPABILITY,
    /// ALL_BUSY, ALL_POSITIONS_STALE, NO_TEAM_IN_RANGE, SHIFT_ENDING).
    #[must_use]
    pub fn unserved(&self) -> Option<UnservedReason> {
        if self.eligible().next().is_some() {
            return None;
        }
        let any = |stage: fn(&Facts) -> bool| self.candidates.iter().any(|t| stage(&t.facts));
        Some(if !any(|f| f.on_duty) {
            UnservedReason::NoTeamsInRegion
        } else if !any(|f| f.capable) {
            UnservedReason::MissingCapability
        } else if !any(|f| f.free) {
            UnservedReason::AllBusy
        } else if !any(|f| f.fresh) {
            UnservedReason::AllPositionsStale
        } else if !any(|f| f.in_range) {
            UnservedReason::NoTeamInRange
        } else {
            UnservedReason::ShiftEnding
        })
    }
}

fn minutes(seconds: f64) -> String {
    if seconds < 90.0 {
        format!("{seconds:.0} s")
    } else {
        format!("{:.0} min", seconds / 60.0)
    }
}

fn status_name(status: TeamStatus) -> &'static str {
    status
        .as_str_name()
        .strip_prefix("TEAM_STATUS_")
        .unwrap_or("UNKNOWN")
}

/// Ranks `teams` (the region's teams, any status) for one call.
#[must_use]
pub fn rank(
    teams: &[TeamSnapshot],
    input: &RankInput<'_>,
    region: &RegionSettings,
    estimator: &dyn EtaEstimator,
) -> Ranking {
    let (mut eligible, mut excluded): (Vec<_>, Vec<_>) = teams
        .iter()
        .filter(|team| team.status != TeamStatus::OffDuty)
        .map(|team| evaluate(team, input, region, estimator))
        .partition(RankedTeam::eligible);

    eligible.sort_by(|a, b| {
        a.eta_seconds
            .cmp(&b.eta_seconds)
            .then_with(|| a.team_id.cmp(&b.team_id))
    });
    if !input.preferred.is_empty() {
        eligible = order_near_ties(eligible, region.tie_window_seconds);
    }
    excluded.sort_by(|a, b| {
        let key = |t: &RankedTeam| {
            (
                t.exclusions.contains(&ExclusionReason::NoPosition),
                t.eta_seconds,
            )
        };
        key(a).cmp(&key(b)).then_with(|| a.team_id.cmp(&b.team_id))
    });
    eligible.extend(excluded);
    Ranking {
        candidates: eligible,
        horizon: None,
        window: if input.preferred.is_empty() {
            0
        } else {
            region.tie_window_seconds
        },
    }
}

/// Reorders near-ties of `sorted` (eligible teams by ETA, then team_id) by preferred
/// capabilities, as the module documentation describes, and says so in the rationale of a
/// team that moved ahead of a faster one.
fn order_near_ties(sorted: Vec<RankedTeam>, window: u32) -> Vec<RankedTeam> {
    let mut out: Vec<RankedTeam> = Vec::with_capacity(sorted.len());
    let mut rest = sorted.into_iter().peekable();
    while let Some(first) = rest.next() {
        let anchor = first.eta_seconds;
        let mut group = vec![first];
        while let Some(next) = rest.next_if(|t| t.eta_seconds - anchor <= window) {
            group.push(next);
        }
        group.sort_by(|a, b| {
            b.matched_preferred
                .len()
                .cmp(&a.matched_preferred.len())
                .then_with(|| a.eta_seconds.cmp(&b.eta_seconds))
                .then_with(|| a.team_id.cmp(&b.team_id))
        });
        let speed_key = |t: &RankedTeam| (t.eta_seconds, t.team_id.clone());
        for index in 0..group.len() {
            let key = speed_key(&group[index]);
            let passed: Vec<String> = group[index + 1..]
                .iter()
                .filter(|later| speed_key(later) < key)
                .map(|later| later.team_id.clone())
                .collect();
            let team = &mut group[index];
            if !passed.is_empty() {
                team.rationale = format!(
                    "{}; ranked ahead of faster {} for preferred {} (ETAs within {window} s)",
                    team.rationale,
                    passed.join(", "),
                    team.matched_preferred.join(", "),
                );
            }
        }
        out.extend(group);
    }
    out
}

fn evaluate(
    team: &TeamSnapshot,
    input: &RankInput<'_>,
    region: &RegionSettings,
    estimator: &dyn EtaEstimator,
) -> RankedTeam {
    let mut found = Findings::default();
    let missing: Vec<&str> = input
        .required
        .iter()
        .filter(|tag| !team.capabilities.contains(tag))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        found.exclude(
            ExclusionReason::MissingCapability,
            format!("lacks {}", missing.join(", ")),
        );
    }
    let available = team.status == TeamStatus::Available;
    if !available {
        found.exclude(
            ExclusionReason::NotAvailable,
            format!("status {}", status_name(team.status)),
        );
    }

    let estimate = team
        .position
        .map(|position| (position, estimator.estimate(position.point, input.location)));
    let (distance_meters, eta_seconds) =
        estimate.map_or((0.0, 0), |(_, e)| (e.distance_meters, e.eta_seconds));
    let (fresh, in_range) = match estimate {
        None => {
            found.exclude(
                ExclusionReason::NoPosition,
                String::from("no position reported"),
            );
            (false, false)
        }
        Some((position, _)) => {
            found.check_position(&position, input, region, distance_meters, eta_seconds)
        }
    };
    found.check_shift(team, input, eta_seconds);

    let matched_preferred: Vec<String> = input
        .preferred
        .iter()
        .filter(|tag| team.capabilities.contains(tag))
        .cloned()
        .collect();
    let rationale = found.rationale(distance_meters, eta_seconds, &matched_preferred);

    let on_duty = !matches!(team.status, TeamStatus::OffDuty | TeamStatus::OutOfService);
    let capable = on_duty && missing.is_empty();
    let free = capable && available;
    let fresh = free && fresh;
    let in_range = fresh && in_range;
    RankedTeam {
        team_id: team.team_id.clone(),
        display_name: team.display_name.clone(),
        exclusions: found.exclusions,
        distance_meters,
        eta_seconds,
        matched_preferred,
        rationale,
        facts: Facts {
            on_duty,
            capable,
            free,
            fresh,
            in_range,
        },
    }
}

/// What [`evaluate`] found against a team: the constraints it fails, in the contract's
/// order, and each one's words for the rationale.
#[derive(Default)]
struct Findings {
    exclusions: Vec<ExclusionReason>,
    reasons: Vec<String>,
}

impl Findings {
    fn exclude(&mut self, reason: ExclusionReason, text: String) {
        self.exclusions.push(reason);
        self.reasons.push(text);
    }

    /// The position's freshness and the range; returns (fresh, in range).
    fn check_position(
        &mut self,
        position: &Position,
        input: &RankInput<'_>,
        region: &RegionSettings,
        distance_meters: f64,
        eta_seconds: u32,
    ) -> (bool, bool) {
        let age = input.now.signed_duration_since(position.recorded_at);
        let limit = region.staleness_limit_seconds;
        #[allow(clippy::cast_precision_loss)]
        let age_seconds = age.num_milliseconds() as f64 / 1000.0;
        let fresh =
            age.num_milliseconds() <= i64::try_from(limit.saturating_mul(1000)).unwrap_or(i64::MAX);
        if !fresh {
            #[allow(clippy::cast_precision_loss)]
            let limit = limit as f64;
            self.exclude(
                ExclusionReason::StalePosition,
                format!(
                    "last position {} old (limit {})",
                    minutes(age_seconds),
                    minutes(limit)
                ),
            );
        }
        let in_range =
            distance_meters <= region.max_distance_meters && eta_seconds <= region.max_eta_seconds;
        if !in_range {
            self.exclude(
                ExclusionReason::OutOfRange,
                format!(
                    "ETA {} ({:.1} km) beyond the region's limit of {} or {:.1} km",
                    minutes(f64::from(eta_seconds)),
                    distance_meters / 1000.0,
                    minutes(f64::from(region.max_eta_seconds)),
                    region.max_distance_meters / 1000.0
                ),
            );
        }
        (fresh, in_range)
    }

    /// A shift that ends before now + ETA + the call's expected duration.
    fn check_shift(&mut self, team: &TeamSnapshot, input: &RankInput<'_>, eta_seconds: u32) {
        let Some(shift_end) = team.shift_ends_at else {
            return;
        };
        let finish = input.now
            + chrono::Duration::seconds(
                i64::from(eta_seconds) + i64::from(input.expected_duration_seconds),
            );
        if shift_end < finish {
            self.exclude(
                ExclusionReason::ShiftEnding,
                format!(
                    "shift ends {}, before the call could finish ({})",
                    shift_end.format("%H:%M UTC"),
                    finish.format("%H:%M UTC")
                ),
            );
        }
    }

    /// The team's rationale: its ETA (and preferred capabilities) when eligible, else why
    /// not.
    fn rationale(
        &self,
        distance_meters: f64,
        eta_seconds: u32,
        matched_preferred: &[String],
    ) -> String {
        if self.exclusions.is_empty() {
            let mut text = format!(
                "ETA {} ({:.1} km)",
                minutes(f64::from(eta_seconds)),
                distance_meters / 1000.0
            );
            if !matched_preferred.is_empty() {
                text.push_str(&format!("; has preferred {}", matched_preferred.join(", ")));
            }
            text
        } else {
            format!("excluded: {}", self.reasons.join("; "))
        }
    }
}

#[cfg(test)]
mod tests;
