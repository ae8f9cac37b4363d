//! What tests may do to the memory store that no service does (`testing` feature).

use super::*;

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
