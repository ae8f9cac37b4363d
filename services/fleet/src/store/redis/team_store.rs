//! [`TeamStore`] (what availability serves) on Redis.

use super::*;

#[tonic::async_trait]
impl TeamStore for RedisTeamStore {
    async fn upsert_team(
        &self,
        definition: &TeamDefinition,
        expected_revision: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<UpsertOutcome, ChangeError> {
        applied(
            self.upsert(definition, expected_revision, now, None)
                .await?,
        )
    }

    async fn upsert_team_once(
        &self,
        definition: &TeamDefinition,
        expected_revision: Option<i64>,
        now: DateTime<Utc>,
        request: &RequestRecord<'_>,
    ) -> Result<Recorded<UpsertOutcome>, ChangeError> {
        self.upsert(definition, expected_revision, now, Some(request))
            .await
    }

    async fn seed_team(
        &self,
        definition: &TeamDefinition,
        floor: i64,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let region = &definition.region;
        let reply: Vec<String> = self
            .scripts
            .seed
            .key(self.keys.team(region, &definition.team_id))
            .key(self.keys.teams(region))
            .key(self.keys.events(region))
            .arg(&definition.team_id)
            .arg(&definition.display_name)
            .arg(region)
            .arg(definition.capabilities.join(","))
            .arg(shift(definition.shift_ends_at))
            .arg(floor.max(1))
            .arg(to_micros(now))
            .arg(self.retention_ms())
            .invoke_async(&mut self.conn())
            .await?;
        let _: () = self
            .conn()
            .hset(self.keys.team_regions(), &definition.team_id, region)
            .await?;
        self.remember_region(&definition.team_id, region);
        Ok(first(&reply) == "created")
    }

    async fn get_team(&self, team_id: &str) -> Result<Option<Team>, StoreError> {
        let Some(region) = self.region_of(team_id).await? else {
            return Ok(None);
        };
        self.hash(&region, team_id).await
    }

    async fn list_teams(
        &self,
        region: Option<&str>,
        status: Option<TeamStatus>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<TeamPage, StoreError> {
        let mut conn = self.conn();
        let mut entries: Vec<(String, String)> = match region {
            Some(region) => {
                let ids: Vec<String> = conn.smembers(self.keys.teams(region)).await?;
                ids.into_iter().map(|id| (id, region.to_owned())).collect()
            }
            None => {
                let map: HashMap<String, String> = conn.hgetall(self.keys.team_regions()).await?;
                map.into_iter().collect()
            }
        };
        entries.retain(|(id, _)| after.is_none_or(|after| id.as_str() > after));
        entries.sort();
        let mut teams = Vec::new();
        for chunk in entries.chunks(limit.max(1) * 2) {
            let keys: Vec<String> = chunk
                .iter()
                .map(|(id, region)| self.keys.team(region, id))
                .collect();
            for team in self.hashes(&keys).await? {
                if status.is_none_or(|status| team.status == status) {
                    teams.push(team);
                }
            }
            if teams.len() > limit {
                break;
            }
        }
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
        applied(
            self.change_status(team_id, status, incident_id, expected_revision, now, None)
                .await?,
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
        self.change_status(
            team_id,
            status,
            incident_id,
            expected_revision,
            now,
            Some(request),
        )
        .await
    }

    async fn report_locations(
        &self,
        reports: &[LocationReport],
        now: DateTime<Utc>,
    ) -> Result<Vec<LocationOutcome>, StoreError> {
        let mut outcomes = vec![LocationOutcome::NotFound; reports.len()];
        for (chunk_index, chunk) in reports.chunks(LOCATION_BATCH).enumerate() {
            let base = chunk_index * LOCATION_BATCH;
            let mut known = Vec::with_capacity(chunk.len());
            let mut unknown = Vec::new();
            for (offset, report) in chunk.iter().enumerate() {
                match self.cached_region(&report.team_id) {
                    Some(region) => known.push((base + offset, report, region)),
                    None => unknown.push((base + offset, report)),
                }
            }
            let mut retry = Vec::new();
            let replies = self.report_chunk(&known, now).await?;
            for ((index, report, _), reply) in known.iter().zip(replies) {
                match first(&reply) {
                    "ok" => {
                        outcomes[*index] = LocationOutcome::Accepted {
                            revision: revision_from(second(&reply))?,
                        };
                    }
                    "stale" => {
                        outcomes[*index] = LocationOutcome::Stale {
                            revision: revision_from(second(&reply))?,
                        };
                    }
                    // The cached region is out of date (the team moved): look it up again.
                    _ => retry.push((*index, *report)),
                }
            }
            retry.extend(unknown);
            retry.sort_by_key(|(index, _)| *index);
            let mut second_pass = Vec::new();
            for (index, report) in retry {
                if let Some(region) = self.region_of(&report.team_id).await? {
                    second_pass.push((index, report, region));
                }
            }
            // Stream order per team is kept: a team's reports are either all known (one
            // call, in order) or all retried here, in order.
            let replies = self.report_chunk(&second_pass, now).await?;
            for ((index, _, _), reply) in second_pass.iter().zip(replies) {
                outcomes[*index] = match first(&reply) {
                    "ok" => LocationOutcome::Accepted {
                        revision: revision_from(second(&reply))?,
                    },
                    "stale" => LocationOutcome::Stale {
                        revision: revision_from(second(&reply))?,
                    },
                    _ => LocationOutcome::NotFound,
                };
            }
        }
        Ok(outcomes)
    }

    async fn available_within(
        &self,
        region: &str,
        point: Position,
        radius_meters: f64,
    ) -> Result<Vec<(Team, f64)>, StoreError> {
        let ids: Vec<String> = geosearch(self.keys.available(region), point, radius_meters)
            .query_async(&mut self.conn())
            .await?;
        let keys: Vec<String> = ids.iter().map(|id| self.keys.team(region, id)).collect();
        let teams = self.hashes(&keys).await?;
        Ok(rank_candidates(teams, point, radius_meters))
    }

    async fn read_events(
        &self,
        region: &str,
        after: EventId,
        max: usize,
        block: Duration,
    ) -> Result<Vec<TeamEvent>, EventsError> {
        self.events.read_events(region, after, max, block).await
    }

    async fn last_event_id(&self, region: &str) -> Result<EventId, StoreError> {
        self.events.last_event_id(region).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let _: String = redis::cmd("PING").query_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn live_epoch(&self) -> Result<Option<String>, StoreError> {
        Ok(redis::cmd("GET")
            .arg(self.keys.live_epoch())
            .query_async(&mut self.conn())
            .await?)
    }

    async fn adopt_live_epoch(&self, candidate: &str) -> Result<String, StoreError> {
        // SET ... NX GET (Redis 7.0): sets only when absent and answers the previous value,
        // nil when this call set it. One atomic step, so two replicas agree on one epoch.
        let previous: Option<String> = redis::cmd("SET")
            .arg(self.keys.live_epoch())
            .arg(candidate)
            .arg("NX")
            .arg("GET")
            .query_async(&mut self.conn())
            .await?;
        Ok(previous.unwrap_or_else(|| candidate.to_owned()))
    }

    async fn undo_create(
        &self,
        team: &Team,
        request: &RequestRecord<'_>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let region = &team.region;
        let reply: Vec<String> = self
            .scripts
            .undo_create
            .key(self.keys.team(region, &team.team_id))
            .key(self.keys.teams(region))
            .key(self.keys.events(region))
            .key(self.keys.available(region))
            .key(self.keys.unavailable(region))
            .key(self.keys.request(region, request.rpc, request.request_id))
            .arg(team.revision)
            .arg(to_micros(now))
            .arg(self.retention_ms())
            .invoke_async(&mut self.conn())
            .await?;
        if first(&reply) != "ok" {
            return Ok(false);
        }
        let _: () = self
            .conn()
            .hdel(self.keys.team_regions(), &team.team_id)
            .await?;
        self.forget_region(&team.team_id);
        Ok(true)
    }

    async fn region_epochs(&self, regions: &[String]) -> Result<Vec<Option<String>>, StoreError> {
        if regions.is_empty() {
            return Ok(Vec::new());
        }
        // One GET per region, pipelined (on a cluster, one pipeline per slot).
        let mut pipeline = redis::pipe();
        for region in regions {
            pipeline.get(self.keys.region_epoch(region));
        }
        Ok(pipeline.query_async(&mut self.conn()).await?)
    }

    async fn stamp_region_epochs(&self, regions: &[String], epoch: &str) -> Result<(), StoreError> {
        if regions.is_empty() {
            return Ok(());
        }
        let mut pipeline = redis::pipe();
        for region in regions {
            pipeline.set(self.keys.region_epoch(region), epoch).ignore();
        }
        let () = pipeline.query_async(&mut self.conn()).await?;
        Ok(())
    }
}
