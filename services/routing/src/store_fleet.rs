//! The production [`Fleet`]: availability's team store (its Redis keyspace, or its in-process
//! store in `relay dev`), used as a library as DESIGN.md says. Every method maps onto one
//! store call; the claim is availability's one-script atomic claim with its fencing counter.
//!
//! Round trips (Redis): `available_near` is two (a `GEOSEARCH ... COUNT` of the region's
//! AVAILABLE set, then the found teams' hashes in one pipeline); `unavailable_near` is one or
//! two (the same on the region's set of on-duty teams that are not available; no pipeline
//! when it finds none); `teams_near` and `busy_teams`
//! page through the region's teams (one `SMEMBERS`-and-hashes read per 500 teams); `claim`
//! and `release` are one script call each.
//! Announcements of teams becoming AVAILABLE come from each region's availability event
//! stream, read by one task per region from the first time routing looks at that region. A
//! release made with `announce` false is left out: its caller offers the team itself.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use chrono::{DateTime, Utc};
use relay_availability::{
    ClaimError, ReleaseError, ReleaseOutcome, TeamStore,
    model::{EventKind, Position as StorePosition, Team, TeamStatus as StoreStatus, TeamSummary},
};
use relay_proto::common::{GeoPoint, TeamStatus};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::{
    eta::great_circle_meters,
    fleet::{Claim, ClaimRefused, Fleet, FleetError, FleetTeam, NearestTeams, TeamAvailable},
    ranking::{Position, TeamSnapshot},
};
use relay_runtime::clock::Clock;

/// The namespace of remembered recommendations among the store's expiring records.
const RECOMMENDATION: &str = "routing.recommendation";

/// Teams read per page when routing scans a region.
const PAGE: usize = 500;

/// At most this many quiet releases wait for their event (see [`QuietReleases`]).
const QUIET_LIMIT: usize = 4_096;

/// Where a release made with `announce` false stands, for its team.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quiet {
    /// The release is in flight: the team's next AVAILABLE event is held back.
    InFlight,
    /// An AVAILABLE event, at this revision, came while the release was in flight.
    Held(i64),
    /// The release left the team at this revision: its event is dropped when it comes.
    Released(i64),
}

/// Releases made with `announce` false: the event reader leaves their AVAILABLE events
/// unannounced (the caller offers the team itself). The event may come before the release's
/// reply, so the release is marked before it is sent; an event that turns out not to be the
/// release's own is announced when the release ends. Bounded: past [`QUIET_LIMIT`] teams (events
/// that never came, the reader being interrupted) it forgets the releases whose events are
/// still to come, which costs at most a redundant announcement each; a held event is never
/// forgotten.
#[derive(Debug, Default)]
struct QuietReleases(HashMap<String, Quiet>);

impl QuietReleases {
    /// Before a quiet release of `team_id`.
    fn begin(&mut self, team_id: &str) {
        if self.0.len() >= QUIET_LIMIT {
            self.0
                .retain(|_, quiet| !matches!(quiet, Quiet::Released(_)));
        }
        // An event already held (another release of the team in flight) stays held, to be
        // announced when a release ends.
        if !matches!(self.0.get(team_id), Some(Quiet::Held(_))) {
            self.0.insert(team_id.to_owned(), Quiet::InFlight);
        }
    }

    /// After the release, with the team's revision if it released the team. Returns the
    /// revision of an event held meanwhile that was not the release's own: the caller
    /// announces it.
    fn end(&mut self, team_id: &str, released: Option<i64>) -> Option<i64> {
        let state = self.0.remove(team_id);
        match (state, released) {
            (Some(Quiet::Held(held)), Some(revision)) if held == revision => None,
            (Some(Quiet::Held(held)), Some(revision)) => {
                if held < revision {
                    self.0.insert(team_id.to_owned(), Quiet::Released(revision));
                }
                Some(held)
            }
            (Some(Quiet::Held(held)), None) => Some(held),
            (_, Some(revision)) => {
                self.0.insert(team_id.to_owned(), Quiet::Released(revision));
                None
            }
            (_, None) => None,
        }
    }

    /// Whether an AVAILABLE event of `team_id` at `revision` is to be announced.
    fn announce(&mut self, team_id: &str, revision: i64) -> bool {
        match self.0.get(team_id).copied() {
            None | Some(Quiet::Held(_)) => true,
            Some(Quiet::InFlight) => {
                self.0.insert(team_id.to_owned(), Quiet::Held(revision));
                false
            }
            Some(Quiet::Released(released)) => {
                if released <= revision {
                    self.0.remove(team_id);
                }
                released != revision
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Routing's fleet over availability's [`TeamStore`].
pub struct StoreFleet {
    store: Arc<dyn TeamStore>,
    clock: Arc<dyn Clock>,
    announcements: broadcast::Sender<TeamAvailable>,
    quiet: Arc<Mutex<QuietReleases>>,
    watched: Mutex<HashSet<String>>,
    stop: CancellationToken,
}

impl std::fmt::Debug for StoreFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreFleet").finish_non_exhaustive()
    }
}

impl Drop for StoreFleet {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn unavailable(error: impl std::fmt::Display) -> FleetError {
    FleetError(error.to_string())
}

fn snapshot(team: &Team) -> TeamSnapshot {
    summary_snapshot(TeamSummary::from(team))
}

/// The snapshot of a team from its summary (what the bounded read returns).
fn summary_snapshot(team: TeamSummary) -> TeamSnapshot {
    TeamSnapshot {
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

fn store_position(point: GeoPoint) -> StorePosition {
    StorePosition {
        latitude: point.latitude,
        longitude: point.longitude,
    }
}

fn fleet_team(team: &Team) -> FleetTeam {
    FleetTeam {
        region: team.region.clone(),
        snapshot: snapshot(team),
        incident_id: (!team.incident_id.is_empty()).then(|| team.incident_id.clone()),
        status_since: team.update_time,
        live_since: team.create_time,
    }
}

fn is_busy(status: StoreStatus) -> bool {
    matches!(
        status,
        TeamStatus::Dispatched
            | TeamStatus::EnRoute
            | TeamStatus::OnScene
            | TeamStatus::Transporting
    )
}

impl StoreFleet {
    /// A fleet over `store`; releases are timed by `clock`.
    #[must_use]
    pub fn new(store: Arc<dyn TeamStore>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            announcements: broadcast::channel(4096).0,
            quiet: Arc::default(),
            watched: Mutex::new(HashSet::new()),
            stop: CancellationToken::new(),
        }
    }

    async fn region_teams(&self, region: &str) -> Result<Vec<Team>, FleetError> {
        self.watch(region);
        let mut teams = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .list_teams(Some(region), None, after.as_deref(), PAGE)
                .await
                .map_err(unavailable)?;
            after = page.teams.last().map(|t| t.team_id.clone());
            teams.extend(page.teams);
            if !page.more || after.is_none() {
                return Ok(teams);
            }
        }
    }

    /// Starts, once per region, the task that turns availability's events into
    /// announcements for the queue.
    fn watch(&self, region: &str) {
        let first = self
            .watched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(region.to_owned());
        if !first || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let store = self.store.clone();
        let sender = self.announcements.clone();
        let quiet = self.quiet.clone();
        let stop = self.stop.clone();
        let region = region.to_owned();
        tokio::spawn(async move {
            let mut after = None;
            while !stop.is_cancelled() {
                let position = match after {
                    Some(position) => position,
                    None => match store.last_event_id(&region).await {
                        Ok(id) => id,
                        Err(error) => {
                            tracing::warn!(%region, %error, "cannot read availability events");
                            tokio::select! {
                                () = stop.cancelled() => return,
                                () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                            }
                        }
                    },
                };
                after = Some(position);
                let read = tokio::select! {
                    () = stop.cancelled() => return,
                    read = store.read_events(&region, position, 256, Duration::from_secs(2)) => read,
                };
                match read {
                    Ok(events) => {
                        for event in events {
                            after = Some(event.id);
                            // OFF_DUTY too: a team whose shift ended goes there straight from
                            // its call as it clears, and its assignment ends at once.
                            if matches!(event.kind, EventKind::StatusChanged | EventKind::Upserted)
                                && matches!(
                                    event.team.status,
                                    TeamStatus::Available | TeamStatus::OffDuty
                                )
                                && lock(&quiet).announce(&event.team.team_id, event.team.revision)
                            {
                                // No receiver is fine: the queue is re-checked periodically.
                                let _ = sender.send(TeamAvailable {
                                    region: region.clone(),
                                    team_id: event.team.team_id.clone(),
                                });
                            }
                        }
                    }
                    Err(error) => {
                        // Expired history or a Redis outage: start again from the newest event;
                        // the periodic queue re-check covers anything missed meanwhile.
                        tracing::warn!(%region, %error, "availability events interrupted");
                        after = None;
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            }
        });
    }
}

#[tonic::async_trait]
impl Fleet for StoreFleet {
    async fn teams_near(
        &self,
        region: &str,
        point: GeoPoint,
        radius_meters: f64,
    ) -> Result<Vec<TeamSnapshot>, FleetError> {
        Ok(self
            .region_teams(region)
            .await?
            .iter()
            .filter(|team| team.status != TeamStatus::OffDuty)
            .filter(|team| {
                team.location.is_none_or(|at| {
                    let at = GeoPoint {
                        latitude: at.latitude,
                        longitude: at.longitude,
                    };
                    great_circle_meters(at, point) <= radius_meters
                })
            })
            .map(snapshot)
            .collect())
    }

    async fn available_near(
        &self,
        region: &str,
        point: GeoPoint,
        radius_meters: f64,
        count: usize,
    ) -> Result<NearestTeams, FleetError> {
        self.watch(region);
        let nearest = self
            .store
            .nearest_available(region, store_position(point), radius_meters, count)
            .await
            .map_err(unavailable)?;
        Ok(NearestTeams {
            teams: nearest
                .teams
                .into_iter()
                .map(|(team, _)| summary_snapshot(team))
                .collect(),
            frontier: nearest.frontier,
        })
    }

    async fn unavailable_near(
        &self,
        region: &str,
        point: GeoPoint,
        radius_meters: f64,
        count: usize,
    ) -> Result<Vec<TeamSnapshot>, FleetError> {
        let found = self
            .store
            .nearest_unavailable(region, store_position(point), radius_meters, count)
            .await
            .map_err(unavailable)?;
        Ok(found
            .into_iter()
            .map(|(team, _)| summary_snapshot(team))
            .collect())
    }

    async fn remember_recommendation(
        &self,
        incident_id: &str,
        request: &[u8],
        ttl: Duration,
    ) -> Result<(), FleetError> {
        self.store
            .idempotency_put(RECOMMENDATION, incident_id, &BASE64.encode(request), ttl)
            .await
            .map_err(unavailable)
    }

    async fn recommendation(&self, incident_id: &str) -> Result<Option<Vec<u8>>, FleetError> {
        self.store
            .idempotency_get(RECOMMENDATION, incident_id)
            .await
            .map_err(unavailable)?
            .map(|text| BASE64.decode(text).map_err(unavailable))
            .transpose()
    }

    async fn team(&self, team_id: &str) -> Result<Option<FleetTeam>, FleetError> {
        Ok(self
            .store
            .get_team(team_id)
            .await
            .map_err(unavailable)?
            .as_ref()
            .map(fleet_team))
    }

    async fn busy_teams(&self, region: &str) -> Result<Vec<FleetTeam>, FleetError> {
        Ok(self
            .region_teams(region)
            .await?
            .iter()
            .filter(|team| is_busy(team.status))
            .map(fleet_team)
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
        match self
            .store
            .claim(region, team_id, incident_id, None, now, max_position_age)
            .await
        {
            Ok(claim) => Ok(Ok(Claim {
                fencing_token: claim.fencing_token,
            })),
            Err(ClaimError::NotAvailable { .. }) => Ok(Err(ClaimRefused::NotAvailable)),
            Err(ClaimError::StalePosition) => Ok(Err(ClaimRefused::StalePosition)),
            // Not in this region: tell a team of another region from no team at all.
            Err(ClaimError::NotFound) => match self.store.get_team(team_id).await {
                Ok(Some(_)) => Ok(Err(ClaimRefused::WrongRegion)),
                Ok(None) => Ok(Err(ClaimRefused::UnknownTeam)),
                Err(error) => Err(unavailable(error)),
            },
            // No expected revision is passed, so this cannot happen; treat it as a lost race.
            Err(ClaimError::RevisionMismatch { .. }) => Ok(Err(ClaimRefused::NotAvailable)),
            Err(ClaimError::Store(error)) => Err(unavailable(error)),
        }
    }

    async fn release(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        announce: bool,
    ) -> Result<bool, FleetError> {
        if !announce {
            lock(&self.quiet).begin(team_id);
        }
        let outcome = self
            .store
            .release(region, team_id, incident_id, self.clock.now())
            .await;
        let released = match &outcome {
            Ok(ReleaseOutcome::Released(team)) => Some(team.revision),
            _ => None,
        };
        if !announce && lock(&self.quiet).end(team_id, released).is_some() {
            // Another change made the team AVAILABLE meanwhile: announce that one.
            let _ = self.announcements.send(TeamAvailable {
                region: region.to_owned(),
                team_id: team_id.to_owned(),
            });
        }
        match outcome {
            Ok(ReleaseOutcome::Released(_)) => Ok(true),
            Ok(ReleaseOutcome::AlreadyReleased(_))
            | Err(ReleaseError::NotFound | ReleaseError::NotOnIncident { .. }) => Ok(false),
            Err(ReleaseError::Store(error)) => Err(unavailable(error)),
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<TeamAvailable> {
        self.announcements.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use relay_availability::{Keyspace, RedisTeamStore, model::TeamDefinition};

    use super::*;
    use relay_runtime::clock::SystemClock;

    /// A fleet over availability's Redis store (own key prefix) with AVAILABLE teams.
    async fn fleet(prefix: &str, region: &str, teams: &[&str]) -> StoreFleet {
        let client = redis::Client::open(relay_tests::redis_url()).expect("redis");
        let store = RedisTeamStore::new(client, Keyspace::new(prefix), Duration::from_secs(60))
            .expect("store");
        let now = Utc::now();
        for team_id in teams {
            store
                .upsert_team(
                    &TeamDefinition {
                        team_id: (*team_id).to_owned(),
                        display_name: (*team_id).to_owned(),
                        region: region.to_owned(),
                        capabilities: vec![],
                        shift_ends_at: None,
                    },
                    None,
                    now,
                )
                .await
                .expect("upsert");
            store
                .set_status(team_id, TeamStatus::Available, "", None, now)
                .await
                .expect("available");
        }
        StoreFleet::new(Arc::new(store), Arc::new(SystemClock))
    }

    async fn claim_and_release(fleet: &StoreFleet, region: &str, team_id: &str, announce: bool) {
        let claim = fleet
            .claim(region, team_id, "incident", Utc::now(), None)
            .await
            .expect("up");
        assert!(claim.is_ok(), "{claim:?}");
        assert!(
            fleet
                .release(region, team_id, "incident", announce)
                .await
                .expect("up")
        );
    }

    #[test]
    fn quiet_releases_hold_back_only_their_own_event() {
        // The event after the reply: dropped once, a later one announced.
        let mut quiet = QuietReleases::default();
        quiet.begin("t");
        assert_eq!(quiet.end("t", Some(5)), None);
        assert!(!quiet.announce("t", 5));
        assert!(quiet.announce("t", 6));
        // The event before the reply: held, and dropped when it is the release's own.
        quiet.begin("t");
        assert!(!quiet.announce("t", 7));
        assert_eq!(quiet.end("t", Some(7)), None);
        assert!(quiet.announce("t", 8));
        // Another change's event held while a release failed: handed back to announce.
        quiet.begin("t");
        assert!(!quiet.announce("t", 9));
        assert_eq!(quiet.end("t", None), Some(9));
        // Another change's event held, then the release: the other is handed back, the
        // release's own still dropped.
        quiet.begin("t");
        assert!(!quiet.announce("t", 10));
        assert_eq!(quiet.end("t", Some(11)), Some(10));
        assert!(!quiet.announce("t", 11));
        // A second release begun while an event is held keeps it held, to be handed back.
        quiet.begin("t");
        assert!(!quiet.announce("t", 12));
        quiet.begin("t");
        assert_eq!(quiet.end("t", None), Some(12));
        // Other teams are untouched, and an older event than the release is announced.
        quiet.begin("t");
        assert_eq!(quiet.end("t", Some(20)), None);
        assert!(quiet.announce("u", 20));
        assert!(quiet.announce("t", 19));
        assert!(!quiet.announce("t", 20));
    }

    #[tokio::test]
    async fn a_quiet_release_is_not_announced_and_an_announced_one_is() {
        let prefix = relay_tests::unique_name("routing_quiet");
        let region = "quiet";
        let fleet = fleet(&prefix, region, &["a", "b", "c"]).await;
        let mut announced = fleet.subscribe();
        // Looking at the region starts its event reader; announced releases until one is
        // heard show that the reader is past its starting point.
        fleet
            .available_near(region, GeoPoint::default(), 1_000.0, 1)
            .await
            .expect("up");
        let mut live = false;
        for _ in 0..40 {
            claim_and_release(&fleet, region, "a", true).await;
            if tokio::time::timeout(Duration::from_millis(250), announced.recv())
                .await
                .is_ok()
            {
                live = true;
                break;
            }
        }
        assert!(live, "the event reader never announced a release");
        claim_and_release(&fleet, region, "b", false).await;
        claim_and_release(&fleet, region, "c", true).await;
        // Events are read in order: everything announced before c's release, and b not at all.
        loop {
            let next = tokio::time::timeout(Duration::from_secs(5), announced.recv())
                .await
                .expect("c is announced")
                .expect("open");
            assert_ne!(next.team_id, "b", "a quiet release was announced");
            if next.team_id == "c" {
                break;
            }
        }
        relay_tests::redis_delete_prefix(&prefix).await;
    }
}
