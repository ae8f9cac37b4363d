//! What the simulated CAD and teams do: calls arriving, dispatches followed, statuses set,
//! calls cleared and closed, positions reported.

use super::*;

impl Sim<'_> {
    pub(super) async fn arrive(&mut self, index: usize, at: f64) {
        let call: &CallPlan = &self.scenario.calls[index];
        self.progress.inc(1);
        let request = SubmitIncidentRequest {
            cad_system: self.cad_system.clone(),
            cad_incident_id: call.cad_incident_id.clone(),
            incident_type: call.incident_type.to_owned(),
            priority: call.priority,
            location: Some(call.location),
            address: call.address.clone(),
            region: self.region.clone(),
            // Synthetic text only: never a real person's words.
            narrative: format!("simulated {} call", call.incident_type.to_lowercase()),
            risk_flags: call.risk_flags.iter().map(|f| i32::from(*f)).collect(),
            received_at: Some(self.stamp()),
            preferred_capabilities: call.preferred_capabilities.clone(),
            ..SubmitIncidentRequest::default()
        };
        self.observed.submitted += 1;
        match self.intake.submit_incident(request).await {
            Ok(response) => {
                let response = response.into_inner();
                if !response.created {
                    self.observed.duplicates += 1;
                }
                let disposition = response
                    .triage
                    .as_ref()
                    .and_then(|t| Disposition::try_from(t.disposition).ok())
                    .map_or("UNKNOWN", |d| {
                        d.as_str_name()
                            .strip_prefix("DISPOSITION_")
                            .unwrap_or("UNKNOWN")
                    })
                    .to_owned();
                *self.observed.dispositions.entry(disposition).or_default() += 1;
                let Some(incident) = response.incident else {
                    return;
                };
                self.incidents.insert(
                    incident.incident_id.clone(),
                    IncidentState {
                        call: index,
                        arrived: at,
                        assigned: false,
                        queued: false,
                        escalated: false,
                    },
                );
                if let Some(routing) = response.routing {
                    self.apply_routing(&incident.incident_id, &routing, at);
                }
                self.settle(at).await;
            }
            Err(status) => self.fail("SubmitIncident", &status),
        }
    }

    pub(super) fn apply_routing(&mut self, incident_id: &str, routing: &RoutingOutcome, at: f64) {
        let Some(state) = self.incidents.get_mut(incident_id) else {
            return;
        };
        match RoutingState::try_from(routing.state) {
            Ok(RoutingState::Assigned) if !state.assigned && !routing.team_id.is_empty() => {
                state.assigned = true;
                let call = state.call;
                let arrived = state.arrived;
                self.observed.assigned += 1;
                self.observed.time_to_assign.push(at - arrived);
                self.dispatch(&routing.team_id, incident_id, call, routing.eta_seconds, at);
            }
            Ok(RoutingState::Queued) if !state.queued => {
                state.queued = true;
                self.observed.queued += 1;
                *self
                    .observed
                    .queued_reasons
                    .entry(reason_name(routing.unserved_reason))
                    .or_default() += 1;
            }
            Ok(RoutingState::Escalated) if !state.escalated => {
                state.escalated = true;
                self.observed.escalated += 1;
                *self
                    .observed
                    .unserved
                    .entry(reason_name(routing.unserved_reason))
                    .or_default() += 1;
            }
            _ => {}
        }
    }

    pub(super) fn drain_events(&mut self, at: f64) {
        while let Ok(event) = self.events.try_recv() {
            let kind = IncidentEventKind::try_from(event.kind).ok();
            if matches!(
                kind,
                Some(
                    IncidentEventKind::Assigned
                        | IncidentEventKind::Queued
                        | IncidentEventKind::Escalated
                )
            ) && let Some(routing) = &event.routing
            {
                self.apply_routing(&event.incident_id, routing, at);
            }
        }
    }

    pub(super) fn dispatch(
        &mut self,
        team_id: &str,
        incident_id: &str,
        call: usize,
        eta_seconds: i32,
        at: f64,
    ) {
        let plan = &self.scenario.calls[call];
        let on_scene_seconds = plan.on_scene_seconds;
        let destination = plan.location;
        let Some(team) = self.teams.get_mut(team_id) else {
            return;
        };
        let turnout = 60.0;
        let travel = f64::from(eta_seconds.max(60));
        let here = team.motion.at(at);
        team.motion = Motion {
            from: here,
            to: destination,
            start: at + turnout,
            end: at + turnout + travel,
        };
        team.busy_on = Some(incident_id.to_owned());
        team.busy_since = at;
        if let Some(usage) = self.observed.teams.get_mut(team_id) {
            usage.calls += 1;
        }
        let (team, incident) = (team_id.to_owned(), incident_id.to_owned());
        self.schedule(
            at + turnout,
            Step::EnRoute {
                team: team.clone(),
                incident: incident.clone(),
            },
        );
        self.schedule(
            at + turnout + travel,
            Step::OnScene {
                team: team.clone(),
                incident: incident.clone(),
            },
        );
        #[allow(clippy::cast_precision_loss)]
        self.schedule(
            at + turnout + travel + on_scene_seconds as f64,
            Step::Clear { team, incident },
        );
    }

    /// The end of a team's shift: an idle team goes OFF_DUTY; a busy one finishes its call
    /// first (see [`Sim::clear`]). A team routing gave a call the simulator has not heard of
    /// yet is busy too: availability refuses OFF_DUTY while it is on a call.
    pub(super) async fn shift_ends(&mut self, team: &str) {
        let idle = self
            .teams
            .get(team)
            .is_some_and(|t| t.busy_on.is_none() && t.on_duty);
        let off = idle
            && match self.request_status(team, TeamStatus::OffDuty, "").await {
                Ok(_) => true,
                Err(status) if status.code() == tonic::Code::FailedPrecondition => false,
                Err(status) => {
                    self.fail("SetTeamStatus TEAM_STATUS_OFF_DUTY", &status);
                    true
                }
            };
        if let Some(state) = self.teams.get_mut(team) {
            if off {
                state.on_duty = false;
            } else {
                state.leave_after_clear = true;
            }
        }
    }

    pub(super) async fn request_status(
        &mut self,
        team_id: &str,
        status: TeamStatus,
        incident_id: &str,
    ) -> Result<TeamStatus, tonic::Status> {
        let request = SetTeamStatusRequest {
            request_id: self.request_id(),
            team_id: team_id.to_owned(),
            status: status.into(),
            incident_id: incident_id.to_owned(),
            expected_revision: 0,
        };
        let response = self.availability.set_team_status(request).await?;
        Ok(response
            .into_inner()
            .team
            .and_then(|t| TeamStatus::try_from(t.status).ok())
            .unwrap_or(status))
    }

    /// Sets a team's status; returns the status it landed in (`None` after a failure, which
    /// is counted).
    pub(super) async fn set_status(
        &mut self,
        team_id: &str,
        status: TeamStatus,
        incident_id: &str,
    ) -> Option<TeamStatus> {
        match self.request_status(team_id, status, incident_id).await {
            Ok(landed) => Some(landed),
            Err(status_error) => {
                self.fail(
                    &format!("SetTeamStatus {}", status.as_str_name()),
                    &status_error,
                );
                None
            }
        }
    }

    pub(super) async fn clear(&mut self, team_id: &str, incident_id: &str, at: f64) {
        let landed = self
            .set_status(team_id, TeamStatus::Available, incident_id)
            .await;
        if landed == Some(TeamStatus::OffDuty) {
            // Its shift had ended: availability put it off duty as it cleared.
            self.observed.off_duty_after_call += 1;
            if let Some(team) = self.teams.get_mut(team_id) {
                team.on_duty = false;
                team.leave_after_clear = false;
            }
        }
        let call = self.incidents.get(incident_id).map(|s| s.call);
        let leave = if let Some(team) = self.teams.get_mut(team_id) {
            let busy = at - team.busy_since;
            let here = team.motion.at(at);
            team.motion = Motion {
                from: here,
                to: team.base,
                start: at,
                end: at + 600.0,
            };
            team.busy_on = None;
            if let Some(usage) = self.observed.teams.get_mut(team_id) {
                usage.busy_seconds += busy;
            }
            team.leave_after_clear
        } else {
            false
        };
        if let Some(call) = call {
            self.close(incident_id, call).await;
        }
        if leave {
            self.set_status(team_id, TeamStatus::OffDuty, "").await;
            self.observed.off_duty_after_call += 1;
            if let Some(team) = self.teams.get_mut(team_id) {
                team.on_duty = false;
            }
        }
        // A freed team may be given a queued call at once.
        self.settle(at).await;
    }

    pub(super) async fn close(&mut self, incident_id: &str, call: usize) {
        let plan = &self.scenario.calls[call];
        let mut referral_ids = Vec::new();
        if plan.ends_with_referral {
            let search = SearchServicesRequest {
                location: Some(plan.location),
                radius_meters: 15_000.0,
                page_size: 3,
                ..SearchServicesRequest::default()
            };
            match self.directory.search_services(search).await {
                Ok(response) => {
                    if let Some(result) = response.into_inner().results.into_iter().next() {
                        let service_id = result.service.map(|s| s.id).unwrap_or_default();
                        let request = CreateReferralRequest {
                            request_id: self.request_id(),
                            incident_id: incident_id.to_owned(),
                            service_id,
                            location_id: result.location_id,
                            notes: String::new(),
                        };
                        match self.directory.create_referral(request).await {
                            Ok(created) => {
                                if let Some(referral) = created.into_inner().referral {
                                    referral_ids.push(referral.referral_id);
                                    self.observed.referrals += 1;
                                }
                            }
                            Err(status) => self.fail("CreateReferral", &status),
                        }
                    }
                }
                Err(status) => self.fail("SearchServices", &status),
            }
        }
        let outcome = if referral_ids.is_empty() {
            CloseOutcome::ResolvedOnScene
        } else {
            CloseOutcome::Referred
        };
        let request = CloseIncidentRequest {
            request_id: self.request_id(),
            incident_id: incident_id.to_owned(),
            outcome: outcome.into(),
            referral_ids,
            notes: String::new(),
        };
        match self.intake.close_incident(request).await {
            Ok(_) => self.observed.closed += 1,
            Err(status) => self.fail("CloseIncident", &status),
        }
    }

    pub(super) async fn report_positions(&mut self) {
        let now = self.sim_now();
        let recorded_at = Some(self.stamp());
        let reports: Vec<StreamLocationsRequest> = self
            .teams
            .values()
            .filter(|team| team.on_duty)
            .map(|team| StreamLocationsRequest {
                team_id: team.team_id.clone(),
                location: Some(team.motion.at(now)),
                recorded_at,
                ..StreamLocationsRequest::default()
            })
            .collect();
        if reports.is_empty() {
            return;
        }
        if let Err(status) = self
            .availability
            .stream_locations(tokio_stream::iter(reports))
            .await
        {
            self.fail("StreamLocations", &status);
        }
    }
}
