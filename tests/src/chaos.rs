//! Load and invariant checks shared by the fault tests (`kill.rs`, `failover.rs`, `make
//! chaos`): teams on duty that clear their calls, CADs submitting calls concurrently and
//! retrying as a CAD integration would, and the checks of Relay's guarantees afterwards, from
//! routing's record (PostgreSQL) and intake's API.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use relay_proto::{
    availability::{
        GetTeamRequest, ReportLocationRequest, SetTeamStatusRequest, UpsertTeamRequest,
        availability_service_client::AvailabilityServiceClient,
    },
    common::{GeoPoint, TeamStatus},
    intake::{
        Incident, ListIncidentsRequest, SubmitIncidentRequest,
        intake_service_client::IntakeServiceClient,
    },
};
use sqlx::{Connection, PgConnection};
use tokio::task::JoinHandle;
use tonic::{Code, transport::Channel};

use crate::unique_name;

const HERE: GeoPoint = GeoPoint {
    latitude: 45.5152,
    longitude: -122.6784,
};

fn channel(endpoint: &str) -> Channel {
    Channel::from_shared(endpoint.to_owned())
        .expect("endpoint")
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

fn now() -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp::from(SystemTime::now()))
}

fn team_id(index: usize) -> String {
    format!("t{index:02}")
}

fn near(index: usize) -> GeoPoint {
    #[allow(clippy::cast_precision_loss)]
    let step = (index % 20) as f64;
    GeoPoint {
        latitude: HERE.latitude + 0.001 * step,
        longitude: HERE.longitude + 0.001 * step,
    }
}

/// Whether a failed call may be sent again unchanged: the server was down, restarting,
/// overloaded or cut off mid-call.
#[must_use]
pub fn transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::Internal
    )
}

/// Calls `f` until it succeeds or fails with a non-transient code, for at most `limit`.
async fn retry<T, F, Fut>(limit: Duration, mut f: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(50);
    loop {
        match f().await {
            Err(status) if transient(status.code()) && Instant::now() < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

/// What a run of load did.
#[derive(Debug, Default)]
pub struct Tally {
    /// Calls whose SubmitIncident returned OK: (cad_incident_id, incident_id).
    pub acknowledged: Vec<(String, String)>,
    /// Calls never acknowledged (the CAD gave up retrying).
    pub unacknowledged: u64,
    /// SubmitIncident attempts that failed transiently and were sent again.
    pub retries: u64,
    /// Times a team cleared a call (AVAILABLE after working it).
    pub clears: u64,
}

/// The load: `teams` teams on duty in `region`, and CADs submitting calls there.
pub struct Load {
    /// The region.
    pub region: String,
    /// The CAD system the calls come from.
    pub cad: String,
    /// How many teams.
    pub teams: usize,
    availability: String,
    intake: String,
    submitting: Arc<AtomicBool>,
    driving: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Vec<(String, String)>>>,
    unacknowledged: Arc<AtomicU64>,
    retries: Arc<AtomicU64>,
    clears: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
    drivers: Vec<JoinHandle<()>>,
}

impl Load {
    /// Creates the teams, puts them on duty with fresh positions, and starts `submitters`
    /// concurrent CADs (each sending a call, retrying it until acknowledged, then pausing
    /// `pause`) and the teams' drivers (which clear each call a moment after dispatch
    /// and keep positions fresh). Endpoints must stay valid across restarts (same ports).
    ///
    /// # Panics
    /// When the teams cannot be created.
    pub async fn start(
        availability: &str,
        intake: &str,
        teams: usize,
        submitters: usize,
        pause: Duration,
    ) -> Self {
        let region = unique_name("region");
        let mut client = AvailabilityServiceClient::new(channel(availability));
        for index in 0..teams {
            client
                .upsert_team(UpsertTeamRequest {
                    request_id: unique_name("upsert"),
                    team_id: team_id(index),
                    display_name: format!("Unit {index}"),
                    region: region.clone(),
                    capabilities: vec!["clinician".into(), "emt".into()],
                    ..UpsertTeamRequest::default()
                })
                .await
                .expect("upsert team");
        }
        let mut load = Self {
            region,
            cad: unique_name("cad"),
            teams,
            availability: availability.to_owned(),
            intake: intake.to_owned(),
            submitting: Arc::new(AtomicBool::new(true)),
            driving: Arc::new(AtomicBool::new(true)),
            acknowledged: Arc::default(),
            unacknowledged: Arc::default(),
            retries: Arc::default(),
            clears: Arc::default(),
            tasks: Vec::new(),
            drivers: Vec::new(),
        };
        // Two drivers, each with half the teams.
        for part in 0..2 {
            let mine: Vec<usize> = (0..teams).filter(|i| i % 2 == part).collect();
            load.drivers.push(load.spawn_driver(mine));
        }
        for worker in 0..submitters {
            load.tasks.push(load.spawn_submitter(worker, pause));
        }
        load
    }

    /// The load `make chaos` runs on `suite`: 20 teams, 4 CADs each sending a call every
    /// 300 ms or so (about as many as the teams clear, so some calls queue).
    pub async fn on(suite: &crate::suite::Suite) -> Self {
        Self::start(
            &suite.availability.endpoint(),
            &suite.intake.endpoint(),
            20,
            4,
            Duration::from_millis(300),
        )
        .await
    }

    fn spawn_submitter(&self, worker: usize, pause: Duration) -> JoinHandle<()> {
        let intake = IntakeServiceClient::new(channel(&self.intake));
        let (region, cad) = (self.region.clone(), self.cad.clone());
        let submitting = self.submitting.clone();
        let acknowledged = self.acknowledged.clone();
        let (unacknowledged, retries) = (self.unacknowledged.clone(), self.retries.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while submitting.load(Ordering::SeqCst) {
                n += 1;
                let cad_incident_id = format!("w{worker}-{n}");
                let request = SubmitIncidentRequest {
                    cad_system: cad.clone(),
                    cad_incident_id: cad_incident_id.clone(),
                    incident_type: "WELFARE".into(),
                    priority: 3,
                    location: Some(near(worker * 7 + n)),
                    address: "1 SW Broadway".into(),
                    region: region.clone(),
                    received_at: now(),
                    ..SubmitIncidentRequest::default()
                };
                let outcome = retry(Duration::from_secs(60), || {
                    let mut intake = intake.clone();
                    let request = request.clone();
                    let retries = retries.clone();
                    async move {
                        let result = intake.submit_incident(request).await;
                        if result.as_ref().is_err_and(|s| transient(s.code())) {
                            retries.fetch_add(1, Ordering::SeqCst);
                        }
                        result
                    }
                })
                .await;
                match outcome {
                    Ok(response) => {
                        let incident = response.into_inner().incident.expect("incident");
                        acknowledged
                            .lock()
                            .expect("lock")
                            .push((cad_incident_id, incident.incident_id));
                    }
                    Err(status) if transient(status.code()) => {
                        unacknowledged.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(status) => panic!("SubmitIncident {cad_incident_id}: {status:?}"),
                }
                tokio::time::sleep(pause).await;
            }
        })
    }

    fn spawn_driver(&self, teams: Vec<usize>) -> JoinHandle<()> {
        let mut client = AvailabilityServiceClient::new(channel(&self.availability));
        let driving = self.driving.clone();
        let clears = self.clears.clone();
        tokio::spawn(async move {
            let set = |team: &str, status: TeamStatus, incident: &str| SetTeamStatusRequest {
                request_id: unique_name("status"),
                team_id: team.to_owned(),
                status: status.into(),
                incident_id: incident.to_owned(),
                ..SetTeamStatusRequest::default()
            };
            while driving.load(Ordering::SeqCst) {
                for &index in &teams {
                    let id = team_id(index);
                    // Positions stay fresh whatever happens to the team.
                    let _ = client
                        .report_location(ReportLocationRequest {
                            team_id: id.clone(),
                            location: Some(near(index)),
                            recorded_at: now(),
                            ..ReportLocationRequest::default()
                        })
                        .await;
                    let Ok(team) = client
                        .get_team(GetTeamRequest {
                            team_id: id.clone(),
                        })
                        .await
                    else {
                        continue;
                    };
                    let Some(team) = team.into_inner().team else {
                        continue;
                    };
                    let incident = team.incident_id.clone();
                    let path: &[TeamStatus] = match team.status() {
                        TeamStatus::Dispatched => &[
                            TeamStatus::EnRoute,
                            TeamStatus::OnScene,
                            TeamStatus::Available,
                        ],
                        TeamStatus::EnRoute => &[TeamStatus::OnScene, TeamStatus::Available],
                        TeamStatus::OnScene | TeamStatus::Transporting => &[TeamStatus::Available],
                        TeamStatus::OffDuty | TeamStatus::OutOfService => &[TeamStatus::Available],
                        _ => &[],
                    };
                    let mut ok = !path.is_empty();
                    for status in path {
                        ok &= client
                            .set_team_status(set(&id, *status, &incident))
                            .await
                            .is_ok();
                    }
                    if ok && !incident.is_empty() {
                        clears.fetch_add(1, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    }

    /// Stops submitting calls and waits for the CADs' last calls to finish; the teams keep
    /// working.
    pub async fn stop_submitting(&mut self) {
        self.submitting.store(false, Ordering::SeqCst);
        for task in self.tasks.drain(..) {
            task.await.expect("a CAD task");
        }
    }

    /// Stops the teams (after [`Self::stop_submitting`]) and returns the tally.
    pub async fn stop(&mut self) -> Tally {
        self.stop_submitting().await;
        self.driving.store(false, Ordering::SeqCst);
        for task in self.drivers.drain(..) {
            task.await.expect("a team driver");
        }
        Tally {
            acknowledged: std::mem::take(&mut *self.acknowledged.lock().expect("lock")),
            unacknowledged: self.unacknowledged.load(Ordering::SeqCst),
            retries: self.retries.load(Ordering::SeqCst),
            clears: self.clears.load(Ordering::SeqCst),
        }
    }

    /// How many calls were acknowledged so far.
    ///
    /// # Panics
    /// When the lock is poisoned.
    #[must_use]
    pub fn acknowledged_so_far(&self) -> usize {
        self.acknowledged.lock().expect("lock").len()
    }

    /// Every incident intake holds for this load's CAD.
    ///
    /// # Panics
    /// When intake does not answer within a minute.
    pub async fn incidents(&self) -> Vec<Incident> {
        incidents_of(&self.intake, &self.cad).await
    }

    /// Waits (at most `limit`) until no acknowledged incident is PENDING or QUEUED in
    /// intake's view, while the teams keep clearing; returns the stuck ones when time runs
    /// out.
    pub async fn settle(&self, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        loop {
            let stuck: Vec<String> = self
                .incidents()
                .await
                .iter()
                .filter(|i| {
                    let state = i.routing.as_ref().map(|r| r.state().as_str_name());
                    matches!(
                        state,
                        None | Some(
                            "ROUTING_STATE_UNSPECIFIED"
                                | "ROUTING_STATE_PENDING"
                                | "ROUTING_STATE_QUEUED"
                        )
                    )
                })
                .map(|i| {
                    format!(
                        "{} ({:?})",
                        i.incident_id,
                        i.routing.as_ref().map(|r| r.state())
                    )
                })
                .collect();
            if stuck.is_empty() || Instant::now() >= deadline {
                return stuck;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Every incident intake (at `endpoint`) holds for `cad`, retrying transient failures.
///
/// # Panics
/// When intake does not answer within a minute.
pub async fn incidents_of(endpoint: &str, cad: &str) -> Vec<Incident> {
    let intake = IntakeServiceClient::new(channel(endpoint));
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListIncidentsRequest {
            cad_system: cad.to_owned(),
            page_size: 500,
            page_token: page_token.clone(),
            ..ListIncidentsRequest::default()
        };
        let page = retry(Duration::from_secs(60), || {
            let mut intake = intake.clone();
            let request = request.clone();
            async move { intake.list_incidents(request).await }
        })
        .await
        .expect("list incidents")
        .into_inner();
        all.extend(page.incidents);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}

/// One assignment as routing recorded it.
#[derive(Debug, Clone)]
pub struct Interval {
    /// The team.
    pub team_id: String,
    /// The incident.
    pub incident_id: String,
    /// When it was assigned (routing's clock), microseconds since the Unix epoch.
    pub assigned_at: i64,
    /// When it ended (routing's clock), microseconds since the Unix epoch; `None` while
    /// active.
    pub end_time: Option<i64>,
    /// Its state and end reason in the record (for the report of a failure).
    pub state: String,
}

/// Every assignment in routing's record.
///
/// # Panics
/// When the record cannot be read.
pub async fn assignments(database_url: &str) -> Vec<Interval> {
    let mut db = PgConnection::connect(database_url).await.expect("connect");
    let rows: Vec<(String, String, i64, Option<i64>, String)> = sqlx::query_as(
        "SELECT team_id, incident_id, \
         (extract(epoch FROM assigned_at) * 1000000)::bigint, \
         (extract(epoch FROM end_time) * 1000000)::bigint, \
         state || ' ' || end_reason || ' ' || assignment_id \
         FROM routing.assignments ORDER BY team_id, assigned_at, assignment_id",
    )
    .fetch_all(&mut db)
    .await
    .expect("read assignments");
    rows.into_iter()
        .map(
            |(team_id, incident_id, assigned_at, end_time, state)| Interval {
                team_id,
                incident_id,
                assigned_at,
                end_time,
                state,
            },
        )
        .collect()
}

/// Pairs of one team's assignments whose intervals [assigned_at, end_time) overlap: a team
/// actively assigned to two incidents at once.
#[must_use]
pub fn overlaps(intervals: &[Interval]) -> Vec<String> {
    let mut by_team: BTreeMap<&str, Vec<&Interval>> = BTreeMap::new();
    for interval in intervals {
        by_team.entry(&interval.team_id).or_default().push(interval);
    }
    let mut found = Vec::new();
    for (team, mut list) in by_team {
        list.sort_by_key(|i| i.assigned_at);
        for pair in list.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if a.end_time.is_none_or(|end| end > b.assigned_at) {
                found.push(format!(
                    "{team}: {} [{}, {:?}) ({}) overlaps {} from {} ({})",
                    a.incident_id,
                    a.assigned_at,
                    a.end_time,
                    a.state,
                    b.incident_id,
                    b.assigned_at,
                    b.state
                ));
            }
        }
    }
    found
}

/// Acknowledged calls missing from intake or present more than once, and incidents whose id
/// differs from the acknowledged one.
#[must_use]
pub fn lost_or_doubled(acknowledged: &[(String, String)], incidents: &[Incident]) -> Vec<String> {
    let mut by_cad_id: HashMap<&str, Vec<&str>> = HashMap::new();
    for incident in incidents {
        by_cad_id
            .entry(&incident.cad_incident_id)
            .or_default()
            .push(&incident.incident_id);
    }
    acknowledged
        .iter()
        .filter_map(|(cad_id, id)| match by_cad_id.get(cad_id.as_str()) {
            Some(ids) if ids.as_slice() == [id.as_str()] => None,
            other => Some(format!(
                "{cad_id} acknowledged as {id}, intake holds {other:?}"
            )),
        })
        .collect()
}

/// Incidents on which intake's view (routing state and team) differs from routing's record
/// (its incident state and ACTIVE assignment). Intake follows routing's events, so callers
/// retry for a while.
///
/// # Panics
/// When the record cannot be read.
pub async fn disagreements(database_url: &str, incidents: &[Incident]) -> Vec<String> {
    let mut db = PgConnection::connect(database_url).await.expect("connect");
    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT i.incident_id, i.state, a.team_id FROM routing.incidents i \
         LEFT JOIN routing.assignments a ON a.incident_id = i.incident_id AND a.state = 'ACTIVE'",
    )
    .fetch_all(&mut db)
    .await
    .expect("read routing incidents");
    let record: HashMap<String, (String, Option<String>)> = rows
        .into_iter()
        .map(|(id, state, team)| (id, (state, team)))
        .collect();
    let mut found = Vec::new();
    for incident in incidents {
        let Some(view) = incident.routing.as_ref() else {
            found.push(format!("{}: intake shows no routing", incident.incident_id));
            continue;
        };
        let shown = view
            .state()
            .as_str_name()
            .trim_start_matches("ROUTING_STATE_")
            .replace("RECOMMENDED", "ROUTED");
        match record.get(&incident.incident_id) {
            None => found.push(format!(
                "{}: intake shows {shown}, routing has no record",
                incident.incident_id
            )),
            Some((state, team)) => {
                let team_agrees = state != "ASSIGNED" || team.as_deref() == Some(&view.team_id);
                if *state != shown || !team_agrees {
                    found.push(format!(
                        "{}: intake {shown} team {:?}, routing {state} team {team:?}",
                        incident.incident_id, view.team_id
                    ));
                }
            }
        }
    }
    found
}

/// Counts of intake's routing states over `incidents`.
#[must_use]
pub fn outcomes(incidents: &[Incident]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for incident in incidents {
        let state = incident
            .routing
            .as_ref()
            .map_or("NONE", |r| r.state().as_str_name())
            .trim_start_matches("ROUTING_STATE_")
            .to_owned();
        *counts.entry(state).or_insert(0) += 1;
    }
    counts
}

/// The sum of one metric's samples in Prometheus text whose labels contain `label` (all when
/// empty).
#[must_use]
pub fn metric_sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| label.is_empty() || l.contains(label))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// What the checks found after a run of load.
#[derive(Debug)]
pub struct Verdict {
    /// What the load did.
    pub tally: Tally,
    /// Every incident intake holds for the load's CAD.
    pub incidents: Vec<Incident>,
    /// Every assignment in routing's record.
    pub intervals: Vec<Interval>,
    /// Acknowledged calls lost or doubled.
    pub lost: Vec<String>,
    /// Overlapping assignments of one team.
    pub overlapping: Vec<String>,
    /// Incidents on which intake and routing disagree.
    pub disagree: Vec<String>,
    /// Incidents still PENDING or QUEUED after the settling time.
    pub stuck: Vec<String>,
}

impl Verdict {
    /// Ends the load (the CADs stop, the teams go on clearing until nothing is PENDING or
    /// QUEUED, at most `settle`, then stop), waits up to 30 seconds for intake's view to
    /// agree with routing's record, and runs every check.
    pub async fn after(load: &mut Load, database_url: &str, settle: Duration) -> Self {
        load.stop_submitting().await;
        let stuck = load.settle(settle).await;
        let tally = load.stop().await;
        // Intake follows routing's events: give its view a moment to catch up.
        let deadline = Instant::now() + Duration::from_secs(30);
        let (incidents, disagree) = loop {
            let incidents = load.incidents().await;
            let disagree = disagreements(database_url, &incidents).await;
            if disagree.is_empty() || Instant::now() >= deadline {
                break (incidents, disagree);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let intervals = assignments(database_url).await;
        Self {
            overlapping: overlaps(&intervals),
            lost: lost_or_doubled(&tally.acknowledged, &incidents),
            tally,
            incidents,
            intervals,
            disagree,
            stuck,
        }
    }

    /// Prints the counts (with `fenced` and `busy`, the claims routing's record refused as
    /// STALE_FENCING_TOKEN and TEAM_BUSY), then asserts every guarantee.
    ///
    /// # Panics
    /// When a guarantee was broken, or the load acknowledged nothing.
    pub fn report_and_check(&self, title: &str, seconds: f64, fenced: f64, busy: f64) {
        let t = &self.tally;
        eprintln!(
            "{title}, {seconds:.0}s: {} calls acknowledged, {} never acknowledged, {} submit \
             retries, {} incidents in intake, {} assignments recorded, {} clears, claims \
             refused: {fenced} by fencing (STALE_FENCING_TOKEN), {busy} TEAM_BUSY; outcomes \
             {:?}; lost or doubled {}, overlapping {}, disagreeing {}, stuck {}",
            t.acknowledged.len(),
            t.unacknowledged,
            t.retries,
            self.incidents.len(),
            self.intervals.len(),
            t.clears,
            outcomes(&self.incidents),
            self.lost.len(),
            self.overlapping.len(),
            self.disagree.len(),
            self.stuck.len(),
        );
        assert!(!t.acknowledged.is_empty(), "the load acknowledged nothing");
        let problems: Vec<(&str, &Vec<String>)> = [
            (
                "double dispatch (overlapping assignments)",
                &self.overlapping,
            ),
            ("acknowledged calls lost or doubled", &self.lost),
            ("calls without an outcome", &self.stuck),
            ("intake and routing disagree", &self.disagree),
        ]
        .into_iter()
        .filter(|(_, list)| !list.is_empty())
        .collect();
        assert!(problems.is_empty(), "{problems:#?}");
    }
}
