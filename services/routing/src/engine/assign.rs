//! AssignTeam: ranking a region's teams for a call, claiming the best one and recording the
//! assignment (or queueing the call), and the texts of its answer.

use super::*;

/// The queue entry of a queued incident.
#[must_use]
pub fn queued_entry(record: &IncidentRecord) -> QueuedIncident {
    QueuedIncident {
        incident_id: record.incident_id.clone(),
        region: record.region.clone(),
        priority: record.priority,
        required_capabilities: record.required_capabilities.clone(),
        preferred_capabilities: record.preferred_capabilities.clone(),
        location: Some(record.location),
        queued_time: record.queued_time.map(timestamp),
        escalate_time: record.escalate_time.map(timestamp),
        reason: record.unserved_reason,
        cad_system: record.cad_system.clone(),
        cad_incident_id: record.cad_incident_id.clone(),
    }
}

pub(super) fn unserved_text(reason: UnservedReason) -> &'static str {
    match reason {
        UnservedReason::NoTeamsInRegion => "no team of the region is on duty",
        UnservedReason::MissingCapability => "no on-duty team has every required capability",
        UnservedReason::AllBusy => "every capable on-duty team is busy",
        UnservedReason::AllPositionsStale => {
            "every free capable team's position is missing or stale"
        }
        UnservedReason::NoTeamInRange => "every free capable team is out of range",
        UnservedReason::ShiftEnding => {
            "the remaining teams end their shift before the call could finish"
        }
        UnservedReason::OutsideProgramHours => "the program is not operating now",
        // Intake's reasons: routing never ranks its way to these.
        UnservedReason::RoutingRefused
        | UnservedReason::ReviewTimeout
        | UnservedReason::RecommendationExpired
        | UnservedReason::Unspecified => "no eligible team",
    }
}

pub(super) fn candidates(ranking: &Ranking) -> Vec<Candidate> {
    ranking
        .candidates
        .iter()
        .take(MAX_CANDIDATES)
        .zip(1..)
        .map(|(team, position)| Candidate {
            team_id: team.team_id.clone(),
            display_name: team.display_name.clone(),
            rank: position,
            eligible: team.eligible(),
            exclusion_reason: team.exclusion().map_or(0, |r| r as i32),
            distance_meters: team.distance_meters,
            eta_seconds: i32::try_from(team.eta_seconds).unwrap_or(i32::MAX),
            matched_preferred_capabilities: team.matched_preferred.clone(),
            rationale: team.rationale.clone(),
        })
        .collect()
}

/// How far from the incident a team may be and still arrive no later than `best`: the
/// smallest distance (to a meter) beyond which the estimator's lower bound of the ETA exceeds
/// `best`'s, and at most `limit`. With the great-circle estimator that is `best`'s own
/// distance, give or take the rounding of ETAs to seconds; an estimator without a bound gets
/// `limit`.
pub(super) fn nearer_reach(estimator: &dyn EtaEstimator, best: &RankedTeam, limit: f64) -> f64 {
    let slower = |distance: f64| {
        estimator
            .min_eta_beyond(distance)
            .is_some_and(|eta| eta > best.eta_seconds)
    };
    if !slower(limit) {
        return limit;
    }
    // Nothing at `best`'s own distance is slower than `best`, by the bound's definition.
    let (mut near, mut far) = (best.distance_meters.min(limit), limit);
    while far - near > 1.0 {
        let middle = f64::midpoint(near, far);
        if slower(middle) {
            far = middle;
        } else {
            near = middle;
        }
    }
    far
}

pub(super) fn minutes(seconds: u32) -> String {
    if seconds < 90 {
        format!("{seconds} s")
    } else {
        format!("{} min", (seconds + 30) / 60)
    }
}

/// The rationale of an assignment: the chosen team, and the nearest excluded team that was
/// faster, if any.
pub(super) fn assigned_rationale(ranking: &Ranking, team_id: &str) -> String {
    let Some(chosen) = ranking.candidates.iter().find(|t| t.team_id == team_id) else {
        return format!("assigned {team_id}");
    };
    let mut text = format!(
        "assigned {} (ETA {})",
        chosen.display_name,
        minutes(chosen.eta_seconds)
    );
    if let Some(nearer) = ranking.candidates.iter().find(|t| {
        !t.eligible()
            && t.exclusion() != Some(ExclusionReason::NoPosition)
            && t.eta_seconds < chosen.eta_seconds
    }) {
        text.push_str(&format!(
            "; {} was nearer but {}",
            nearer.display_name,
            nearer.rationale.trim_start_matches("excluded: ")
        ));
    }
    text
}

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn rank_incident(
        &self,
        region: &RegionSettings,
        region_name: &str,
        location: GeoPoint,
        required: &[String],
        preferred: &[String],
        expected: Option<i32>,
        now: DateTime<Utc>,
    ) -> Result<Ranking, RoutingError> {
        let default = region.estimator();
        let estimator: &dyn EtaEstimator = self.estimator.as_deref().unwrap_or(&default);
        // The nearest AVAILABLE teams first, more of them while the best eligible one's
        // place is not certain; the whole region when none of them can take the call (then
        // busy and out-of-range teams matter: for the candidates and the unserved reason).
        let mut count = FIRST_READ;
        while count <= MAX_READ {
            let nearest = self
                .fleet
                .nearest_available(
                    region_name,
                    position(location),
                    region.max_distance_meters,
                    count,
                )
                .await?;
            let nearest_teams: Vec<TeamSnapshot> = nearest
                .teams
                .into_iter()
                .map(|(team, _)| team.into())
                .collect();
            let horizon = match nearest.frontier {
                None => None,
                Some(frontier) => match estimator.min_eta_beyond(frontier) {
                    Some(horizon) => Some(horizon),
                    None => break,
                },
            };
            let mut ranking = self.rank_teams(
                &nearest_teams,
                region,
                location,
                required,
                preferred,
                expected,
                now,
            );
            ranking.horizon = horizon;
            let best_settled = ranking.eligible().next().map(|best| ranking.settled(best));
            match best_settled {
                Some(true) => {
                    // The dispatcher must see why every nearer team lost, busy ones too, which
                    // the read of AVAILABLE teams never sees: read the on-duty teams that are
                    // not available as far as the best team's ETA reaches (never past the
                    // horizon's distance) and rank them with the rest. They are all excluded,
                    // so the order of the eligible teams stays as it is.
                    let limit = nearest.frontier.unwrap_or(region.max_distance_meters);
                    let reach = ranking
                        .eligible()
                        .next()
                        .map_or(limit, |best| nearer_reach(estimator, best, limit));
                    let unavailable = self
                        .fleet
                        .nearest_unavailable(region_name, position(location), reach, MAX_CANDIDATES)
                        .await?;
                    if unavailable.is_empty() {
                        return Ok(ranking);
                    }
                    let mut teams = nearest_teams;
                    for team in unavailable
                        .into_iter()
                        .map(|(team, _)| TeamSnapshot::from(team))
                    {
                        if !teams.iter().any(|t| t.team_id == team.team_id) {
                            teams.push(team);
                        }
                    }
                    let mut ranking = self
                        .rank_teams(&teams, region, location, required, preferred, expected, now);
                    ranking.horizon = horizon;
                    return Ok(ranking);
                }
                None if horizon.is_none() => break,
                _ => {}
            }
            count *= 4;
        }
        let teams: Vec<TeamSnapshot> = self
            .fleet
            .teams_near(region_name, position(location), f64::INFINITY)
            .await?
            .into_iter()
            .map(TeamSnapshot::from)
            .collect();
        Ok(self.rank_teams(&teams, region, location, required, preferred, expected, now))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn rank_teams(
        &self,
        teams: &[TeamSnapshot],
        region: &RegionSettings,
        location: GeoPoint,
        required: &[String],
        preferred: &[String],
        expected: Option<i32>,
        now: DateTime<Utc>,
    ) -> Ranking {
        let input = RankInput {
            location,
            required,
            preferred,
            expected_duration_seconds: expected
                .and_then(|e| u32::try_from(e).ok())
                .unwrap_or(region.default_expected_duration_seconds),
            now,
        };
        match &self.estimator {
            Some(estimator) => rank(teams, &input, region, estimator.as_ref()),
            None => rank(teams, &input, region, &region.estimator()),
        }
    }

    /// The recorded incident, or else one that was only recommended (version 0: writing it
    /// inserts it).
    pub(super) async fn find_incident(
        &self,
        incident_id: &str,
    ) -> Result<Option<IncidentRecord>, RoutingError> {
        if let Some(incident) = self.store.incident(incident_id).await? {
            return Ok(Some(incident));
        }
        let Some(bytes) = self.fleet.recommendation(incident_id, self.now()).await? else {
            return Ok(None);
        };
        let request = AssignTeamRequest::decode(bytes.as_slice())
            .map_err(|e| RoutingError::Store(StoreError::Backend(Box::new(e))))?;
        let params = self.validate_assign(&request)?;
        Ok(Some(params.routed(0, self.now())))
    }

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
            let assignment = Assignment {
                assignment_id: uuid::Uuid::now_v7().to_string(),
                incident_id: record.incident_id.clone(),
                team_id: best.team_id.clone(),
                region: record.region.clone(),
                distance_meters: best.distance_meters,
                eta_seconds: i32::try_from(best.eta_seconds).unwrap_or(i32::MAX),
                assigned_at: Some(to_timestamp(now)),
                fencing_token,
                state: AssignmentState::Active.into(),
                source: source.into(),
                cad_system: record.cad_system.clone(),
                end_time: None,
                end_reason: String::new(),
                end_cause: 0,
                cad_incident_id: record.cad_incident_id.clone(),
            };
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

    pub(super) fn validate_assign(
        &self,
        request: &AssignTeamRequest,
    ) -> Result<Params, RoutingError> {
        let params = check_assign_team(request)?;
        if !request.region.is_empty() {
            self.region("region", &request.region)?;
        }
        Ok(params)
    }

    /// AssignTeam: rank, then claim (AUTO_ASSIGN) or only rank (RECOMMEND); queue when no
    /// team is eligible.
    ///
    /// # Errors
    /// As the contract lists.
    pub async fn assign_team(
        &self,
        request: AssignTeamRequest,
    ) -> Result<AssignTeamResponse, RoutingError> {
        let params = self.validate_assign(&request)?;
        let fingerprint = fingerprint("AssignTeam", &request);
        let region = self.region("region", &params.region)?;
        for _ in 0..MAX_ATTEMPTS {
            let now = self.now();
            // The record and the fleet are independent reads: both at once.
            let (found, ranking) = tokio::join!(
                self.store.lookup(&request.request_id, &params.incident_id),
                self.rank_incident(
                    &region,
                    &params.region,
                    params.location,
                    &params.required,
                    &params.preferred,
                    params.expected_duration_seconds,
                    now,
                )
            );
            let found = found?;
            if let Some(record) = found.request {
                return replayed(&record, &fingerprint);
            }
            let existing = found.incident;
            if let Some(active) = found.assignment {
                return Err(RoutingError::IncidentAlreadyAssigned {
                    assignment_id: active.assignment_id,
                    team_id: active.team_id,
                });
            }
            let expected_version = existing.as_ref().map_or(0, |i| i.version);
            let was_queued = existing
                .as_ref()
                .filter(|i| i.state == IncidentState::Queued)
                .and_then(|i| i.queued_time);
            let mut record = params.routed(expected_version, now);
            // Only the first AssignTeam of an incident sets its CAD incident number.
            if let Some(existing) = &existing {
                record.cad_incident_id.clone_from(&existing.cad_incident_id);
            }
            let mut ranking = ranking?;
            if params.recommend {
                if let Some(best) = ranking.eligible().next() {
                    let eligible = ranking.eligible().count();
                    let response = AssignTeamResponse {
                        outcome: AssignmentOutcome::Recommended.into(),
                        assignment: None,
                        queued: None,
                        candidates: candidates(&ranking),
                        unserved_reason: 0,
                        rationale: format!(
                            "recommended {} (ETA {}), the best of {eligible} eligible teams",
                            best.display_name,
                            minutes(best.eta_seconds)
                        ),
                    };
                    if expected_version == 0 {
                        // A first recommendation claims nothing and records nothing: the
                        // request is remembered beside the teams' live state, where
                        // ConfirmAssignment and CancelRouting on any replica find it. A
                        // retry ranks again.
                        self.fleet
                            .remember_recommendation(
                                &params.incident_id,
                                &request.encode_to_vec(),
                                RECOMMENDATION_TTL,
                                self.now(),
                            )
                            .await?;
                        return Ok(response);
                    }
                    let write = Write {
                        region: params.region.clone(),
                        request: Some(RequestRecord {
                            request_id: request.request_id.clone(),
                            fingerprint: fingerprint.clone().into_bytes(),
                            response: response.encode_to_vec(),
                        }),
                        incident: Some(IncidentWrite {
                            record,
                            expected_version,
                        }),
                        ..Write::default()
                    };
                    match self.write(write).await {
                        Ok(()) => return Ok(response),
                        Err(StoreError::VersionConflict) => continue,
                        Err(StoreError::DuplicateRequest) => {
                            return self.replay(&request.request_id, &fingerprint).await;
                        }
                        Err(error) => return Err(error.into()),
                    }
                }
            } else {
                let respond = |ranking: &Ranking, assignment: &Assignment| {
                    AssignTeamResponse {
                        outcome: AssignmentOutcome::Assigned.into(),
                        assignment: Some(assignment.clone()),
                        queued: None,
                        candidates: candidates(ranking),
                        unserved_reason: 0,
                        rationale: assigned_rationale(ranking, &assignment.team_id),
                    }
                    .encode_to_vec()
                };
                let attempt = self
                    .claim_and_record(
                        &mut ranking,
                        &record,
                        expected_version,
                        AssignmentSource::AutoAssign,
                        &region,
                        Some((&request.request_id, &fingerprint)),
                        &respond,
                    )
                    .await;
                match attempt {
                    Ok(Attempt::Done(assignment)) => {
                        tracing::info!(incident_id = %assignment.incident_id, team_id = %assignment.team_id, region = %assignment.region, "team assigned");
                        return Ok(AssignTeamResponse::decode(
                            respond(&ranking, &assignment).as_slice(),
                        )
                        .unwrap_or_default());
                    }
                    Ok(Attempt::Retry) => continue,
                    Ok(Attempt::NoTeam) => {}
                    Err(RoutingError::Store(StoreError::DuplicateRequest)) => {
                        return self.replay(&request.request_id, &fingerprint).await;
                    }
                    Err(error) => return Err(error),
                }
            }
            // No eligible team: queue (keeping the first queued_time).
            let reason = ranking.unserved().unwrap_or(UnservedReason::AllBusy);
            let queued_time = was_queued.unwrap_or(now);
            record.state = IncidentState::Queued;
            record.queued_time = Some(queued_time);
            record.escalate_time = Some(
                queued_time
                    + duration(region.escalation_limit(u8::try_from(params.priority).unwrap_or(5))),
            );
            record.unserved_reason = reason.into();
            let queued = queued_entry(&record);
            let response = AssignTeamResponse {
                outcome: AssignmentOutcome::Queued.into(),
                assignment: None,
                queued: Some(queued.clone()),
                candidates: candidates(&ranking),
                unserved_reason: reason.into(),
                rationale: format!("queued: {}", unserved_text(reason)),
            };
            let write = Write {
                region: params.region.clone(),
                request: Some(RequestRecord {
                    request_id: request.request_id.clone(),
                    fingerprint: fingerprint.clone().into_bytes(),
                    response: response.encode_to_vec(),
                }),
                incident: Some(IncidentWrite {
                    record,
                    expected_version,
                }),
                events: vec![AssignmentEvent {
                    event_id: String::new(),
                    kind: AssignmentEventKind::Queued.into(),
                    incident_id: params.incident_id.clone(),
                    cad_system: queued.cad_system.clone(),
                    cad_incident_id: queued.cad_incident_id.clone(),
                    assignment: None,
                    queued: Some(queued),
                    reason: reason.into(),
                    event_time: Some(to_timestamp(now)),
                }],
                ..Write::default()
            };
            match self.write(write).await {
                Ok(()) => {
                    tracing::info!(incident_id = %params.incident_id, region = %params.region, reason = reason.as_str_name(), "incident queued");
                    return Ok(response);
                }
                Err(StoreError::VersionConflict) => {}
                Err(StoreError::DuplicateRequest) => {
                    return self.replay(&request.request_id, &fingerprint).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(RoutingError::Contended)
    }
}
