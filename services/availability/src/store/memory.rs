//! The in-process backend of [`TeamStore`] for `relay dev` and tests: the same semantics as the
//! Redis backend, with one mutex for atomicity (every operation is one critical section, as
//! every Redis script is) and a `watch` channel to wake event readers.
//!
//! Proximity is a scan of the region's available set followed by the same exact ranking as
//! Redis ([`rank_candidates`]). A region holds tens to a few hundred teams, for which a scan is
//! as fast as an R-tree and has no index to keep in step.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::{
    ChangeError, Claim, ClaimError, EventsError, LocationOutcome, LocationReport, ReleaseError,
    ReleaseOutcome, StoreError, TeamPage, TeamStore, UpsertOutcome, rank_candidates,
};
use crate::model::{
    EventId, EventKind, Position, Team, TeamDefinition, TeamEvent, TeamStatus, allowed_from,
    is_busy, landing_status,
};

#[derive(Debug, Default)]
struct Region {
    teams: BTreeSet<String>,
    available: BTreeSet<String>,
    events: VecDeque<TeamEvent>,
    /// The newest event trimmed away (history before it is gone).
    max_deleted: Option<EventId>,
}

#[derive(Debug, Clone)]
struct Entry {
    team: Team,
    last_incident: String,
}

#[derive(Debug, Default)]
struct State {
    teams: HashMap<String, Entry>,
    regions: HashMap<String, Region>,
    last_id: EventId,
    requests: HashMap<String, (String, Instant)>,
    epoch: Option<String>,
}

/// Team live state in this process.
#[derive(Debug)]
pub struct MemoryTeamStore {
    state: Mutex<State>,
    retention: Duration,
    notify: watch::Sender<u64>,
}

fn poisoned() -> StoreError {
    StoreError::Corrupt(String::from("the in-process store's lock was poisoned"))
}

fn indexable(team: &Team) -> bool {
    team.status == TeamStatus::Available
        && team
            .location
            .is_some_and(|p| p.latitude.abs() <= super::MAX_INDEXED_LATITUDE)
}

impl MemoryTeamStore {
    /// An empty store keeping events for `retention`.
    #[must_use]
    pub fn new(retention: Duration) -> Self {
        Self {
            state: Mutex::new(State::default()),
            retention,
            notify: watch::channel(0).0,
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, StoreError> {
        self.state.lock().map_err(|_| poisoned())
    }

    fn emit(&self, state: &mut State, kind: EventKind, team: &Team, now: DateTime<Utc>) {
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let ms = u64::try_from(wall.as_millis()).unwrap_or(u64::MAX);
        let id = if ms > state.last_id.ms {
            EventId { ms, seq: 0 }
        } else {
            EventId {
                ms: state.last_id.ms,
                seq: state.last_id.seq + 1,
            }
        };
        state.last_id = id;
        let cutoff =
            ms.saturating_sub(u64::try_from(self.retention.as_millis()).unwrap_or(u64::MAX));
        let region = state.regions.entry(team.region.clone()).or_default();
        while region.events.front().is_some_and(|e| e.id.ms < cutoff) {
            if let Some(event) = region.events.pop_front() {
                region.max_deleted = Some(event.id);
            }
        }
        region.events.push_back(TeamEvent {
            id,
            kind,
            team: team.clone(),
            event_time: now,
        });
        self.notify.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Adds a new OFF_DUTY team and its UPSERTED event.
    fn create(
        &self,
        state: &mut State,
        definition: &TeamDefinition,
        revision: i64,
        fencing_token: i64,
        now: DateTime<Utc>,
    ) -> Team {
        let team = Team {
            team_id: definition.team_id.clone(),
            display_name: definition.display_name.clone(),
            region: definition.region.clone(),
            capabilities: definition.capabilities.clone(),
            status: TeamStatus::OffDuty,
            location: None,
            location_updated_at: None,
            heading_degrees: None,
            speed_meters_per_second: None,
            accuracy_meters: None,
            incident_id: String::new(),
            shift_ends_at: definition.shift_ends_at,
            revision,
            fencing_token,
            create_time: now,
            update_time: now,
        };
        state.teams.insert(
            team.team_id.clone(),
            Entry {
                team: team.clone(),
                last_incident: String::new(),
            },
        );
        state
            .regions
            .entry(team.region.clone())
            .or_default()
            .teams
            .insert(team.team_id.clone());
        self.emit(state, EventKind::Upserted, &team, now);
        team
    }

    fn reindex(state: &mut State, team: &Team) {
        let region = state.regions.entry(team.region.clone()).or_default();
        if indexable(team) {
            region.available.insert(team.team_id.clone());
        } else {
            region.available.remove(&team.team_id);
        }
    }
}

#[tonic::async_trait]
impl TeamStore for MemoryTeamStore {
    async fn upsert_team(
        &self,
        definition: &TeamDefinition,
        expected_revision: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<UpsertOutcome, ChangeError> {
        let mut state = self.lock()?;
        let Some(entry) = state.teams.get(&definition.team_id).cloned() else {
            if expected_revision.is_some() {
                return Err(ChangeError::RevisionMismatch { current: 0 });
            }
            let team = self.create(&mut state, definition, 1, 0, now);
            return Ok(UpsertOutcome {
                team,
                created: true,
                changed: true,
            });
        };
        let mut team = entry.team;
        if let Some(expected) = expected_revision
            && expected != team.revision
        {
            return Err(ChangeError::RevisionMismatch {
                current: team.revision,
            });
        }
        if team.definition() == *definition {
            return Ok(UpsertOutcome {
                team,
                created: false,
                changed: false,
            });
        }
        let moving = team.region != definition.region;
        if moving {
            if !matches!(team.status, TeamStatus::OffDuty | TeamStatus::OutOfService) {
                return Err(ChangeError::RegionChangeNotAllowed {
                    status: team.status,
                });
            }
            let old = team.clone();
            if let Some(region) = state.regions.get_mut(&old.region) {
                region.teams.remove(&old.team_id);
                region.available.remove(&old.team_id);
            }
            self.emit(&mut state, EventKind::Removed, &old, now);
        }
        team.display_name.clone_from(&definition.display_name);
        team.region.clone_from(&definition.region);
        team.capabilities.clone_from(&definition.capabilities);
        team.shift_ends_at = definition.shift_ends_at;
        team.revision += 1;
        team.update_time = now;
        state
            .regions
            .entry(team.region.clone())
            .or_default()
            .teams
            .insert(team.team_id.clone());
        if let Some(entry) = state.teams.get_mut(&team.team_id) {
            entry.team = team.clone();
        }
        self.emit(&mut state, EventKind::Upserted, &team, now);
        Ok(UpsertOutcome {
            team,
            created: false,
            changed: true,
        })
    }

    async fn seed_team(
        &self,
        definition: &TeamDefinition,
        floor: i64,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut state = self.lock()?;
        if state.teams.contains_key(&definition.team_id) {
            return Ok(false);
        }
        // As the Redis script: revision and fencing counter both start at the floor.
        let floor = floor.max(1);
        self.create(&mut state, definition, floor, floor, now);
        Ok(true)
    }

    async fn get_team(&self, team_id: &str) -> Result<Option<Team>, StoreError> {
        Ok(self.lock()?.teams.get(team_id).map(|e| e.team.clone()))
    }

    async fn list_teams(
        &self,
        region: Option<&str>,
        status: Option<TeamStatus>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<TeamPage, StoreError> {
        let state = self.lock()?;
        let sorted: BTreeMap<&String, &Entry> = state.teams.iter().collect();
        let mut teams: Vec<Team> = sorted
            .into_iter()
            .filter(|(id, _)| after.is_none_or(|after| id.as_str() > after))
            .map(|(_, entry)| &entry.team)
            .filter(|team| region.is_none_or(|region| team.region == region))
            .filter(|team| status.is_none_or(|status| team.status == status))
            .take(limit + 1)
            .cloned()
            .collect();
        let more = teams.len() > limit;
        teams.truncate(limit);
        Ok(TeamPage { teams, more })
    }

    async fn set_status(
        &self,
        team_id: &str,
        status: TeamStatus,
        incident_id: &str,
        expected_revision: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<(Team, bool), ChangeError> {
        let mut state = self.lock()?;
        let Some(entry) = state.teams.get(team_id).cloned() else {
            return Err(ChangeError::NotFound);
        };
        let mut team = entry.team;
        if let Some(expected) = expected_revision
            && expected != team.revision
        {
            return Err(ChangeError::RevisionMismatch {
                current: team.revision,
            });
        }
        let mismatch = || ChangeError::IncidentMismatch {
            current_incident: team.incident_id.clone(),
        };
        let (busy_target, busy_now) = (is_busy(status), is_busy(team.status));
        if team.status == status {
            if busy_target && incident_id != team.incident_id {
                return Err(mismatch());
            }
            return Ok((team, false));
        }
        if status == TeamStatus::Dispatched && team.status == TeamStatus::Available {
            return Err(ChangeError::DispatchRequiresRouting);
        }
        if !allowed_from(status).contains(&team.status) {
            return Err(ChangeError::InvalidTransition {
                from: team.status,
                to: status,
            });
        }
        if busy_target && incident_id != team.incident_id {
            return Err(mismatch());
        }
        if busy_now && !busy_target && !incident_id.is_empty() && incident_id != team.incident_id {
            return Err(mismatch());
        }
        let mut last_incident = entry.last_incident;
        if busy_now && !busy_target {
            last_incident = std::mem::take(&mut team.incident_id);
        }
        team.status = landing_status(team.status, status, team.shift_ends_at, now);
        team.revision += 1;
        team.update_time = now;
        state.teams.insert(
            team.team_id.clone(),
            Entry {
                team: team.clone(),
                last_incident,
            },
        );
        Self::reindex(&mut state, &team);
        self.emit(&mut state, EventKind::StatusChanged, &team, now);
        Ok((team, true))
    }

    async fn report_locations(
        &self,
        reports: &[LocationReport],
        now: DateTime<Utc>,
    ) -> Result<Vec<LocationOutcome>, StoreError> {
        let mut state = self.lock()?;
        let mut outcomes = Vec::with_capacity(reports.len());
        for report in reports {
            let Some(entry) = state.teams.get_mut(&report.team_id) else {
                outcomes.push(LocationOutcome::NotFound);
                continue;
            };
            let team = &mut entry.team;
            if team
                .location_updated_at
                .is_some_and(|stored| stored >= report.recorded_at)
            {
                outcomes.push(LocationOutcome::Stale {
                    revision: team.revision,
                });
                continue;
            }
            team.location = Some(report.position);
            team.location_updated_at = Some(report.recorded_at);
            team.heading_degrees = report.heading_degrees;
            team.speed_meters_per_second = report.speed_meters_per_second;
            team.accuracy_meters = report.accuracy_meters;
            team.revision += 1;
            team.update_time = now;
            let team = team.clone();
            outcomes.push(LocationOutcome::Accepted {
                revision: team.revision,
            });
            Self::reindex(&mut state, &team);
            self.emit(&mut state, EventKind::LocationChanged, &team, now);
        }
        Ok(outcomes)
    }

    async fn available_within(
        &self,
        region: &str,
        point: Position,
        radius_meters: f64,
    ) -> Result<Vec<(Team, f64)>, StoreError> {
        let state = self.lock()?;
        let teams = state
            .regions
            .get(region)
            .map(|region| {
                region
                    .available
                    .iter()
                    .filter_map(|id| state.teams.get(id).map(|e| e.team.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(rank_candidates(teams, point, radius_meters))
    }

    async fn claim(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        expected_revision: Option<i64>,
        now: DateTime<Utc>,
        max_position_age: Option<Duration>,
    ) -> Result<Claim, ClaimError> {
        let mut state = self.lock()?;
        let Some(entry) = state
            .teams
            .get_mut(team_id)
            .filter(|e| e.team.region == region)
        else {
            return Err(ClaimError::NotFound);
        };
        let team = &mut entry.team;
        if team.status != TeamStatus::Available {
            return Err(ClaimError::NotAvailable {
                status: team.status,
            });
        }
        let fresh = max_position_age.is_none_or(|age| {
            let max_age = chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
            team.location.is_some()
                && team
                    .location_updated_at
                    .is_some_and(|at| now.signed_duration_since(at) <= max_age)
        });
        if !fresh {
            return Err(ClaimError::StalePosition);
        }
        if let Some(expected) = expected_revision
            && expected != team.revision
        {
            return Err(ClaimError::RevisionMismatch {
                current: team.revision,
            });
        }
        team.status = TeamStatus::Dispatched;
        team.incident_id = incident_id.to_owned();
        team.revision += 1;
        team.fencing_token += 1;
        team.update_time = now;
        let team = team.clone();
        Self::reindex(&mut state, &team);
        self.emit(&mut state, EventKind::StatusChanged, &team, now);
        Ok(Claim {
            fencing_token: team.fencing_token,
            revision: team.revision,
            team,
        })
    }

    async fn release(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        now: DateTime<Utc>,
    ) -> Result<ReleaseOutcome, ReleaseError> {
        let mut state = self.lock()?;
        let Some(entry) = state
            .teams
            .get_mut(team_id)
            .filter(|e| e.team.region == region)
        else {
            return Err(ReleaseError::NotFound);
        };
        let busy = is_busy(entry.team.status);
        if busy && entry.team.incident_id == incident_id {
            entry.last_incident = std::mem::take(&mut entry.team.incident_id);
            entry.team.status = TeamStatus::Available;
            entry.team.revision += 1;
            entry.team.update_time = now;
            let team = entry.team.clone();
            Self::reindex(&mut state, &team);
            self.emit(&mut state, EventKind::StatusChanged, &team, now);
            return Ok(ReleaseOutcome::Released(team));
        }
        if !busy && entry.last_incident == incident_id {
            return Ok(ReleaseOutcome::AlreadyReleased(entry.team.clone()));
        }
        Err(ReleaseError::NotOnIncident {
            status: entry.team.status,
            current_incident: entry.team.incident_id.clone(),
        })
    }

    async fn read_events(
        &self,
        region: &str,
        after: EventId,
        max: usize,
        block: Duration,
    ) -> Result<Vec<TeamEvent>, EventsError> {
        let mut changes = self.notify.subscribe();
        let deadline = tokio::time::Instant::now() + block;
        loop {
            changes.borrow_and_update();
            {
                let state = self.lock()?;
                if let Some(region) = state.regions.get(region) {
                    if region.max_deleted.is_some_and(|deleted| after < deleted) {
                        return Err(EventsError::HistoryExpired);
                    }
                    let events: Vec<TeamEvent> = region
                        .events
                        .iter()
                        .filter(|e| e.id > after)
                        .take(max.max(1))
                        .cloned()
                        .collect();
                    if !events.is_empty() {
                        return Ok(events);
                    }
                }
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Ok(Vec::new()),
            }
        }
    }

    async fn last_event_id(&self, region: &str) -> Result<EventId, StoreError> {
        let state = self.lock()?;
        Ok(state
            .regions
            .get(region)
            .and_then(|r| r.events.back())
            .map_or(EventId::ZERO, |e| e.id))
    }

    async fn idempotency_get(
        &self,
        rpc: &str,
        request_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let state = self.lock()?;
        Ok(state
            .requests
            .get(&format!("{rpc}:{request_id}"))
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(record, _)| record.clone()))
    }

    async fn idempotency_put(
        &self,
        rpc: &str,
        request_id: &str,
        record: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut state = self.lock()?;
        let now = Instant::now();
        state.requests.retain(|_, (_, expires)| *expires > now);
        state.requests.insert(
            format!("{rpc}:{request_id}"),
            (record.to_owned(), now + ttl),
        );
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.lock().map(|_| ())
    }

    async fn live_epoch(&self) -> Result<Option<String>, StoreError> {
        Ok(self.lock()?.epoch.clone())
    }

    async fn adopt_live_epoch(&self, candidate: &str) -> Result<String, StoreError> {
        Ok(self
            .lock()?
            .epoch
            .get_or_insert_with(|| candidate.to_owned())
            .clone())
    }
}
