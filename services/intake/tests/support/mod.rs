//! Test helpers: in-process FAKE routing and availability servers, honest to their contracts'
//! comments (idempotent by request_id, an ASSIGNED / QUEUED / RELEASED / CANCELLED event on
//! WatchAssignments for every change, resumable streams by event id), which can be stopped and
//! started on the same port; and a helper that starts intake against them.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use relay_intake::{Application, core::Intake};
use relay_proto::{
    availability::{
        Team, TeamEventKind, WatchTeamsRequest, WatchTeamsResponse,
        availability_service_server::{AvailabilityService, AvailabilityServiceServer},
    },
    common::{GeoPoint, TeamStatus},
    intake::{
        RiskFlag, SubmitIncidentRequest, WatchIncidentEventsRequest, WatchIncidentEventsResponse,
        intake_service_client::IntakeServiceClient,
    },
    routing::{
        AssignTeamRequest, AssignTeamResponse, Assignment, AssignmentEndCause, AssignmentEvent,
        AssignmentEventKind, AssignmentOutcome, AssignmentSource, AssignmentState,
        CancelRoutingRequest, CancelRoutingResponse, GetAssignmentRequest, GetAssignmentResponse,
        QueuedIncident, ReleaseTeamRequest, ReleaseTeamResponse, WatchAssignmentsRequest,
        WatchAssignmentsResponse,
        routing_service_server::{RoutingService, RoutingServiceServer},
    },
};
use relay_runtime::Config;
use relay_runtime::clock::Clock;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, codegen::BoxStream, transport::Channel};

/// How the fake routing answers AssignTeam.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    /// Claim a new team for every incident.
    Assign,
    /// Queue every incident (no team free).
    Queue,
    /// Rank teams for a dispatcher to confirm (ASSIGNMENT_MODE_RECOMMEND).
    Recommend,
}

/// A listener held for the whole test, so the port is never taken by another test. While the
/// fake is stopped, connections are accepted and dropped at once (callers get UNAVAILABLE, as
/// when a service is down); while it runs, they are handed to the gRPC server.
struct Host {
    port: u16,
    gate: Arc<Mutex<Option<tokio::sync::mpsc::Sender<tokio::net::TcpStream>>>>,
    running: tokio::sync::Mutex<Option<Running>>,
}

struct Running {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

type Incoming = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<tokio::net::TcpStream, std::io::Error>> + Send>,
>;

impl Host {
    async fn new() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let gate: Arc<Mutex<Option<tokio::sync::mpsc::Sender<tokio::net::TcpStream>>>> =
            Arc::default();
        let acceptor_gate = Arc::clone(&gate);
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let sender = acceptor_gate.lock().unwrap().clone();
                if let Some(sender) = sender {
                    let _ = sender.send(socket).await;
                }
            }
        });
        Self {
            port,
            gate,
            running: tokio::sync::Mutex::new(None),
        }
    }

    async fn start<F, Fut>(&self, serve: F)
    where
        F: FnOnce(Incoming, CancellationToken) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut running = self.running.lock().await;
        if running.is_some() {
            return;
        }
        let (sender, receiver) = tokio::sync::mpsc::channel(64);
        *self.gate.lock().unwrap() = Some(sender);
        let incoming: Incoming = Box::pin(tokio_stream::StreamExt::map(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
            Ok::<_, std::io::Error>,
        ));
        let stop = CancellationToken::new();
        let handle = tokio::spawn(serve(incoming, stop.clone()));
        *running = Some(Running { stop, handle });
    }

    async fn stop(&self) {
        *self.gate.lock().unwrap() = None;
        let running = self.running.lock().await.take();
        if let Some(running) = running {
            running.stop.cancel();
            let mut handle = running.handle;
            if tokio::time::timeout(Duration::from_secs(5), &mut handle)
                .await
                .is_err()
            {
                handle.abort();
            }
        }
    }
}

// ---- Routing -------------------------------------------------------------------------------

#[derive(Default)]
struct RoutingInner {
    script: Mutex<Option<Script>>,
    assign_calls: Mutex<Vec<AssignTeamRequest>>,
    cancel_calls: Mutex<Vec<CancelRoutingRequest>>,
    release_calls: Mutex<Vec<ReleaseTeamRequest>>,
    answers: Mutex<HashMap<String, AssignTeamResponse>>,
    active: Mutex<HashMap<String, Assignment>>,
    /// Assignments that ended, by assignment id (GetAssignment answers from both).
    ended: Mutex<HashMap<String, Assignment>>,
    events: Mutex<Vec<AssignmentEvent>>,
    new_event: Notify,
    next: Mutex<u64>,
    watchers: std::sync::atomic::AtomicUsize,
}

impl RoutingInner {
    /// Appends an event to the stream, keeping the record (active and ended assignments) in
    /// step with it, as routing's record is ahead of its stream.
    fn push(&self, mut event: AssignmentEvent) {
        if let Some(a) = &event.assignment {
            let mut active = self.active.lock().unwrap();
            if a.state == AssignmentState::Active as i32 {
                active.insert(a.incident_id.clone(), a.clone());
            } else {
                if active
                    .get(&a.incident_id)
                    .is_some_and(|x| x.assignment_id == a.assignment_id)
                {
                    active.remove(&a.incident_id);
                }
                self.ended
                    .lock()
                    .unwrap()
                    .insert(a.assignment_id.clone(), a.clone());
            }
        }
        let mut events = self.events.lock().unwrap();
        event.event_id = format!("e{:08}", events.len() + 1);
        events.push(event);
        drop(events);
        self.new_event.notify_waiters();
    }

    fn next_id(&self) -> u64 {
        let mut next = self.next.lock().unwrap();
        *next += 1;
        *next
    }
}

#[derive(Clone)]
struct RoutingSvc {
    inner: Arc<RoutingInner>,
    stop: CancellationToken,
}

#[tonic::async_trait]
impl RoutingService for RoutingSvc {
    async fn assign_team(
        &self,
        request: Request<AssignTeamRequest>,
    ) -> Result<Response<AssignTeamResponse>, Status> {
        let request = request.into_inner();
        self.inner
            .assign_calls
            .lock()
            .unwrap()
            .push(request.clone());
        if let Some(answer) = self.inner.answers.lock().unwrap().get(&request.request_id) {
            // Idempotent by request_id, as common.proto says.
            return Ok(Response::new(answer.clone()));
        }
        let script = self.inner.script.lock().unwrap().unwrap_or(Script::Assign);
        let n = self.inner.next_id();
        let answer = match script {
            Script::Assign => {
                let assignment = Assignment {
                    assignment_id: format!("asg-{n}"),
                    incident_id: request.incident_id.clone(),
                    team_id: format!("team-{n}"),
                    region: request.region.clone(),
                    distance_meters: 1200.0,
                    eta_seconds: 240,
                    fencing_token: i64::try_from(n).unwrap(),
                    state: AssignmentState::Active as i32,
                    source: AssignmentSource::AutoAssign as i32,
                    cad_system: request.cad_system.clone(),
                    ..Assignment::default()
                };
                self.inner
                    .active
                    .lock()
                    .unwrap()
                    .insert(request.incident_id.clone(), assignment.clone());
                self.inner.push(AssignmentEvent {
                    kind: AssignmentEventKind::Assigned as i32,
                    incident_id: request.incident_id.clone(),
                    cad_system: request.cad_system.clone(),
                    assignment: Some(assignment.clone()),
                    ..AssignmentEvent::default()
                });
                AssignTeamResponse {
                    outcome: AssignmentOutcome::Assigned as i32,
                    assignment: Some(assignment),
                    rationale: format!("assigned team-{n}"),
                    ..AssignTeamResponse::default()
                }
            }
            Script::Recommend => AssignTeamResponse {
                outcome: AssignmentOutcome::Recommended as i32,
                candidates: vec![relay_proto::common::Candidate {
                    team_id: format!("team-{n}"),
                    rank: 1,
                    eligible: true,
                    eta_seconds: 300,
                    ..relay_proto::common::Candidate::default()
                }],
                rationale: format!("team-{n} is nearest"),
                ..AssignTeamResponse::default()
            },
            Script::Queue => {
                let queued = QueuedIncident {
                    incident_id: request.incident_id.clone(),
                    region: request.region.clone(),
                    priority: request.priority,
                    location: request.location,
                    queued_time: Some(prost_types::Timestamp::default()),
                    escalate_time: Some(prost_types::Timestamp {
                        seconds: 4_000_000_000,
                        nanos: 0,
                    }),
                    reason: 3,
                    cad_system: request.cad_system.clone(),
                    ..QueuedIncident::default()
                };
                self.inner.push(AssignmentEvent {
                    kind: AssignmentEventKind::Queued as i32,
                    incident_id: request.incident_id.clone(),
                    cad_system: request.cad_system.clone(),
                    queued: Some(queued.clone()),
                    reason: 3,
                    ..AssignmentEvent::default()
                });
                AssignTeamResponse {
                    outcome: AssignmentOutcome::Queued as i32,
                    queued: Some(queued),
                    unserved_reason: 3,
                    rationale: "every team is busy".into(),
                    ..AssignTeamResponse::default()
                }
            }
        };
        self.inner
            .answers
            .lock()
            .unwrap()
            .insert(request.request_id, answer.clone());
        Ok(Response::new(answer))
    }

    async fn cancel_routing(
        &self,
        request: Request<CancelRoutingRequest>,
    ) -> Result<Response<CancelRoutingResponse>, Status> {
        let request = request.into_inner();
        self.inner
            .cancel_calls
            .lock()
            .unwrap()
            .push(request.clone());
        let cancelled = self
            .inner
            .active
            .lock()
            .unwrap()
            .remove(&request.incident_id);
        let cancelled = cancelled.map(|mut assignment| {
            assignment.state = AssignmentState::Cancelled as i32;
            assignment.end_cause = AssignmentEndCause::Cancelled as i32;
            assignment.end_reason = request.reason.clone();
            assignment
        });
        if let Some(assignment) = cancelled.clone() {
            self.inner.push(AssignmentEvent {
                kind: AssignmentEventKind::Cancelled as i32,
                incident_id: request.incident_id.clone(),
                cad_system: assignment.cad_system.clone(),
                assignment: Some(assignment),
                ..AssignmentEvent::default()
            });
        }
        Ok(Response::new(CancelRoutingResponse {
            assignment: cancelled,
            dequeued: None,
        }))
    }

    async fn release_team(
        &self,
        request: Request<ReleaseTeamRequest>,
    ) -> Result<Response<ReleaseTeamResponse>, Status> {
        let request = request.into_inner();
        self.inner
            .release_calls
            .lock()
            .unwrap()
            .push(request.clone());
        let mut active = self.inner.active.lock().unwrap();
        let key = active
            .iter()
            .find(|(_, a)| a.assignment_id == request.assignment_id)
            .map(|(k, _)| k.clone());
        let Some(key) = key else {
            return Err(Status::not_found("ASSIGNMENT_NOT_FOUND"));
        };
        let mut assignment = active.remove(&key).unwrap();
        drop(active);
        assignment.state = AssignmentState::Released as i32;
        assignment.end_cause = AssignmentEndCause::Released as i32;
        assignment.end_reason = request.reason.clone();
        self.inner.push(AssignmentEvent {
            kind: AssignmentEventKind::Released as i32,
            incident_id: assignment.incident_id.clone(),
            cad_system: assignment.cad_system.clone(),
            assignment: Some(assignment.clone()),
            ..AssignmentEvent::default()
        });
        Ok(Response::new(ReleaseTeamResponse {
            assignment: Some(assignment),
        }))
    }

    async fn get_assignment(
        &self,
        request: Request<GetAssignmentRequest>,
    ) -> Result<Response<GetAssignmentResponse>, Status> {
        let id = request.into_inner().assignment_id;
        let active = self
            .inner
            .active
            .lock()
            .unwrap()
            .values()
            .find(|a| a.assignment_id == id)
            .cloned();
        let found = active.or_else(|| self.inner.ended.lock().unwrap().get(&id).cloned());
        match found {
            Some(assignment) => Ok(Response::new(GetAssignmentResponse {
                assignment: Some(assignment),
            })),
            None => Err(Status::not_found("ASSIGNMENT_NOT_FOUND")),
        }
    }

    async fn watch_assignments(
        &self,
        request: Request<WatchAssignmentsRequest>,
    ) -> Result<Response<BoxStream<WatchAssignmentsResponse>>, Status> {
        let request = request.into_inner();
        let inner = Arc::clone(&self.inner);
        inner
            .watchers
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let stop = self.stop.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        // With an empty after_event_id the stream starts with the next event (the contract).
        let mut index = if request.after_event_id.is_empty() {
            inner.events.lock().unwrap().len()
        } else {
            inner
                .events
                .lock()
                .unwrap()
                .iter()
                .position(|e| e.event_id == request.after_event_id)
                .map_or(0, |p| p + 1)
        };
        tokio::spawn(async move {
            loop {
                let notified = inner.new_event.notified();
                let batch: Vec<AssignmentEvent> = inner.events.lock().unwrap()[index..].to_vec();
                for event in batch {
                    index += 1;
                    let message = WatchAssignmentsResponse { event: Some(event) };
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tx.closed() => return,
                    // Created before the batch was read, so no event slips between.
                    () = notified => {}
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// A fake RoutingService.
pub struct FakeRouting {
    inner: Arc<RoutingInner>,
    host: Host,
}

impl FakeRouting {
    /// A fake that is not started yet (its port refuses calls).
    pub async fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: Arc::default(),
            host: Host::new().await,
        })
    }

    /// A started fake.
    pub async fn started() -> Arc<Self> {
        let fake = Self::new().await;
        fake.start().await;
        fake
    }

    /// Where it listens.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.host.port)
    }

    /// Starts serving (on the same port every time).
    pub async fn start(&self) {
        let inner = Arc::clone(&self.inner);
        self.host
            .start(|incoming, stop| async move {
                let svc = RoutingSvc {
                    inner,
                    stop: stop.clone(),
                };
                let _ = tonic::transport::Server::builder()
                    .add_service(RoutingServiceServer::new(svc))
                    .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                    .await;
            })
            .await;
    }

    /// Stops serving; calls fail with UNAVAILABLE until started again.
    pub async fn stop(&self) {
        self.host.stop().await;
    }

    /// Sets how AssignTeam answers.
    pub fn script(&self, script: Script) {
        *self.inner.script.lock().unwrap() = Some(script);
    }

    /// Every AssignTeam call received.
    pub fn assign_calls(&self) -> Vec<AssignTeamRequest> {
        self.inner.assign_calls.lock().unwrap().clone()
    }

    /// Every CancelRouting call received.
    pub fn cancel_calls(&self) -> Vec<CancelRoutingRequest> {
        self.inner.cancel_calls.lock().unwrap().clone()
    }

    /// Every ReleaseTeam call received.
    pub fn release_calls(&self) -> Vec<ReleaseTeamRequest> {
        self.inner.release_calls.lock().unwrap().clone()
    }

    /// How many WatchAssignments streams were opened so far.
    pub fn watchers(&self) -> usize {
        self.inner
            .watchers
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Emits an event on WatchAssignments, as routing's queue would.
    pub fn push_event(&self, event: AssignmentEvent) {
        self.inner.push(event);
    }

    /// What routing does when a team clears to AVAILABLE: ends its active assignment with
    /// the cause TEAM_CLEARED and announces it (RELEASED). False when the team had none.
    pub fn team_cleared(&self, team_id: &str) -> bool {
        let active = self
            .inner
            .active
            .lock()
            .unwrap()
            .values()
            .find(|a| a.team_id == team_id)
            .cloned();
        let Some(mut assignment) = active else {
            return false;
        };
        assignment.state = AssignmentState::Released as i32;
        assignment.end_cause = AssignmentEndCause::TeamCleared as i32;
        assignment.end_reason = "team cleared".into();
        self.inner.push(AssignmentEvent {
            kind: AssignmentEventKind::Released as i32,
            incident_id: assignment.incident_id.clone(),
            cad_system: assignment.cad_system.clone(),
            assignment: Some(assignment),
            ..AssignmentEvent::default()
        });
        true
    }
}

// ---- Availability --------------------------------------------------------------------------

#[derive(Default)]
struct AvailabilityInner {
    events: Mutex<Vec<WatchTeamsResponse>>,
    new_event: Notify,
    watchers: std::sync::atomic::AtomicUsize,
}

#[derive(Clone)]
struct AvailabilitySvc {
    inner: Arc<AvailabilityInner>,
    stop: CancellationToken,
}

#[tonic::async_trait]
impl AvailabilityService for AvailabilitySvc {
    async fn watch_teams(
        &self,
        request: Request<WatchTeamsRequest>,
    ) -> Result<Response<BoxStream<WatchTeamsResponse>>, Status> {
        let request = request.into_inner();
        let inner = Arc::clone(&self.inner);
        inner
            .watchers
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let stop = self.stop.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let mut index = if request.after_event_id.is_empty() {
            inner.events.lock().unwrap().len()
        } else {
            inner
                .events
                .lock()
                .unwrap()
                .iter()
                .position(|e| e.event_id == request.after_event_id)
                .map_or(0, |p| p + 1)
        };
        tokio::spawn(async move {
            loop {
                let notified = inner.new_event.notified();
                let batch: Vec<WatchTeamsResponse> = inner.events.lock().unwrap()[index..].to_vec();
                for event in batch {
                    index += 1;
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tx.closed() => return,
                    // Created before the batch was read, so no event slips between.
                    () = notified => {}
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// A fake AvailabilityService (WatchTeams only).
pub struct FakeAvailability {
    inner: Arc<AvailabilityInner>,
    host: Host,
}

impl FakeAvailability {
    /// A started fake.
    pub async fn started() -> Arc<Self> {
        let fake = Arc::new(Self {
            inner: Arc::default(),
            host: Host::new().await,
        });
        fake.start().await;
        fake
    }

    /// Where it listens.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.host.port)
    }

    /// Starts serving.
    pub async fn start(&self) {
        let inner = Arc::clone(&self.inner);
        self.host
            .start(|incoming, stop| async move {
                let svc = AvailabilitySvc {
                    inner,
                    stop: stop.clone(),
                };
                let _ = tonic::transport::Server::builder()
                    .add_service(AvailabilityServiceServer::new(svc))
                    .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                    .await;
            })
            .await;
    }

    /// Stops serving.
    pub async fn stop(&self) {
        self.host.stop().await;
    }

    /// How many WatchTeams streams were opened so far.
    pub fn watchers(&self) -> usize {
        self.inner
            .watchers
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Emits a STATUS_CHANGED event for a team.
    pub fn push_status(&self, region: &str, team_id: &str, status: TeamStatus, incident_id: &str) {
        let mut events = self.inner.events.lock().unwrap();
        let event_id = format!("t{:08}", events.len() + 1);
        events.push(WatchTeamsResponse {
            event_id,
            kind: TeamEventKind::StatusChanged as i32,
            team: Some(Team {
                team_id: team_id.into(),
                region: region.into(),
                status: status as i32,
                incident_id: incident_id.into(),
                ..Team::default()
            }),
            event_time: None,
        });
        drop(events);
        self.inner.new_event.notify_waiters();
    }
}

// ---- Intake --------------------------------------------------------------------------------

/// The region every test uses.
pub const REGION: &str = "test-region";

/// The configuration of an intake on `database_url` against the fakes, before its own
/// settings: plaintext, no authentication, migrated at start, region [`REGION`].
pub fn config(
    database_url: &str,
    routing: &FakeRouting,
    availability: Option<&FakeAvailability>,
) -> relay_runtime::config::ConfigBuilder {
    Config::builder("intake")
        .set("insecure_dev", true)
        .set("listen", "127.0.0.1:0")
        .set("database_url", database_url)
        .set("routing_endpoint", routing.endpoint())
        .set(
            "availability_endpoint",
            // Without a fake, intake does not watch teams; the routing port stands in.
            availability.map_or_else(|| routing.endpoint(), |a| a.endpoint()),
        )
        .set("database.migrate_on_start", true)
        .set("intake.regions", vec![REGION])
        .set("intake.retry_base_ms", 20)
        .set("intake.retry_max_ms", 300)
        .set("intake.outbox_poll_ms", 100)
        .set("intake.consume_upstream", availability.is_some())
}

/// A running intake service.
pub struct TestIntake {
    /// A client connected to it.
    pub client: IntakeServiceClient<Channel>,
    /// Its shared state.
    pub intake: Arc<Intake>,
    /// Its address.
    pub addr: SocketAddr,
    /// Its EIDO HTTP port's address.
    pub http: SocketAddr,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl TestIntake {
    /// Starts intake on `database_url` against the fakes, with extra `[intake]` settings.
    pub async fn start(
        database_url: &str,
        routing: &FakeRouting,
        availability: Option<&FakeAvailability>,
        extra: &[(&str, serde_json::Value)],
        clock: Option<Arc<dyn Clock>>,
    ) -> Self {
        let mut builder = config(database_url, routing, availability);
        for (key, value) in extra {
            builder = builder.set(&format!("intake.{key}"), value.clone());
        }
        let config = builder.build().expect("test config");
        let app = match clock {
            Some(clock) => Application::build_with_clock(config, clock).await,
            None => Application::build(config).await,
        }
        .expect("intake builds");
        let addr = app.local_addr();
        let http = app.http_addr();
        let intake = app.intake();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let handle = tokio::spawn(async move {
            app.run_until_stopped(token.cancelled_owned())
                .await
                .expect("intake runs");
        });
        let client = IntakeServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connect to intake");
        Self {
            client,
            intake,
            addr,
            http,
            stop,
            handle,
        }
    }

    /// Stops the service and waits for it.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.handle).await;
    }
}

impl TestIntake {
    /// Submits `request` and returns the incident as answered.
    pub async fn submit(&self, request: SubmitIncidentRequest) -> relay_proto::intake::Incident {
        self.client
            .clone()
            .submit_incident(request)
            .await
            .expect("submit")
            .into_inner()
            .incident
            .expect("incident")
    }
}

/// A valid submission.
pub fn submission(cad_incident_id: &str, incident_type: &str) -> SubmitIncidentRequest {
    SubmitIncidentRequest {
        cad_system: "county-cad".into(),
        cad_incident_id: cad_incident_id.into(),
        incident_type: incident_type.into(),
        priority: 3,
        location: Some(GeoPoint {
            latitude: 44.05,
            longitude: -123.09,
        }),
        address: "1234 Main St, Eugene OR".into(),
        region: REGION.into(),
        narrative: String::new(),
        risk_flags: Vec::new(),
        received_at: Some(prost_types::Timestamp {
            seconds: chrono::Utc::now().timestamp() - 30,
            nanos: 0,
        }),
        caller: None,
        required_capabilities: Vec::new(),
        preferred_capabilities: Vec::new(),
        routing_mode: 0,
    }
}

/// `submission` with flags.
pub fn with_flags(mut request: SubmitIncidentRequest, flags: &[RiskFlag]) -> SubmitIncidentRequest {
    request.risk_flags = flags.iter().map(|f| *f as i32).collect();
    request
}

/// Opens a watch and returns its stream.
pub async fn watch(
    client: &mut IntakeServiceClient<Channel>,
    cad_system: &str,
    after_sequence: i64,
) -> tonic::Streaming<WatchIncidentEventsResponse> {
    client
        .watch_incident_events(WatchIncidentEventsRequest {
            cad_system: cad_system.into(),
            after_sequence,
        })
        .await
        .expect("watch opens")
        .into_inner()
}

// Not every test file reads error details.
#[allow(unused_imports)]
pub use relay_tests::status::{reason, violated_fields};

/// Waits (polling the store, at most `seconds`) until `check` holds.
pub async fn eventually<F, Fut>(seconds: u64, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    check().await
}
