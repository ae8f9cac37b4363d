//! The queue: ListQueue, and serving queued calls when a team becomes free.

use super::*;

impl Engine {
    /// ListQueue.
    ///
    /// # Errors
    /// INVALID_ARGUMENT (INVALID_FIELD, INVALID_PAGE_TOKEN, REGION_UNKNOWN) or the record
    /// unavailable.
    pub async fn list_queue(
        &self,
        request: ListQueueRequest,
    ) -> Result<ListQueueResponse, RoutingError> {
        let size = check_list_queue(&request)?;
        self.region("region", &request.region)?;
        let scope = format!("ListQueue region={}", request.region);
        let cursor: Option<QueueCursor> =
            self.page_tokens
                .decode("page_token", &scope, &request.page_token)?;
        let mut page = self
            .store
            .queue(&request.region, cursor.as_ref(), size + 1)
            .await?;
        let more = page.len() > size;
        page.truncate(size);
        let next_page_token = match page.last() {
            Some(last) if more => self.page_tokens.encode(&scope, &QueueCursor::after(last)),
            _ => String::new(),
        };
        Ok(ListQueueResponse {
            queued_incidents: page.iter().map(queued_entry).collect(),
            next_page_token,
        })
    }

    /// A team became AVAILABLE: end an ACTIVE assignment it still has in the record (it
    /// cleared), then assign it the first queued incident of its region that it suits.
    /// Returns the assignment made, if any.
    ///
    /// # Errors
    /// When the record or the fleet is unreachable.
    pub async fn on_team_available(
        &self,
        region: &str,
        team_id: &str,
    ) -> Result<Option<Assignment>, RoutingError> {
        // The record is read before the fleet: a team seen not working the incident of its
        // ACTIVE assignment after that assignment was recorded has left it (the reverse
        // order could end an assignment recorded just after a stale fleet read).
        if let Some(stale) = self.store.active_assignment_of_team(team_id).await? {
            let team = self.fleet.fleet_team(team_id).await?;
            if working_on(team.as_ref(), &stale.incident_id) {
                return Ok(None);
            }
            // A team that comes back AVAILABLE after Redis lost the live state did not clear
            // its call: that assignment ends LIVE_STATE_LOST.
            let (cause, reason, at) = interrupted(team.as_ref(), &stale);
            match self
                .end_assignment(&stale, None, cause, reason, at, None, &|_| Vec::new())
                .await
            {
                Ok(_) | Err(StoreError::NotActive) => {}
                Err(error) => return Err(error.into()),
            }
        }
        self.offer_to_queue(region, team_id).await
    }

    /// Assigns a team the first queued incident of its region that it suits, if the team
    /// is AVAILABLE. The queue is read first, so when it is empty (the usual case) that one
    /// read is all this costs.
    pub(super) async fn offer_to_queue(
        &self,
        region: &str,
        team_id: &str,
    ) -> Result<Option<Assignment>, RoutingError> {
        let Some(settings) = self.settings.region(region) else {
            return Ok(None);
        };
        let mut page = self.store.queue(region, None, 100).await?;
        if page.is_empty() {
            return Ok(None);
        }
        let Some(team) = self.fleet.fleet_team(team_id).await? else {
            return Ok(None);
        };
        if team.snapshot.status != TeamStatus::Available || team.region != region {
            return Ok(None);
        }
        let snapshot = TeamSnapshot::from(team.snapshot);
        loop {
            let Some(last) = page.last() else {
                return Ok(None);
            };
            let after = Some(QueueCursor::after(last));
            for incident in &page {
                let teams = std::slice::from_ref(&snapshot);
                match self.assign_queued(teams, &settings, incident).await {
                    Ok(Some(Attempt::Done(assignment))) => {
                        tracing::info!(incident_id = %assignment.incident_id, team_id = %assignment.team_id, %region, "queued incident assigned");
                        return Ok(Some(assignment));
                    }
                    // The team was taken (or its claim refused): nothing more to do for it.
                    Ok(Some(Attempt::NoTeam)) | Err(RoutingError::ClaimConflict) => {
                        return Ok(None);
                    }
                    // The team does not suit it, or the incident changed (another replica
                    // took it): try the next one.
                    Ok(None | Some(Attempt::Retry)) => {}
                    Err(error) => return Err(error),
                }
            }
            page = self.store.queue(region, after.as_ref(), 100).await?;
        }
    }

    /// Re-checks a region's queue: each queued incident, in serving order, gets the best
    /// eligible team if one is free now.
    ///
    /// # Errors
    /// When the record or the fleet is unreachable.
    pub async fn recheck_queue(&self, region: &str) -> Result<usize, RoutingError> {
        let Some(settings) = self.settings.region(region) else {
            return Ok(0);
        };
        let mut assigned = 0;
        let page = self.store.queue(region, None, 500).await?;
        if page.is_empty() {
            return Ok(0);
        }
        // One fleet read for the whole page; claims re-check every team atomically.
        let mut teams: Vec<TeamSnapshot> = self
            .fleet
            .teams_near(region, position(page[0].location), f64::INFINITY)
            .await?
            .into_iter()
            .map(TeamSnapshot::from)
            .collect();
        for incident in &page {
            if !teams.iter().any(|t| t.status == TeamStatus::Available) {
                break;
            }
            match self.assign_queued(&teams, &settings, incident).await {
                Ok(Some(Attempt::Done(assignment))) => {
                    assigned += 1;
                    if let Some(taken) = teams.iter_mut().find(|t| t.team_id == assignment.team_id)
                    {
                        taken.status = TeamStatus::Dispatched;
                    }
                }
                Ok(None | Some(Attempt::Retry | Attempt::NoTeam))
                | Err(RoutingError::ClaimConflict) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(assigned)
    }

    /// Ranks `teams` for a queued incident and, when one is eligible, claims the best and
    /// records the assignment (source QUEUE). None when no team is eligible.
    async fn assign_queued(
        &self,
        teams: &[TeamSnapshot],
        settings: &RegionSettings,
        incident: &IncidentRecord,
    ) -> Result<Option<Attempt<Assignment>>, RoutingError> {
        let mut ranking = self.rank_teams(
            teams,
            settings,
            incident.location,
            &incident.required_capabilities,
            &incident.preferred_capabilities,
            incident.expected_duration_seconds,
            self.now(),
        );
        if ranking.eligible().next().is_none() {
            return Ok(None);
        }
        self.claim_and_record(
            &mut ranking,
            incident,
            incident.version,
            AssignmentSource::Queue,
            settings,
            None,
            &|_, _| Vec::new(),
        )
        .await
        .map(Some)
    }
}
