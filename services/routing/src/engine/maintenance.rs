//! The upkeep every replica runs: escalation of calls waiting too long, reconciliation of
//! the record with the fleet, and the sampled queue metrics.

use super::*;

impl Engine {
    /// Escalates every queued incident whose escalate_time has come (by this engine's clock),
    /// each exactly once across replicas. Returns how many this call escalated.
    ///
    /// # Errors
    /// When the record is unreachable.
    pub async fn escalate_due(&self) -> Result<usize, RoutingError> {
        let now = self.now();
        let mut escalated = 0;
        loop {
            let due = self.store.due_escalations(now, 100).await?;
            if due.is_empty() {
                return Ok(escalated);
            }
            let mut progressed = false;
            for incident in due {
                let queued = queued_entry(&incident);
                let mut record = incident.clone();
                record.state = IncidentState::Escalated;
                record.update_time = now;
                let write = Write {
                    region: incident.region.clone(),
                    incident: Some(IncidentWrite {
                        record,
                        expected_version: incident.version,
                    }),
                    events: vec![AssignmentEvent {
                        event_id: String::new(),
                        kind: AssignmentEventKind::Escalated.into(),
                        incident_id: incident.incident_id.clone(),
                        cad_system: incident.cad_system.clone(),
                        assignment: None,
                        queued: Some(queued),
                        reason: incident.unserved_reason,
                        event_time: Some(to_timestamp(now)),
                        cad_incident_id: incident.cad_incident_id.clone(),
                    }],
                    ..Write::default()
                };
                match self.write(write).await {
                    Ok(()) => {
                        escalated += 1;
                        progressed = true;
                        tracing::warn!(incident_id = %incident.incident_id, region = %incident.region, "queued incident escalated");
                        crate::metrics::escalated(&incident.region);
                    }
                    // Another replica (or a call) changed it first; it is re-read next round.
                    Err(StoreError::VersionConflict) => progressed = true,
                    Err(error) => return Err(error.into()),
                }
            }
            if !progressed {
                return Ok(escalated);
            }
        }
    }

    /// Compares the record with the fleet in `region` and repairs what a crash or a lost
    /// Redis write left behind, for states older than `grace`:
    /// - a busy team whose incident has no ACTIVE assignment of that team in the record (a
    ///   replica died between claiming and recording) is released;
    /// - an ACTIVE assignment whose team is no longer busy on its incident (the team cleared,
    ///   or the fleet lost the claim) is ended as RELEASED ("team cleared"), cause
    ///   TEAM_CLEARED.
    ///
    /// Returns (teams released, assignments ended).
    ///
    /// # Errors
    /// When the record or the fleet is unreachable.
    pub async fn reconcile(
        &self,
        region: &str,
        grace: Duration,
    ) -> Result<(usize, usize), RoutingError> {
        let now = self.now();
        let grace = duration(grace);
        let mut released = 0;
        for team in self.fleet.busy_teams(region).await? {
            let FleetTeam {
                snapshot,
                incident_id,
                status_since,
                ..
            } = team;
            let Some(incident_id) = incident_id else {
                continue;
            };
            if now.signed_duration_since(status_since) < grace {
                continue;
            }
            let recorded = self
                .store
                .active_assignment_of_team(&snapshot.team_id)
                .await?;
            if recorded.is_some_and(|a| a.incident_id == incident_id) {
                continue;
            }
            if self
                .release_claim(region, &snapshot.team_id, &incident_id, true)
                .await?
            {
                tracing::warn!(%region, team_id = %snapshot.team_id, %incident_id, "released a team claimed without a recorded assignment");
                released += 1;
            }
        }
        let mut ended = 0;
        for active in self.store.active_assignments(region).await? {
            if now.signed_duration_since(from_timestamp(active.assigned_at.as_ref())) < grace {
                continue;
            }
            let team = self.fleet.fleet_team(&active.team_id).await?;
            if working_on(team.as_ref(), &active.incident_id) {
                continue;
            }
            // TEAM_CLEARED when the team's live record held the claim and the team left the
            // call (a team seen busy on another call left this one no later than it took that
            // one; otherwise, when it last changed status); LIVE_STATE_LOST when its live
            // record was rebuilt after the assignment began (Redis lost its data), never the
            // team clearing, which it did not.
            let (cause, reason, at) = interrupted(team.as_ref(), &active);
            match self
                .end_assignment(&active, None, cause, reason, at, None, &|_| Vec::new())
                .await
            {
                Ok(_) => {
                    tracing::warn!(%region, team_id = %active.team_id, incident_id = %active.incident_id, %reason, "ended an assignment whose team is no longer on the incident");
                    ended += 1;
                }
                Err(StoreError::NotActive) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok((released, ended))
    }

    /// Every incident queued in `region`, in serving order (for the queue gauges).
    pub(super) async fn queued(&self, region: &str) -> Result<Vec<IncidentRecord>, RoutingError> {
        let mut all: Vec<IncidentRecord> = Vec::new();
        loop {
            let cursor = all.last().map(|last| QueueCursor {
                priority: last.priority,
                queued_time: last.queued_time.unwrap_or_default(),
                incident_id: last.incident_id.clone(),
            });
            let page = self.store.queue(region, cursor.as_ref(), 500).await?;
            let full = page.len() == 500;
            all.extend(page);
            if !full {
                return Ok(all);
            }
        }
    }

    /// One round of upkeep: escalations, then for each region the record knows (and each
    /// configured one) a queue re-check and reconciliation, then pruning of events and
    /// remembered responses older than the retention window.
    ///
    /// # Errors
    /// When the record or the fleet is unreachable.
    pub async fn maintain(&self) -> Result<(), RoutingError> {
        // Events nobody is watching still get their numbers.
        self.store.sequence_events().await?;
        self.escalate_due().await?;
        let mut regions = self.store.regions().await?;
        regions.extend(self.settings.regions.keys().cloned());
        regions.sort();
        regions.dedup();
        // The grace covers a replica's own work between a claim and its record (wall time),
        // so it lasts as long on the wall clock at any clock speed.
        let grace = self
            .clock
            .elapsed_in(Duration::from_secs(self.settings.reconcile_grace_seconds));
        let mut waiting = Vec::new();
        for region in regions {
            self.recheck_queue(&region).await?;
            self.reconcile(&region, grace).await?;
            waiting.extend(self.queued(&region).await?);
        }
        crate::metrics::queue(&waiting, self.now());
        let (pending, oldest) = self.store.pending_events().await?;
        crate::metrics::sequencer(pending, oldest, self.now());
        let retention = Duration::from_secs(self.settings.event_retention_hours * 3_600);
        self.store.prune(self.now() - duration(retention)).await?;
        Ok(())
    }
}
