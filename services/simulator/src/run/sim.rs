//! The simulation's loop: setting up the fleet, then handling its steps in time order.

use super::*;

impl Sim<'_> {
    pub(super) fn request_id(&mut self) -> String {
        self.requests += 1;
        format!("sim-{}-{}", self.run_id, self.requests)
    }

    pub(super) fn schedule(&mut self, at: f64, step: Step) {
        self.sequence += 1;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let millis = (at.max(0.0) * 1000.0) as u64;
        self.steps.push(Reverse((millis, self.sequence, step)));
    }

    pub(super) fn sim_now(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let micros = (self.clock.now() - self.base)
            .num_microseconds()
            .unwrap_or(0) as f64;
        micros / 1e6
    }

    /// Now as the deployment's clock reads it: simulated time when shared, else the wall.
    pub(super) fn stamp(&self) -> prost_types::Timestamp {
        if self.shared_clock {
            relay_runtime::validate::to_timestamp(self.clock.now())
        } else {
            to_timestamp(SystemTime::now())
        }
    }

    pub(super) fn fail(&mut self, what: &str, status: &tonic::Status) {
        if self.failures.len() < 20 {
            self.failures
                .push(format!("{what}: {:?} {}", status.code(), status.message()));
        }
    }

    pub(super) async fn set_up(&mut self) -> Result<(), SimError> {
        let now = SystemTime::now();
        self.base = self.clock.now();
        for plan in &self.scenario.teams {
            let team_id = format!("{}-{}", self.run_id, plan.team_id);
            // On the deployment's simulated clock the shift ends at its simulated time. On the
            // wall clock, Relay judges shifts against a call's real expected duration, so the
            // shift end is given in wall-clock seconds; the simulator itself takes the team
            // off duty at the simulated time (Step::ShiftEnds).
            let shift_ends_at = plan.shift_ends_after_seconds.map(|after| {
                if self.shared_clock {
                    #[allow(clippy::cast_possible_wrap)]
                    let at = self.base + chrono::TimeDelta::seconds(after as i64);
                    relay_runtime::validate::to_timestamp(at)
                } else {
                    to_timestamp(now + Duration::from_secs(after))
                }
            });
            let request = UpsertTeamRequest {
                request_id: self.request_id(),
                team_id: team_id.clone(),
                display_name: plan.display_name.clone(),
                region: self.region.clone(),
                capabilities: plan.capabilities.clone(),
                shift_ends_at,
                expected_revision: 0,
            };
            let client = self.availability.clone();
            retry_unavailable(|| {
                let request = request.clone();
                let mut client = client.clone();
                async move { client.upsert_team(request).await }
            })
            .await
            .map_err(|status| SimError::Setup {
                what: format!("UpsertTeam {team_id}"),
                status,
            })?;
            let request = SetTeamStatusRequest {
                request_id: self.request_id(),
                team_id: team_id.clone(),
                status: TeamStatus::Available.into(),
                incident_id: String::new(),
                expected_revision: 0,
            };
            retry_unavailable(|| {
                let request = request.clone();
                let mut client = client.clone();
                async move { client.set_team_status(request).await }
            })
            .await
            .map_err(|status| SimError::Setup {
                what: format!("SetTeamStatus {team_id} AVAILABLE"),
                status,
            })?;
            if let Some(after) = plan.shift_ends_after_seconds {
                #[allow(clippy::cast_precision_loss)]
                self.schedule(after as f64, Step::ShiftEnds(team_id.clone()));
            }
            self.observed
                .teams
                .insert(team_id.clone(), TeamUse::default());
            self.teams.insert(
                team_id.clone(),
                TeamState {
                    team_id,
                    base: plan.base,
                    motion: Motion {
                        from: plan.base,
                        to: plan.base,
                        start: 0.0,
                        end: 0.0,
                    },
                    on_duty: true,
                    busy_on: None,
                    busy_since: 0.0,
                    leave_after_clear: false,
                },
            );
        }
        self.report_positions().await;
        for (index, call) in self.scenario.calls.iter().enumerate() {
            #[allow(clippy::cast_precision_loss)]
            self.schedule(call.arrives_after_seconds as f64, Step::Arrive(index));
        }
        #[allow(clippy::cast_precision_loss)]
        self.schedule(
            self.options.position_interval_seconds as f64,
            Step::Positions,
        );
        if !self.shared_clock {
            // Set-up time is not part of the scenario on the simulator's own clock.
            self.base = self.clock.now();
        }
        Ok(())
    }

    pub(super) async fn run(&mut self) {
        #[allow(clippy::cast_precision_loss)]
        let duration = self.scenario.config.duration_seconds as f64;
        while let Some(Reverse((millis, _, step))) = self.steps.pop() {
            #[allow(clippy::cast_precision_loss)]
            let at = millis as f64 / 1000.0;
            // After the simulated duration, only finish the calls in progress.
            if at > duration && matches!(step, Step::Positions | Step::ShiftEnds(_)) {
                if self.teams.values().all(|t| t.busy_on.is_none()) {
                    break;
                }
                if matches!(step, Step::ShiftEnds(_)) {
                    continue;
                }
            }
            let wait = (at - self.sim_now()) / self.clock.speed();
            if wait > 0.0 {
                tokio::time::sleep(Duration::from_secs_f64(wait)).await;
            }
            self.handle(step, at).await;
            self.drain_events(at);
            self.progress.set_message(format!(
                "assigned {} queued {} escalated {}",
                self.observed.assigned, self.observed.queued, self.observed.escalated
            ));
        }
        self.observed.duration_seconds = self.sim_now().max(duration);
    }

    pub(super) async fn settle(&mut self, at: f64) {
        tokio::time::sleep(self.options.settle).await;
        self.drain_events(at);
    }

    pub(super) async fn handle(&mut self, step: Step, at: f64) {
        match step {
            Step::Arrive(index) => self.arrive(index, at).await,
            Step::Positions => {
                self.report_positions().await;
                #[allow(clippy::cast_precision_loss)]
                self.schedule(
                    at + self.options.position_interval_seconds as f64,
                    Step::Positions,
                );
            }
            Step::EnRoute { team, incident } => {
                self.set_status(&team, TeamStatus::EnRoute, &incident).await;
            }
            Step::OnScene { team, incident } => {
                self.set_status(&team, TeamStatus::OnScene, &incident).await;
                if let Some(state) = self.incidents.get(&incident) {
                    self.observed.response_time.push(at - state.arrived);
                }
            }
            Step::Clear { team, incident } => self.clear(&team, &incident, at).await,
            Step::ShiftEnds(team) => self.shift_ends(&team).await,
        }
    }
}
