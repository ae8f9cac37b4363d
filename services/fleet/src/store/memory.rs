//! The in-process backend of [`TeamStore`] and [`DispatchStore`] for `relay dev` and tests: the
//! same semantics as the Redis backend, with one mutex for atomicity (every operation is one critical section, as
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

use tokio::sync::broadcast;

use super::{
    ChangeError, Claim, ClaimError, DispatchStore, EventsError, FleetTeam, LocationOutcome,
    LocationReport, Nearest, Recorded, ReleaseError, ReleaseOutcome, RequestRecord, StoreError,
    TeamAvailable, TeamPage, TeamStore, UpsertOutcome, announce::Announcer, announces, busy_of,
    is_unavailable, on_duty_near, rank_candidates, rank_placed,
};
use crate::model::{
    EventId, EventKind, Position, Team, TeamDefinition, TeamEvent, TeamStatus, TeamSummary,
    allowed_from, is_busy, landing_status,
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

/// What a change under a request id did, as its record keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Created,
    Changed,
    Same,
}

/// The idempotency record of a request: as the Redis store's, the team right after the change.
#[derive(Debug, Clone)]
struct RequestEntry {
    fingerprint: String,
    tag: Tag,
    team: Team,
}

/// The record of `request` when it exists: `Err` when it was made by another request (another
/// fingerprint). Expired records are dropped.
fn recall(state: &mut State, request: &RequestRecord<'_>) -> Option<Result<RequestEntry, ()>> {
    let now = Instant::now();
    state.requests.retain(|_, (_, expires)| *expires > now);
    let (entry, _) = state
        .requests
        .get(&format!("{}:{}", request.rpc, request.request_id))?;
    Some(if entry.fingerprint == request.fingerprint {
        Ok(entry.clone())
    } else {
        Err(())
    })
}

/// Writes the record of `request`, in the same critical section as its change.
fn remember(state: &mut State, request: &RequestRecord<'_>, tag: Tag, team: &Team) {
    state.requests.insert(
        format!("{}:{}", request.rpc, request.request_id),
        (
            RequestEntry {
                fingerprint: request.fingerprint.to_owned(),
                tag,
                team: team.clone(),
            },
            Instant::now() + request.ttl,
        ),
    );
}

#[derive(Debug, Default)]
struct State {
    teams: HashMap<String, Entry>,
    regions: HashMap<String, Region>,
    last_id: EventId,
    requests: HashMap<String, (RequestEntry, Instant)>,
    recommendations: HashMap<String, (Vec<u8>, DateTime<Utc>)>,
    epoch: Option<String>,
    region_epochs: HashMap<String, String>,
}

/// Team live state in this process.
#[derive(Debug)]
pub struct MemoryTeamStore {
    state: Mutex<State>,
    retention: Duration,
    notify: watch::Sender<u64>,
    announcer: Announcer,
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
            announcer: Announcer::default(),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, StoreError> {
        self.state.lock().map_err(|_| poisoned())
    }

    fn emit(&self, state: &mut State, kind: EventKind, team: &Team, now: DateTime<Utc>) {
        self.emit_with(state, kind, team, now, true);
    }

    /// Records an event; announces the team to [`DispatchStore::subscribe`]rs when the change
    /// frees it ([`announces`]) and `announce` is set (a quiet release is not).
    fn emit_with(
        &self,
        state: &mut State,
        kind: EventKind,
        team: &Team,
        now: DateTime<Utc>,
        announce: bool,
    ) {
        if announce && announces(kind, team) {
            self.announcer.announce(&team.region, &team.team_id);
        }
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

    /// [`DispatchStore::claim`] of a team whose status is one of `allowed`.
    #[allow(clippy::too_many_arguments)]
    fn claim_from(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        expected_revision: Option<i64>,
        now: DateTime<Utc>,
        max_position_age: Option<Duration>,
        allowed: &[TeamStatus],
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
        if !allowed.contains(&team.status) {
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

    /// Releases a team (see [`DispatchStore::release`]), announcing it when `announce`.
    fn release_team(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        now: DateTime<Utc>,
        announce: bool,
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
            self.emit_with(&mut state, EventKind::StatusChanged, &team, now, announce);
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

    /// [`TeamStore::upsert_team`] within the lock.
    fn upsert_in(
        &self,
        state: &mut State,
        definition: &TeamDefinition,
        expected_revision: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<UpsertOutcome, ChangeError> {
        let Some(entry) = state.teams.get(&definition.team_id).cloned() else {
            if expected_revision.is_some() {
                return Err(ChangeError::RevisionMismatch { current: 0 });
            }
            let team = self.create(state, definition, 1, 0, now);
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
            self.emit(state, EventKind::Removed, &old, now);
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
        self.emit(state, EventKind::Upserted, &team, now);
        Ok(UpsertOutcome {
            team,
            created: false,
            changed: true,
        })
    }

    /// [`TeamStore::set_status`] within the lock.
    fn set_status_in(
        &self,
        state: &mut State,
        team_id: &str,
        status: TeamStatus,
        incident_id: &str,
        expected_revision: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<(Team, bool), ChangeError> {
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
        Self::reindex(state, &team);
        self.emit(state, EventKind::StatusChanged, &team, now);
        Ok((team, true))
    }

    /// The teams of `region`.
    fn region_teams(&self, region: &str) -> Result<Vec<Team>, StoreError> {
        let state = self.lock()?;
        Ok(state
            .regions
            .get(region)
            .map(|r| {
                r.teams
                    .iter()
                    .filter_map(|id| state.teams.get(id).map(|e| e.team.clone()))
                    .collect()
            })
            .unwrap_or_default())
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
        self.upsert_in(&mut state, definition, expected_revision, now)
    }

    async fn upsert_team_once(
        &self,
        definition: &TeamDefinition,
        expected_revision: Option<i64>,
        now: DateTime<Utc>,
        request: &RequestRecord<'_>,
    ) -> Result<Recorded<UpsertOutcome>, ChangeError> {
        let mut state = self.lock()?;
        match recall(&mut state, request) {
            Some(Ok(record)) => {
                let (created, changed) = match record.tag {
                    Tag::Created => (true, true),
                    Tag::Changed => (false, true),
                    Tag::Same => (false, false),
                };
                return Ok(Recorded::Replayed(UpsertOutcome {
                    team: record.team,
                    created,
                    changed,
                }));
            }
            Some(Err(())) => return Ok(Recorded::Reused),
            None => {}
        }
        let outcome = self.upsert_in(&mut state, definition, expected_revision, now)?;
        let tag = match (outcome.created, outcome.changed) {
            (true, _) => Tag::Created,
            (false, true) => Tag::Changed,
            (false, false) => Tag::Same,
        };
        remember(&mut state, request, tag, &outcome.team);
        Ok(Recorded::Applied(outcome))
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
        self.set_status_in(
            &mut state,
            team_id,
            status,
            incident_id,
            expected_revision,
            now,
        )
    }

    async fn set_status_once(
        &self,
        team_id: &str,
        status: TeamStatus,
        incident_id: &str,
        expected_revision: Option<i64>,
        now: DateTime<Utc>,
        request: &RequestRecord<'_>,
    ) -> Result<Recorded<(Team, bool)>, ChangeError> {
        let mut state = self.lock()?;
        match recall(&mut state, request) {
            Some(Ok(record)) => {
                return Ok(Recorded::Replayed((
                    record.team,
                    record.tag == Tag::Changed,
                )));
            }
            Some(Err(())) => return Ok(Recorded::Reused),
            None => {}
        }
        let (team, changed) = self.set_status_in(
            &mut state,
            team_id,
            status,
            incident_id,
            expected_revision,
            now,
        )?;
        let tag = if changed { Tag::Changed } else { Tag::Same };
        remember(&mut state, request, tag, &team);
        Ok(Recorded::Applied((team, changed)))
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

    async fn undo_create(
        &self,
        team: &Team,
        request: &RequestRecord<'_>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut state = self.lock()?;
        let current = match state.teams.get(&team.team_id) {
            Some(entry) if entry.team.revision == team.revision => entry.team.clone(),
            _ => return Ok(false),
        };
        state.teams.remove(&team.team_id);
        if let Some(region) = state.regions.get_mut(&current.region) {
            region.teams.remove(&current.team_id);
            region.available.remove(&current.team_id);
        }
        state
            .requests
            .remove(&format!("{}:{}", request.rpc, request.request_id));
        self.emit(&mut state, EventKind::Removed, &current, now);
        Ok(true)
    }

    async fn region_epochs(&self, regions: &[String]) -> Result<Vec<Option<String>>, StoreError> {
        let state = self.lock()?;
        Ok(regions
            .iter()
            .map(|region| state.region_epochs.get(region).cloned())
            .collect())
    }

    async fn stamp_region_epochs(&self, regions: &[String], epoch: &str) -> Result<(), StoreError> {
        let mut state = self.lock()?;
        for region in regions {
            state.region_epochs.insert(region.clone(), epoch.to_owned());
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl DispatchStore for MemoryTeamStore {
    async fn teams_near(
        &self,
        region: &str,
        point: Position,
        radius_meters: f64,
    ) -> Result<Vec<TeamSummary>, StoreError> {
        Ok(on_duty_near(
            &self.region_teams(region)?,
            point,
            radius_meters,
        ))
    }

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

    async fn nearest_unavailable(
        &self,
        region: &str,
        point: Position,
        radius_meters: f64,
        count: usize,
    ) -> Result<Vec<(TeamSummary, f64)>, StoreError> {
        let teams = self
            .region_teams(region)?
            .iter()
            .map(TeamSummary::from)
            .collect();
        let mut found = rank_placed(teams, point, radius_meters, is_unavailable);
        found.truncate(count);
        Ok(found)
    }

    async fn fleet_team(&self, team_id: &str) -> Result<Option<FleetTeam>, StoreError> {
        Ok(self
            .lock()?
            .teams
            .get(team_id)
            .map(|e| FleetTeam::from(&e.team)))
    }

    async fn busy_teams(&self, region: &str) -> Result<Vec<FleetTeam>, StoreError> {
        Ok(busy_of(&self.region_teams(region)?))
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
        self.claim_from(
            region,
            team_id,
            incident_id,
            expected_revision,
            now,
            max_position_age,
            &[TeamStatus::Available],
        )
    }

    async fn claim_to_restore(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Claim, ClaimError> {
        self.claim_from(
            region,
            team_id,
            incident_id,
            None,
            now,
            None,
            &[TeamStatus::Available, TeamStatus::OffDuty],
        )
    }

    async fn release(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        now: DateTime<Utc>,
    ) -> Result<ReleaseOutcome, ReleaseError> {
        self.release_team(region, team_id, incident_id, now, true)
    }

    async fn release_quietly(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        now: DateTime<Utc>,
    ) -> Result<ReleaseOutcome, ReleaseError> {
        self.release_team(region, team_id, incident_id, now, false)
    }

    async fn remember_recommendation(
        &self,
        incident_id: &str,
        request: &[u8],
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let expires = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let mut state = self.lock()?;
        state.recommendations.retain(|_, (_, until)| *until > now);
        state
            .recommendations
            .insert(incident_id.to_owned(), (request.to_vec(), expires));
        Ok(())
    }

    async fn recommendation(
        &self,
        incident_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .lock()?
            .recommendations
            .get(incident_id)
            .filter(|(_, expires)| *expires > now)
            .map(|(request, _)| request.clone()))
    }

    fn subscribe(&self) -> broadcast::Receiver<TeamAvailable> {
        self.announcer.subscribe()
    }
}

#[cfg(feature = "testing")]
impl MemoryTeamStore {
    /// Testing: puts a team into `region` as `summary` says (any status, position and
    /// capabilities; no incident), bypassing the state machine, as a test sets up a fleet.
    /// Keeps the team's fencing counter and creation time; announces it like an upsert.
    ///
    /// # Panics
    /// When the store's lock was poisoned.
    pub fn put_team(&self, region: &str, summary: TeamSummary, now: DateTime<Utc>) {
        #[allow(clippy::unwrap_used)]
        let mut state = self.lock().unwrap();
        let previous = state.teams.get(&summary.team_id).cloned();
        if let Some(old) = &previous
            && let Some(old_region) = state.regions.get_mut(&old.team.region)
        {
            old_region.teams.remove(&old.team.team_id);
            old_region.available.remove(&old.team.team_id);
        }
        let team = Team {
            team_id: summary.team_id,
            display_name: summary.display_name,
            region: region.to_owned(),
            capabilities: summary.capabilities,
            status: summary.status,
            location: summary.location,
            location_updated_at: summary.location_updated_at,
            heading_degrees: None,
            speed_meters_per_second: None,
            accuracy_meters: None,
            incident_id: String::new(),
            shift_ends_at: summary.shift_ends_at,
            revision: previous.as_ref().map_or(1, |e| e.team.revision + 1),
            fencing_token: previous.as_ref().map_or(0, |e| e.team.fencing_token),
            create_time: previous.as_ref().map_or(now, |e| e.team.create_time),
            update_time: now,
        };
        state.teams.insert(
            team.team_id.clone(),
            Entry {
                team: team.clone(),
                last_incident: previous.map(|e| e.last_incident).unwrap_or_default(),
            },
        );
        state
            .regions
            .entry(team.region.clone())
            .or_default()
            .teams
            .insert(team.team_id.clone());
        Self::reindex(&mut state, &team);
        self.emit(&mut state, EventKind::Upserted, &team, now);
    }

    /// Testing: sets a team's status bypassing the state machine (a busy status keeps the
    /// team's incident; any other clears it). Returns false for an unknown team.
    ///
    /// # Panics
    /// When the store's lock was poisoned.
    pub fn force_status(&self, team_id: &str, status: TeamStatus, now: DateTime<Utc>) -> bool {
        #[allow(clippy::unwrap_used)]
        let mut state = self.lock().unwrap();
        let Some(entry) = state.teams.get_mut(team_id) else {
            return false;
        };
        if entry.team.status == status {
            return true;
        }
        entry.team.status = status;
        if !is_busy(status) && !entry.team.incident_id.is_empty() {
            entry.last_incident = std::mem::take(&mut entry.team.incident_id);
        }
        entry.team.revision += 1;
        entry.team.update_time = now;
        let team = entry.team.clone();
        Self::reindex(&mut state, &team);
        self.emit(&mut state, EventKind::StatusChanged, &team, now);
        true
    }

    /// Testing: a Redis failover that lost recent writes, as routing sees it: every team
    /// becomes AVAILABLE with no incident, its fencing counter restarts at 0 and its live
    /// record is new (created `now`). Nothing is announced.
    ///
    /// # Panics
    /// When the store's lock was poisoned.
    pub fn lose_writes(&self, now: DateTime<Utc>) {
        #[allow(clippy::unwrap_used)]
        let mut state = self.lock().unwrap();
        let teams: Vec<Team> = state
            .teams
            .values_mut()
            .map(|entry| {
                let team = &mut entry.team;
                team.status = TeamStatus::Available;
                team.incident_id.clear();
                team.fencing_token = 0;
                team.create_time = now;
                team.update_time = now;
                team.clone()
            })
            .collect();
        for team in &teams {
            Self::reindex(&mut state, team);
        }
    }

    /// Testing: every team, ordered by id.
    ///
    /// # Panics
    /// When the store's lock was poisoned.
    #[must_use]
    pub fn teams(&self) -> Vec<Team> {
        #[allow(clippy::unwrap_used)]
        let state = self.lock().unwrap();
        let mut teams: Vec<Team> = state.teams.values().map(|e| e.team.clone()).collect();
        teams.sort_by(|a, b| a.team_id.cmp(&b.team_id));
        teams
    }
}
