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

mod calls;
mod sim;

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
