//! Claiming a ranked team in the fleet and recording the assignment behind its fencing token
//! (AssignTeam's and the queue's), and undoing a claim the record refused.

use super::*;

impl Engine {
    /// Undoes a claim after the record refused or failed (best effort: reconciliation
    /// repairs what this cannot).
    pub(super) async fn undo_claim(&self, region: &str, team_id: &str, incident_id: &str) {
        if let Err(error) = self.release_claim(region, team_id, incident_id, true).await {
            tracing::warn!(%region, %team_id, %incident_id, %error, "could not undo a claim; reconciliation will release the team");
        }
    }

    /// Claims the best eligible team of `ranking` for the incident and records the
    /// assignment, trying the next team when one was lost to another call.
    /// `respond` builds the remembered response (None for the queue's own assignments).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn claim_and_record(
        &self,
        ranking: &mut Ranking,
        record: &IncidentRecord,
        expected_version: i64,
        source: AssignmentSource,
        region: &RegionSettings,
        request: Option<(&str, &str)>,
        respond: &(dyn Fn(&Ranking, &Assignment) -> Vec<u8> + Send + Sync),
    ) -> Result<Attempt<Assignment>, RoutingError> {
        loop {
            let Some(best) = ranking.eligible().next().cloned() else {
                // A partial ranking that ran out of teams (lost to other calls) says nothing
                // of the rest of the region: rank again.
                return Ok(if ranking.horizon.is_some() {
                    Attempt::Retry
                } else {
                    Attempt::NoTeam
                });
            };
            if !ranking.settled(&best) {
                return Ok(Attempt::Retry);
            }
            let now = self.now();
            let claim = self
                .claim_team(
                    &record.region,
                    &best.team_id,
                    &record.incident_id,
                    now,
                    ClaimFor::Call {
                        max_position_age: Some(region.staleness_limit()),
                    },
                )
                .await?;
            let Ok(fencing_token) = claim else {
                ranking.mark_claimed_by_another_call(&best.team_id);
                continue;
            };
            // The assignment starts once the claim is known to hold, not when it was sent: a
            // claim can wait behind a busy Redis, and the team's previous call may have ended
            // (and been freed) in the meantime. Both ends of every interval are then read after
            // the Redis change that bounds them, so one team's intervals never overlap.
            let now = now.max(self.now());
            let eta_seconds = i32::try_from(best.eta_seconds).unwrap_or(i32::MAX);
            let assignment = active_assignment(
                record,
                &best.team_id,
                (best.distance_meters, eta_seconds),
                fencing_token,
                source,
                now,
            );
            match self
                .record_assignment(
                    record,
                    expected_version,
                    &assignment,
                    request,
                    respond(ranking, &assignment),
                )
                .await
            {
                Ok(()) => {
                    crate::metrics::assigned(&assignment);
                    return Ok(Attempt::Done(assignment));
                }
                Err(error) => {
                    self.undo_claim(&record.region, &best.team_id, &record.incident_id)
                        .await;
                    match error {
                        StoreError::TeamBusy => {
                            crate::metrics::claim_refused(&record.region, "TEAM_BUSY");
                            ranking.mark_claimed_by_another_call(&best.team_id);
                        }
                        StoreError::VersionConflict | StoreError::IncidentBusy => {
                            return Ok(Attempt::Retry);
                        }
                        StoreError::StaleToken => {
                            crate::metrics::claim_refused(&record.region, "STALE_FENCING_TOKEN");
                            return Err(RoutingError::ClaimConflict);
                        }
                        other => return Err(other.into()),
                    }
                }
            }
        }
    }

    pub(super) async fn record_assignment(
        &self,
        record: &IncidentRecord,
        expected_version: i64,
        assignment: &Assignment,
        request: Option<(&str, &str)>,
        response: Vec<u8>,
    ) -> Result<(), StoreError> {
        let now = from_timestamp(assignment.assigned_at.as_ref());
        let mut incident = record.clone();
        incident.state = IncidentState::Assigned;
        incident.unserved_reason = 0;
        incident.update_time = now;
        self.write(Write {
            region: record.region.clone(),
            audit: None,
            request: request.map(|(request_id, fingerprint)| RequestRecord {
                request_id: request_id.to_owned(),
                fingerprint: fingerprint.as_bytes().to_vec(),
                response,
            }),
            incident: Some(IncidentWrite {
                record: incident,
                expected_version,
            }),
            end_assignment: None,
            new_assignment: Some(assignment.clone()),
            events: vec![AssignmentEvent {
                event_id: String::new(),
                kind: AssignmentEventKind::Assigned.into(),
                incident_id: record.incident_id.clone(),
                cad_system: record.cad_system.clone(),
                assignment: Some(assignment.clone()),
                queued: None,
                reason: 0,
                event_time: Some(to_timestamp(now)),
                cad_incident_id: record.cad_incident_id.clone(),
            }],
        })
        .await
    }
}

/// A new ACTIVE assignment of `team_id` to the incident of `record`, claimed with
/// `fencing_token` at `now`, `(distance in meters, ETA in seconds)` away.
pub(super) fn active_assignment(
    record: &IncidentRecord,
    team_id: &str,
    (distance_meters, eta_seconds): (f64, i32),
    fencing_token: i64,
    source: AssignmentSource,
    now: DateTime<Utc>,
) -> Assignment {
    Assignment {
        assignment_id: uuid::Uuid::now_v7().to_string(),
        incident_id: record.incident_id.clone(),
        team_id: team_id.to_owned(),
        region: record.region.clone(),
        distance_meters,
        eta_seconds,
        assigned_at: Some(to_timestamp(now)),
        fencing_token,
        state: AssignmentState::Active.into(),
        source: source.into(),
        cad_system: record.cad_system.clone(),
        end_time: None,
        end_reason: String::new(),
        end_cause: 0,
        cad_incident_id: record.cad_incident_id.clone(),
    }
}
