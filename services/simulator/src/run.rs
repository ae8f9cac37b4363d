//! Drives a Relay deployment through a [`Scenario`], over gRPC only, and observes what happens.
//!
//! Simulated time advances event by event: call arrivals, position reports, and each team's
//! lifecycle (en route one minute after dispatch, on scene after the ETA routing gave, clear
//! after the call's time on scene, then close with or without a referral). `speed` paces it
//! against the wall clock (`speed` 60 runs an hour in a minute). Events are handled one at a
//! time, and after every call that can make Relay act on its own (a submission, a team
//! clearing) the simulator waits briefly for the resulting events, so that for a fixed seed
//! the sequence of calls Relay sees, and therefore the counts, are the same from run to run.
//!
//! Each run uses its own run id in its CAD system, team ids and region, so runs never see
//! each other's state in a shared deployment.
//!
//! Time: against a deployment on simulated time (`relay dev --clock-speed`), `clock` is the
//! deployment's clock, and calls, positions and shift ends are stamped in its time, so every
//! time rule of Relay (escalation, review waits, stale positions, shift ends) sees the
//! simulation as it unfolds. Against a deployment on the wall clock, stamps are wall-clock
//! times and only the simulator's own pacing is simulated.
//!
//! Shifts: a team whose shift ends while it is idle goes OFF_DUTY; one on a call finishes it,
//! and availability puts it OFF_DUTY when it clears ("off duty after this call"; on the wall
//! clock, where the deployment's shift end lies far ahead, the simulator asks for OFF_DUTY
//! right after the clear).

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, HashMap},
    time::{Duration, SystemTime},
};

use chrono::{DateTime, Utc};

use indicatif::{ProgressBar, ProgressStyle};
use relay_proto::{
    availability::{
        SetTeamStatusRequest, StreamLocationsRequest, UpsertTeamRequest,
        availability_service_client::AvailabilityServiceClient,
    },
    common::{GeoPoint, TeamStatus},
    directory::{
        CreateReferralRequest, SearchServicesRequest,
        directory_service_client::DirectoryServiceClient,
    },
    intake::{
        CloseIncidentRequest, CloseOutcome, Disposition, IncidentEventKind, RoutingOutcome,
        RoutingState, SubmitIncidentRequest, WatchIncidentEventsRequest,
        intake_service_client::IntakeServiceClient, watch_incident_events_response::Kind,
    },
};
use relay_runtime::clock::{Clock, ScaledClock};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::{
    report::{Observations, TeamUse},
    scenario::{CallPlan, Scenario},
};

/// Where the deployment listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// IntakeService.
    pub intake: String,
    /// AvailabilityService.
    pub availability: String,
    /// DirectoryService.
    pub directory: String,
}

/// How the simulator proves who it is: TLS trusting a CA, and a bearer token on every call
/// (shared with other clients of Relay in `relay_runtime::client`).
pub use relay_runtime::client::{AuthChannel, Bearer, Credentials};

/// How a run is paced and shown.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOptions {
    /// Simulated seconds per wall-clock second.
    pub speed: f64,
    /// Simulated seconds between position reports of each team.
    pub position_interval_seconds: u64,
    /// Show a live progress display on the terminal.
    pub progress: bool,
    /// How long to wait for Relay's own reactions after a call that can cause them.
    pub settle: Duration,
    /// A fixed run id (tests); by default one is made from the clock.
    pub run_id: Option<String>,
    /// The deployment's simulated clock (same origin, anchor and speed as `relay dev`), or
    /// `None` when the deployment runs on the wall clock.
    pub clock: Option<ScaledClock>,
    /// TLS and the bearer token (`relay dev` prints both).
    pub credentials: Credentials,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            speed: 60.0,
            position_interval_seconds: 10,
            progress: true,
            settle: Duration::from_millis(150),
            run_id: None,
            clock: None,
            credentials: Credentials::default(),
        }
    }
}

/// Why a run could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// An endpoint is not a valid URI.
    #[error("`{0}` is not an endpoint such as http://127.0.0.1:50051")]
    BadEndpoint(String),
    /// An endpoint cannot be reached.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// The speed is not a number greater than 0.
    #[error("{0}")]
    Speed(String),
    /// Setting up the fleet failed.
    #[error("{what} failed: {status}")]
    Setup {
        /// What was being done.
        what: String,
        /// Relay's answer.
        status: tonic::Status,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Arrive(usize),
    Positions,
    EnRoute { team: String, incident: String },
    OnScene { team: String, incident: String },
    Clear { team: String, incident: String },
    ShiftEnds(String),
}

#[derive(Debug, Clone)]
struct Motion {
    from: GeoPoint,
    to: GeoPoint,
    start: f64,
    end: f64,
}

impl Motion {
    fn at(&self, now: f64) -> GeoPoint {
        if now >= self.end || self.end <= self.start {
            return self.to;
        }
        let f = ((now - self.start) / (self.end - self.start)).clamp(0.0, 1.0);
        GeoPoint {
            latitude: self.from.latitude + (self.to.latitude - self.from.latitude) * f,
            longitude: self.from.longitude + (self.to.longitude - self.from.longitude) * f,
        }
    }
}

#[derive(Debug, Clone)]
struct TeamState {
    team_id: String,
    base: GeoPoint,
    motion: Motion,
    on_duty: bool,
    busy_on: Option<String>,
    busy_since: f64,
    leave_after_clear: bool,
}

#[derive(Debug, Clone)]
struct IncidentState {
    call: usize,
    arrived: f64,
    assigned: bool,
    queued: bool,
    escalated: bool,
}

struct Sim<'a> {
    scenario: &'a Scenario,
    options: RunOptions,
    run_id: String,
    cad_system: String,
    region: String,
    intake: IntakeServiceClient<AuthChannel>,
    availability: AvailabilityServiceClient<AuthChannel>,
    directory: DirectoryServiceClient<AuthChannel>,
    steps: BinaryHeap<Reverse<(u64, u64, Step)>>,
    sequence: u64,
    /// The clock simulated time is read from: the deployment's, or one of the simulator's
    /// own at `speed` when the deployment runs on the wall clock.
    clock: ScaledClock,
    /// Whether `clock` is the deployment's (stamps are then in its time).
    shared_clock: bool,
    /// Simulated time 0 of the scenario.
    base: DateTime<Utc>,
    teams: BTreeMap<String, TeamState>,
    incidents: HashMap<String, IncidentState>,
    requests: u64,
    observed: Observations,
    failures: Vec<String>,
    events: mpsc::UnboundedReceiver<relay_proto::intake::IncidentEvent>,
    progress: ProgressBar,
}

/// Calls `call` again, with backoff, while the deployment answers UNAVAILABLE (still starting
/// up, as a CAD integration would retry), at most ten times.
async fn retry_unavailable<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut attempt = 0_u32;
    loop {
        match call().await {
            Err(status) if status.code() == tonic::Code::Unavailable && attempt < 10 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
            result => return result,
        }
    }
}

fn reason_name(reason: i32) -> String {
    relay_proto::common::UnservedReason::try_from(reason)
        .map_or("UNKNOWN", |r| {
            r.as_str_name()
                .strip_prefix("UNSERVED_REASON_")
                .unwrap_or("UNKNOWN")
        })
        .to_owned()
}

fn to_timestamp(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

async fn connect(endpoint: &str, credentials: &Credentials) -> Result<AuthChannel, SimError> {
    let failed = |source| SimError::Connect {
        endpoint: endpoint.to_owned(),
        source,
    };
    let mut builder = Channel::from_shared(credentials.uri(endpoint))
        .map_err(|_| SimError::BadEndpoint(endpoint.to_owned()))?;
    if let Some(tls) = credentials.tls() {
        builder = builder.tls_config(tls).map_err(failed)?;
    }
    builder = builder.timeout(Duration::from_secs(10));
    let channel = builder.connect().await.map_err(failed)?;
    Ok(credentials.intercept(channel))
}

/// Runs `scenario` against the deployment at `endpoints`.
///
/// # Errors
/// When the deployment cannot be reached or the fleet cannot be set up. Failures of
/// individual calls later are counted in the report instead.
pub async fn run(
    scenario: &Scenario,
    endpoints: &Endpoints,
    options: RunOptions,
) -> Result<(Observations, Vec<String>), SimError> {
    let (clock, shared_clock) = match options.clock {
        Some(clock) => (clock, true),
        None => {
            let now = Utc::now();
            (
                ScaledClock::new(now, now, options.speed).map_err(SimError::Speed)?,
                false,
            )
        }
    };
    let credentials = &options.credentials;
    let intake = IntakeServiceClient::new(connect(&endpoints.intake, credentials).await?);
    let availability =
        AvailabilityServiceClient::new(connect(&endpoints.availability, credentials).await?);
    let directory = DirectoryServiceClient::new(connect(&endpoints.directory, credentials).await?);
    let run_id = options.run_id.clone().unwrap_or_else(|| {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("{:08x}", nanos % 0xffff_ffff)
    });
    let cad_system = format!("{}-{run_id}", scenario.config.cad_system);
    let region = format!("{}-{run_id}", scenario.config.region);

    let (sender, events) = mpsc::unbounded_channel();
    let mut watcher = intake.clone();
    let watched = cad_system.clone();
    let watch = tokio::spawn(async move {
        let request = WatchIncidentEventsRequest {
            cad_system: watched,
            after_sequence: 0,
        };
        let Ok(response) = watcher.watch_incident_events(request).await else {
            return;
        };
        let mut stream = response.into_inner();
        while let Ok(Some(message)) = stream.message().await {
            if let Some(Kind::Event(event)) = message.kind
                && sender.send(event).is_err()
            {
                return;
            }
        }
    });

    let progress = if options.progress {
        let bar = ProgressBar::new(scenario.calls.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} calls  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };

    let mut sim = Sim {
        scenario,
        options,
        run_id,
        cad_system,
        region,
        intake,
        availability,
        directory,
        steps: BinaryHeap::new(),
        sequence: 0,
        base: clock.now(),
        clock,
        shared_clock,
        teams: BTreeMap::new(),
        incidents: HashMap::new(),
        requests: 0,
        observed: Observations::default(),
        failures: Vec::new(),
        events,
        progress,
    };
    sim.set_up().await?;
    sim.run().await;
    watch.abort();
    sim.progress.finish_and_clear();
    Ok((sim.observed, sim.failures))
}

impl Sim<'_> {
    fn request_id(&mut self) -> String {
        self.requests += 1;
        format!("sim-{}-{}", self.run_id, self.requests)
    }

    fn schedule(&mut self, at: f64, step: Step) {
        self.sequence += 1;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let millis = (at.max(0.0) * 1000.0) as u64;
        self.steps.push(Reverse((millis, self.sequence, step)));
    }

    fn sim_now(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let micros = (self.clock.now() - self.base)
            .num_microseconds()
            .unwrap_or(0) as f64;
        micros / 1e6
    }

    /// Now as the deployment's clock reads it: simulated time when shared, else the wall.
    fn stamp(&self) -> prost_types::Timestamp {
        if self.shared_clock {
            relay_runtime::validate::to_timestamp(self.clock.now())
        } else {
            to_timestamp(SystemTime::now())
        }
    }

    fn fail(&mut self, what: &str, status: &tonic::Status) {
        if self.failures.len() < 20 {
            self.failures
                .push(format!("{what}: {:?} {}", status.code(), status.message()));
        }
    }

    async fn set_up(&mut self) -> Result<(), SimError> {
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

    async fn run(&mut self) {
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

    async fn settle(&mut self, at: f64) {
        tokio::time::sleep(self.options.settle).await;
        self.drain_events(at);
    }

    async fn handle(&mut self, step: Step, at: f64) {
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

    async fn arrive(&mut self, index: usize, at: f64) {
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

    fn apply_routing(&mut self, incident_id: &str, routing: &RoutingOutcome, at: f64) {
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

    fn drain_events(&mut self, at: f64) {
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

    fn dispatch(
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
    async fn shift_ends(&mut self, team: &str) {
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

    async fn request_status(
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
    async fn set_status(
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

    async fn clear(&mut self, team_id: &str, incident_id: &str, at: f64) {
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

    async fn close(&mut self, incident_id: &str, call: usize) {
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

    async fn report_positions(&mut self) {
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
