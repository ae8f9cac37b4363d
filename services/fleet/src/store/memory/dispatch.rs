//! [`DispatchStore`] (what routing claims through) in memory.

use super::*;

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
