//! [`DispatchStore`] (what routing claims through) on Redis.

use super::*;

#[tonic::async_trait]
impl DispatchStore for RedisTeamStore {
    async fn teams_near(
        &self,
        region: &str,
        point: Position,
        radius_meters: f64,
    ) -> Result<Vec<TeamSummary>, StoreError> {
        self.watch(region);
        let teams = region_teams(self, region).await?;
        Ok(on_duty_near(&teams, point, radius_meters))
    }

    async fn nearest_available(
        &self,
        region: &str,
        point: Position,
        radius_meters: f64,
        count: usize,
    ) -> Result<Nearest, StoreError> {
        self.watch(region);
        // GEOSEARCH costs as much as the members inside its radius, sorted or not: start
        // small and widen until `count` teams are found or the radius is reached. Redis orders
        // by its own distance over the geohash-rounded position (within a metre of the
        // stored one); the margin covers that, and the exact order is made below.
        let count = count.max(1);
        let mut reach = FIRST_REACH_METERS.min(radius_meters);
        let (found, frontier) = loop {
            let found: Vec<(String, f64)> = geosearch(self.keys.available(region), point, reach)
                .arg("ASC")
                .arg("COUNT")
                .arg(count)
                .arg("WITHDIST")
                .query_async(&mut self.conn())
                .await?;
            if found.len() >= count {
                let last = found.last().map_or(0.0, |(_, distance)| *distance);
                break (found, Some((last - GEO_MARGIN_METERS).max(0.0)));
            }
            if reach >= radius_meters {
                break (found, None);
            }
            reach = (reach * 4.0).min(radius_meters);
        };
        // Only the fields a ranking needs: about half of the hash, and half the reply.
        let keys: Vec<String> = found
            .iter()
            .map(|(id, _)| self.keys.team(region, id))
            .collect();
        let summaries = self
            .read_fields(&keys, &SUMMARY_FIELDS, decode_summary)
            .await?;
        let mut teams = rank_candidates(summaries, point, radius_meters);
        if let Some(frontier) = frontier {
            // Beyond the frontier the order is unknown: what was read there is left out.
            teams.retain(|(_, distance)| *distance < frontier);
        }
        Ok(Nearest { teams, frontier })
    }

    async fn nearest_unavailable(
        &self,
        region: &str,
        point: Position,
        radius_meters: f64,
        count: usize,
    ) -> Result<Vec<(TeamSummary, f64)>, StoreError> {
        // One GEOSEARCH of the region's set of on-duty teams that are not available, then
        // their fields in one pipeline (none when nothing is found): two round trips at most,
        // whatever the number of teams found.
        let found: Vec<String> = geosearch(self.keys.unavailable(region), point, radius_meters)
            .arg("ASC")
            .arg("COUNT")
            .arg(count.max(1))
            .query_async(&mut self.conn())
            .await?;
        let keys: Vec<String> = found.iter().map(|id| self.keys.team(region, id)).collect();
        let summaries = self
            .read_fields(&keys, &SUMMARY_FIELDS, decode_summary)
            .await?;
        let mut teams = rank_placed(summaries, point, radius_meters, is_unavailable);
        teams.truncate(count);
        Ok(teams)
    }

    async fn fleet_team(&self, team_id: &str) -> Result<Option<FleetTeam>, StoreError> {
        Ok(self.get_team(team_id).await?.as_ref().map(FleetTeam::from))
    }

    async fn busy_teams(&self, region: &str) -> Result<Vec<FleetTeam>, StoreError> {
        self.watch(region);
        Ok(busy_of(&region_teams(self, region).await?))
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
            ",2,",
        )
        .await
    }

    async fn claim_to_restore(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Claim, ClaimError> {
        self.claim_from(region, team_id, incident_id, None, now, None, ",1,2,")
            .await
    }

    async fn release(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        now: DateTime<Utc>,
    ) -> Result<ReleaseOutcome, ReleaseError> {
        self.release_team(region, team_id, incident_id, now).await
    }

    async fn release_quietly(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        now: DateTime<Utc>,
    ) -> Result<ReleaseOutcome, ReleaseError> {
        self.announcer.begin_quiet(team_id);
        let outcome = self.release_team(region, team_id, incident_id, now).await;
        let released = match &outcome {
            Ok(ReleaseOutcome::Released(team)) => Some(team.revision),
            _ => None,
        };
        self.announcer.end_quiet(region, team_id, released);
        outcome
    }

    async fn remember_recommendation(
        &self,
        incident_id: &str,
        request: &[u8],
        ttl: Duration,
        _now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let _: () = self
            .conn()
            .set_ex(
                self.keys.recommendation(incident_id),
                request,
                ttl.as_secs().max(1),
            )
            .await?;
        Ok(())
    }

    async fn recommendation(
        &self,
        incident_id: &str,
        _now: DateTime<Utc>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn()
            .get(self.keys.recommendation(incident_id))
            .await?)
    }

    fn subscribe(&self) -> broadcast::Receiver<TeamAvailable> {
        self.announcer.subscribe()
    }
}
