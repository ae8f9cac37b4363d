//! ConfirmAssignment, RestoreAssignment, ReleaseTeam, CancelRouting and GetAssignment: a
//! dispatcher's choice of team, and the end of an assignment.

use super::*;

/// A team chosen by name for an incident (ConfirmAssignment, RestoreAssignment).
#[derive(Clone, Copy)]
struct Chosen<'a> {
    request_id: &'a str,
    fingerprint: &'a str,
    incident_id: &'a str,
    team_id: &'a str,
    source: AssignmentSource,
}

/// What [`Engine::chosen_reads`] found.
enum Found {
    /// The chosen team already holds the incident's ACTIVE assignment.
    Assigned(Assignment),
    /// The incident, free, and the chosen team.
    Free(IncidentRecord, FleetTeam),
}

impl Engine {
    pub(super) async fn replay<R: Message + Default>(
        &self,
        request_id: &str,
        fingerprint: &str,
    ) -> Result<R, RoutingError> {
        self.remembered(request_id, fingerprint)
            .await?
            .ok_or(RoutingError::Contended)
    }

    /// ConfirmAssignment: claim the team a dispatcher chose.
    ///
    /// # Errors
    /// As the contract lists.
    pub async fn confirm_assignment(
        &self,
        request: ConfirmAssignmentRequest,
    ) -> Result<ConfirmAssignmentResponse, RoutingError> {
        check_confirm_assignment(&request)?;
        let fingerprint = fingerprint("ConfirmAssignment", &request);
        if let Some(response) = self.remembered(&request.request_id, &fingerprint).await? {
            return Ok(response);
        }
        let chosen = Chosen {
            request_id: &request.request_id,
            fingerprint: &fingerprint,
            incident_id: &request.incident_id,
            team_id: &request.team_id,
            source: AssignmentSource::Dispatcher,
        };
        self.assign_chosen(&chosen, |assignment| ConfirmAssignmentResponse {
            assignment: Some(assignment),
        })
        .await
    }

    /// RestoreAssignment: give a team back the call whose assignment ended because the live
    /// state was lost, if that call was not given to another team meanwhile.
    ///
    /// # Errors
    /// As the contract lists.
    pub async fn restore_assignment(
        &self,
        request: RestoreAssignmentRequest,
    ) -> Result<RestoreAssignmentResponse, RoutingError> {
        let mut v = Violations::new();
        v.id("request_id", &request.request_id);
        v.id("incident_id", &request.incident_id);
        v.id("team_id", &request.team_id);
        v.finish()?;
        let fingerprint = fingerprint("RestoreAssignment", &request);
        if let Some(response) = self.remembered(&request.request_id, &fingerprint).await? {
            return Ok(response);
        }
        let wrap = |assignment| RestoreAssignmentResponse {
            assignment: Some(assignment),
        };
        let nothing = || RoutingError::NothingToRestore {
            incident_id: request.incident_id.clone(),
            team_id: request.team_id.clone(),
        };
        let latest = self
            .store
            .latest_assignment_of_incident(&request.incident_id)
            .await?;
        let Some(latest) = latest else {
            return Err(match self.store.incident(&request.incident_id).await? {
                Some(_) => nothing(),
                None => RoutingError::IncidentNotFound(request.incident_id.clone()),
            });
        };
        if latest.team_id != request.team_id {
            return Err(nothing());
        }
        if latest.state == i32::from(AssignmentState::Active) {
            let team = self.fleet.fleet_team(&request.team_id).await?;
            if working_on(team.as_ref(), &latest.incident_id) {
                return Ok(wrap(latest));
            }
            if !lost_live_state(team.as_ref(), &latest) {
                return Err(nothing());
            }
            // Lost but not yet reconciled: end it as reconciliation would, then restore.
            let at = team.map(|t| t.live_since);
            let cause = AssignmentEndCause::LiveStateLost;
            match self
                .end_assignment(&latest, None, cause, LIVE_STATE_LOST, at, None, &|_| {
                    Vec::new()
                })
                .await
            {
                Ok(_) | Err(StoreError::NotActive) => {}
                Err(error) => return Err(error.into()),
            }
        } else if end_cause_of(latest.state(), latest.end_cause, &latest.end_reason)
            != AssignmentEndCause::LiveStateLost
        {
            return Err(nothing());
        }
        let chosen = Chosen {
            request_id: &request.request_id,
            fingerprint: &fingerprint,
            incident_id: &request.incident_id,
            team_id: &request.team_id,
            source: AssignmentSource::Restored,
        };
        let restored = self.assign_chosen(&chosen, wrap).await?;
        tracing::warn!(incident_id = %request.incident_id, team_id = %request.team_id, "assignment restored after the live state was lost");
        Ok(restored)
    }

    /// Claims the team named by a dispatcher (ConfirmAssignment) or by the team itself
    /// (RestoreAssignment) for an incident and records the assignment, answering `wrap` of it.
    async fn assign_chosen<R: Message + Default>(
        &self,
        chosen: &Chosen<'_>,
        wrap: impl Fn(Assignment) -> R,
    ) -> Result<R, RoutingError> {
        let Chosen {
            request_id,
            fingerprint,
            team_id,
            ..
        } = *chosen;
        for _ in 0..MAX_ATTEMPTS {
            let (incident, team) = match self.chosen_reads(chosen).await? {
                Found::Assigned(active) => return Ok(wrap(active)),
                Found::Free(incident, team) => (incident, team),
            };
            let now = self.now();
            let fencing_token = self.claim_chosen(chosen, &incident, now).await?;
            // As in `claim_and_record`: the assignment starts once the claim holds.
            let now = now.max(self.now());
            let assignment = self.chosen_assignment(chosen, &incident, team, fencing_token, now)?;
            let response = wrap(assignment.clone());
            let recorded = self
                .record_assignment(
                    &incident,
                    incident.version,
                    &assignment,
                    Some((request_id, fingerprint)),
                    response.encode_to_vec(),
                )
                .await;
            match recorded {
                Ok(()) => return Ok(response),
                Err(error) => {
                    self.undo_claim(&incident.region, team_id, &incident.incident_id)
                        .await;
                    match error {
                        StoreError::VersionConflict | StoreError::IncidentBusy => {}
                        StoreError::TeamBusy => {
                            return Err(RoutingError::TeamNotAvailable(team_id.to_owned()));
                        }
                        StoreError::StaleToken => return Err(RoutingError::ClaimConflict),
                        StoreError::DuplicateRequest => {
                            return self.replay(request_id, fingerprint).await;
                        }
                        other => return Err(other.into()),
                    }
                }
            }
        }
        Err(RoutingError::Contended)
    }

    /// The incident and the chosen team, checked: the incident exists and is not cancelled,
    /// has no other team's ACTIVE assignment (the chosen team's is answered again), and the
    /// team exists in the incident's region.
    async fn chosen_reads(&self, chosen: &Chosen<'_>) -> Result<Found, RoutingError> {
        let Chosen {
            incident_id,
            team_id,
            ..
        } = *chosen;
        let Some(incident) = self.find_incident(incident_id).await? else {
            return Err(RoutingError::IncidentNotFound(incident_id.to_owned()));
        };
        if incident.state == IncidentState::Cancelled {
            return Err(RoutingError::RoutingCancelled(incident_id.to_owned()));
        }
        if let Some(active) = self
            .store
            .active_assignment_of_incident(incident_id)
            .await?
        {
            if active.team_id == team_id {
                return Ok(Found::Assigned(active));
            }
            return Err(RoutingError::IncidentAlreadyAssigned {
                assignment_id: active.assignment_id,
                team_id: active.team_id,
            });
        }
        let Some(team) = self.fleet.fleet_team(team_id).await? else {
            return Err(RoutingError::TeamNotFound(team_id.to_owned()));
        };
        if team.region != incident.region {
            return Err(RoutingError::RegionMismatch {
                team_id: team_id.to_owned(),
                team_region: team.region,
                incident_region: incident.region,
            });
        }
        Ok(Found::Free(incident, team))
    }

    /// Claims the chosen team for the incident (an OFF_DUTY team too when it restores its
    /// call); returns the claim's fencing token.
    async fn claim_chosen(
        &self,
        chosen: &Chosen<'_>,
        incident: &IncidentRecord,
        now: DateTime<Utc>,
    ) -> Result<i64, RoutingError> {
        let team_id = chosen.team_id;
        let how = if chosen.source == AssignmentSource::Restored {
            ClaimFor::Restore
        } else {
            ClaimFor::Call {
                max_position_age: None,
            }
        };
        let claim = self
            .claim_team(&incident.region, team_id, &incident.incident_id, now, how)
            .await?;
        match claim {
            Ok(fencing_token) => Ok(fencing_token),
            Err(Refused::UnknownTeam) => Err(RoutingError::TeamNotFound(team_id.to_owned())),
            Err(Refused::Unavailable) => Err(RoutingError::TeamNotAvailable(team_id.to_owned())),
        }
    }

    /// The ACTIVE assignment of the chosen team, with its distance and ETA from where the
    /// fleet last saw it.
    fn chosen_assignment(
        &self,
        chosen: &Chosen<'_>,
        incident: &IncidentRecord,
        team: FleetTeam,
        fencing_token: i64,
        now: DateTime<Utc>,
    ) -> Result<Assignment, RoutingError> {
        let region = self.region("region", &incident.region)?;
        let snapshot = TeamSnapshot::from(team.snapshot);
        let (distance_meters, eta_seconds) = snapshot.position.map_or((0.0, 0), |p| {
            let estimate = match &self.estimator {
                Some(e) => e.estimate(p.point, incident.location),
                None => region.estimator().estimate(p.point, incident.location),
            };
            (
                estimate.distance_meters,
                i32::try_from(estimate.eta_seconds).unwrap_or(i32::MAX),
            )
        });
        Ok(claim::active_assignment(
            incident,
            chosen.team_id,
            (distance_meters, eta_seconds),
            fencing_token,
            chosen.source,
            now,
        ))
    }

    /// Ends an ACTIVE assignment in the record (and the incident's ASSIGNED state), with its
    /// event. `request` remembers the response. `read` is the incident when the caller read
    /// it with the assignment (the first attempt uses it; a retry reads again). Returns the
    /// ended assignment.
    #[allow(clippy::too_many_arguments)] // the three ends share one write path
    pub(super) async fn end_assignment(
        &self,
        active: &Assignment,
        mut read: Option<Option<IncidentRecord>>,
        cause: AssignmentEndCause,
        reason: &str,
        cleared_at: Option<DateTime<Utc>>,
        request: Option<(&str, &str)>,
        respond: &(dyn Fn(&Assignment) -> Vec<u8> + Send + Sync),
    ) -> Result<Assignment, StoreError> {
        let state = if cause == AssignmentEndCause::Cancelled {
            AssignmentState::Cancelled
        } else {
            AssignmentState::Released
        };
        for _ in 0..MAX_ATTEMPTS {
            // A team that cleared ended its call when it cleared, not when routing recorded
            // it: the team may already have been claimed for its next call in between, and the
            // record's intervals must not overlap. Never before the assignment began.
            let now = cleared_at
                .map_or_else(|| self.now(), |at| at.min(self.now()))
                .max(from_timestamp(active.assigned_at.as_ref()));
            let mut ended = active.clone();
            ended.state = state.into();
            ended.end_time = Some(to_timestamp(now));
            ended.end_reason = reason.to_owned();
            ended.end_cause = cause.into();
            let incident = match read.take() {
                Some(incident) => incident,
                None => self.store.incident(&active.incident_id).await?,
            };
            let incident =
                incident
                    .filter(|i| i.state == IncidentState::Assigned)
                    .map(|mut record| {
                        let expected_version = record.version;
                        record.state = match cause {
                            AssignmentEndCause::Cancelled => IncidentState::Cancelled,
                            // The team may still be on scene: the incident is not queued
                            // again (the queue could send a second team) but waits for a
                            // dispatcher or for its team to restore it.
                            AssignmentEndCause::LiveStateLost => IncidentState::Routed,
                            _ => IncidentState::Released,
                        };
                        record.update_time = now;
                        IncidentWrite {
                            record,
                            expected_version,
                        }
                    });
            let kind = if state == AssignmentState::Cancelled {
                AssignmentEventKind::Cancelled
            } else {
                AssignmentEventKind::Released
            };
            let write = Write {
                region: active.region.clone(),
                audit: None,
                request: request.map(|(request_id, fingerprint)| RequestRecord {
                    request_id: request_id.to_owned(),
                    fingerprint: fingerprint.as_bytes().to_vec(),
                    response: respond(&ended),
                }),
                incident,
                end_assignment: Some(EndAssignment {
                    assignment_id: active.assignment_id.clone(),
                    state,
                    end_time: now,
                    end_reason: reason.to_owned(),
                    end_cause: cause,
                }),
                new_assignment: None,
                events: vec![AssignmentEvent {
                    event_id: String::new(),
                    kind: kind.into(),
                    incident_id: active.incident_id.clone(),
                    cad_system: active.cad_system.clone(),
                    assignment: Some(ended.clone()),
                    queued: None,
                    reason: 0,
                    event_time: Some(to_timestamp(now)),
                    cad_incident_id: active.cad_incident_id.clone(),
                }],
            };
            match self.write(write).await {
                Ok(()) => return Ok(ended),
                Err(StoreError::VersionConflict) => {}
                Err(error) => return Err(error),
            }
        }
        Err(StoreError::VersionConflict)
    }

    /// Frees a team in the fleet after its assignment ended, then offers it to the queue.
    /// The caller has just ended the team's ACTIVE assignment in the record (a team has at
    /// most one), so there is no stale one to look for, as `on_team_available` does. The
    /// release is made quietly (its event is not announced to this replica's queue drain,
    /// since this offers the team itself), so both run in a task of their own that finishes
    /// even when the caller's request is dropped: a team released but never offered would
    /// wait for the periodic queue re-check.
    pub(super) async fn free_team(&self, region: &str, team_id: &str, incident_id: &str) {
        let engine = self.clone();
        let (region, team_id, incident_id) = (
            region.to_owned(),
            team_id.to_owned(),
            incident_id.to_owned(),
        );
        let freeing = tokio::spawn(async move {
            match engine
                .release_claim(&region, &team_id, &incident_id, false)
                .await
            {
                Ok(true) => {
                    if let Err(error) = engine.offer_to_queue(&region, &team_id).await {
                        tracing::warn!(%region, %team_id, error = %error, "queue drain failed; the periodic re-check will retry");
                    }
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%region, %team_id, %error, "could not free a team; reconciliation will");
                }
            }
        });
        if let Err(error) = freeing.await {
            tracing::warn!(%error, "freeing a team stopped; reconciliation will release it");
        }
    }

    /// ReleaseTeam.
    ///
    /// # Errors
    /// As the contract lists.
    pub async fn release_team(
        &self,
        request: ReleaseTeamRequest,
    ) -> Result<ReleaseTeamResponse, RoutingError> {
        check_release_team(&request)?;
        let fingerprint = fingerprint("ReleaseTeam", &request);
        // The remembered response, the assignment and its incident: one read.
        let found = self
            .store
            .lookup_assignment(&request.request_id, &request.assignment_id)
            .await?;
        if let Some(record) = found.request {
            return replayed(&record, &fingerprint);
        }
        let Some(active) = found.assignment else {
            return Err(RoutingError::AssignmentNotFound(
                request.assignment_id.clone(),
            ));
        };
        if active.state != i32::from(AssignmentState::Active) {
            return Err(RoutingError::AssignmentNotActive(
                request.assignment_id.clone(),
            ));
        }
        let reason = if request.reason.is_empty() {
            "released"
        } else {
            request.reason.as_str()
        };
        let respond = |ended: &Assignment| {
            ReleaseTeamResponse {
                assignment: Some(ended.clone()),
            }
            .encode_to_vec()
        };
        let ended = match self
            .end_assignment(
                &active,
                Some(found.incident),
                AssignmentEndCause::Released,
                reason,
                None,
                Some((&request.request_id, &fingerprint)),
                &respond,
            )
            .await
        {
            Ok(ended) => ended,
            Err(StoreError::NotActive) => {
                return Err(RoutingError::AssignmentNotActive(
                    request.assignment_id.clone(),
                ));
            }
            Err(StoreError::DuplicateRequest) => {
                return self.replay(&request.request_id, &fingerprint).await;
            }
            Err(error) => return Err(error.into()),
        };
        self.free_team(&active.region, &active.team_id, &active.incident_id)
            .await;
        Ok(ReleaseTeamResponse {
            assignment: Some(ended),
        })
    }

    /// CancelRouting.
    ///
    /// # Errors
    /// As the contract lists.
    pub async fn cancel_routing(
        &self,
        request: CancelRoutingRequest,
    ) -> Result<CancelRoutingResponse, RoutingError> {
        check_cancel_routing(&request)?;
        let fingerprint = fingerprint("CancelRouting", &request);
        if let Some(response) = self.remembered(&request.request_id, &fingerprint).await? {
            return Ok(response);
        }
        let reason = if request.reason.is_empty() {
            "cancelled"
        } else {
            request.reason.as_str()
        };
        for _ in 0..MAX_ATTEMPTS {
            let now = self.now();
            let Some(incident) = self.find_incident(&request.incident_id).await? else {
                return Err(RoutingError::IncidentNotFound(request.incident_id.clone()));
            };
            let active = self
                .store
                .active_assignment_of_incident(&request.incident_id)
                .await?;
            let dequeued =
                (incident.state == IncidentState::Queued).then(|| queued_entry(&incident));
            let cancelled = active.as_ref().map(|a| {
                let mut ended = a.clone();
                ended.state = AssignmentState::Cancelled.into();
                ended.end_time = Some(to_timestamp(now));
                ended.end_reason = reason.to_owned();
                ended.end_cause = AssignmentEndCause::Cancelled.into();
                ended
            });
            let response = CancelRoutingResponse {
                assignment: cancelled.clone(),
                dequeued: dequeued.clone(),
            };
            let mut record = incident.clone();
            record.state = IncidentState::Cancelled;
            record.update_time = now;
            let events = if cancelled.is_some() || dequeued.is_some() {
                vec![AssignmentEvent {
                    event_id: String::new(),
                    kind: AssignmentEventKind::Cancelled.into(),
                    incident_id: incident.incident_id.clone(),
                    cad_system: incident.cad_system.clone(),
                    assignment: cancelled.clone(),
                    queued: dequeued.clone(),
                    reason: 0,
                    event_time: Some(to_timestamp(now)),
                    cad_incident_id: incident.cad_incident_id.clone(),
                }]
            } else {
                Vec::new()
            };
            let write = Write {
                region: incident.region.clone(),
                audit: None,
                request: Some(RequestRecord {
                    request_id: request.request_id.clone(),
                    fingerprint: fingerprint.clone().into_bytes(),
                    response: response.encode_to_vec(),
                }),
                incident: Some(IncidentWrite {
                    record,
                    expected_version: incident.version,
                }),
                end_assignment: active.as_ref().map(|a| EndAssignment {
                    assignment_id: a.assignment_id.clone(),
                    state: AssignmentState::Cancelled,
                    end_time: now,
                    end_reason: reason.to_owned(),
                    end_cause: AssignmentEndCause::Cancelled,
                }),
                new_assignment: None,
                events,
            };
            match self.write(write).await {
                Ok(()) => {
                    if let Some(a) = &active {
                        self.free_team(&a.region, &a.team_id, &a.incident_id).await;
                    }
                    return Ok(response);
                }
                Err(StoreError::VersionConflict | StoreError::NotActive) => {}
                Err(StoreError::DuplicateRequest) => {
                    return self.replay(&request.request_id, &fingerprint).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(RoutingError::Contended)
    }

    /// GetAssignment.
    ///
    /// # Errors
    /// INVALID_ARGUMENT, ASSIGNMENT_NOT_FOUND, or the record unavailable.
    pub async fn get_assignment(
        &self,
        request: GetAssignmentRequest,
    ) -> Result<Assignment, RoutingError> {
        check_get_assignment(&request)?;
        self.store
            .assignment(&request.assignment_id)
            .await?
            .ok_or(RoutingError::AssignmentNotFound(request.assignment_id))
    }
}
