//! The operations of [`MemoryTeamStore`] that both traits build on: construction, events,
//! creation, claims and releases, status changes and the region index.

use super::*;

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

    pub(super) fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, StoreError> {
        self.state.lock().map_err(|_| poisoned())
    }

    pub(super) fn emit(&self, state: &mut State, kind: EventKind, team: &Team, now: DateTime<Utc>) {
        self.emit_with(state, kind, team, now, true);
    }

    /// Records an event; announces the team to [`DispatchStore::subscribe`]rs when the change
    /// frees it ([`announces`]) and `announce` is set (a quiet release is not).
    pub(super) fn emit_with(
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
    pub(super) fn create(
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
    pub(super) fn claim_from(
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
    pub(super) fn release_team(
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
    pub(super) fn upsert_in(
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
    pub(super) fn set_status_in(
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
    pub(super) fn region_teams(&self, region: &str) -> Result<Vec<Team>, StoreError> {
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

    pub(super) fn reindex(state: &mut State, team: &Team) {
        let region = state.regions.entry(team.region.clone()).or_default();
        if indexable(team) {
            region.available.insert(team.team_id.clone());
        } else {
            region.available.remove(&team.team_id);
        }
    }
}
