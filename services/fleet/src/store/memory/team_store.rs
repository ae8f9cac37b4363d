//! [`TeamStore`] (what availability serves) in memory.

use super::*;

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
