//! The production [`Fleet`]: availability's team store (its Redis keyspace, or its in-process
//! store in `relay dev`), used as a library as DESIGN.md says. Every method maps onto one
//! store call; the claim is availability's one-script atomic claim with its fencing counter.
//!
//! Round trips (Redis): `available_near` is two (a `GEOSEARCH ... COUNT` of the region's
//! AVAILABLE set, then the found teams' hashes in one pipeline); `teams_near` and `busy_teams`
//! page through the region's teams (one `SMEMBERS`-and-hashes read per 500 teams); `claim`
//! and `release` are one script call each.
//! Announcements of teams becoming AVAILABLE come from each region's availability event
//! stream, read by one task per region from the first time routing looks at that region.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use chrono::{DateTime, Utc};
use relay_availability::{
    ClaimError, ReleaseError, ReleaseOutcome, TeamStore,
    model::{EventKind, Position as StorePosition, Team, TeamStatus as StoreStatus},
};
use relay_proto::common::{GeoPoint, TeamStatus};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::{
    clock::Clock,
    eta::great_circle_meters,
    fleet::{Claim, ClaimRefused, Fleet, FleetError, FleetTeam, NearestTeams, TeamAvailable},
    ranking::{Position, TeamSnapshot},
};

/// The namespace of remembered recommendations among the store's expiring records.
const RECOMMENDATION: &str = "routing.recommendation";

/// Teams read per page when routing scans a region.
const PAGE: usize = 500;

/// Routing's fleet over availability's [`TeamStore`].
pub struct StoreFleet {
    store: Arc<dyn TeamStore>,
    clock: Arc<dyn Clock>,
    announcements: broadcast::Sender<TeamAvailable>,
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
    TeamSnapshot {
        team_id: team.team_id.clone(),
        display_name: team.display_name.clone(),
        status: team.status,
        capabilities: team.capabilities.clone(),
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
        shift_ends_at: team.shift_ends_at,
    }
}

fn fleet_team(team: &Team) -> FleetTeam {
    FleetTeam {
        region: team.region.clone(),
        snapshot: snapshot(team),
        incident_id: (!team.incident_id.is_empty()).then(|| team.incident_id.clone()),
        status_since: team.update_time,
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
                            if matches!(event.kind, EventKind::StatusChanged | EventKind::Upserted)
                                && event.team.status == TeamStatus::Available
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
            .nearest_available(
                region,
                StorePosition {
                    latitude: point.latitude,
                    longitude: point.longitude,
                },
                radius_meters,
                count,
            )
            .await
            .map_err(unavailable)?;
        Ok(NearestTeams {
            teams: nearest
                .teams
                .iter()
                .map(|(team, _)| snapshot(team))
                .collect(),
            frontier: nearest.frontier,
        })
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
    ) -> Result<bool, FleetError> {
        match self
            .store
            .release(region, team_id, incident_id, self.clock.now())
            .await
        {
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
