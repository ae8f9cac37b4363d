//! The domain logic of intake: submit, update, cancel and close incidents, apply routing's
//! answers and upstream events, and compute the events each change produces. Validation of
//! requests is the handler's job; storage is behind [`IncidentStore`].

use std::{sync::Arc, time::Duration};

use prost::Message;
use relay_proto::{
    common::{AssignmentMode, GeoPoint, TeamStatus, UnservedReason},
    intake::{
        CallerContact, CancelIncidentResponse, CloseIncidentResponse, Disposition, Incident,
        IncidentEvent, IncidentEventKind, IncidentNote, IncidentState, RiskFlag, RoutingOutcome,
        RoutingState, TriageDecision, UpdateIncidentResponse,
    },
    routing::{
        AssignTeamRequest, AssignTeamResponse, AssignmentEvent, AssignmentEventKind,
        AssignmentOutcome, AssignmentState, CancelRoutingRequest, GetAssignmentRequest,
        ReleaseTeamRequest, routing_service_client::RoutingServiceClient,
    },
};
use relay_runtime::client::TracePropagation;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, broadcast};
use tonic::{Code, codegen::InterceptedService, transport::Channel};

use crate::{
    lifecycle::{self, Step, event, mark, routing_state},
    program::Programs,
    protocol::{self, Decision, Protocol},
    settings::IntakeSettings,
    store::{
        Change, ChangeOutcome, Consumed, CreateOutcome, IncidentStore, ListFilter, OutboxItem,
        OutboxKind, RequestRecord, StoreError, StoredIncident, micros_of, timestamp_of,
    },
};
use relay_runtime::clock::Clock;

/// The routing client intake uses.
pub type RoutingClient = RoutingServiceClient<InterceptedService<Channel, TracePropagation>>;

/// How many times a change is recomputed after a concurrent change to the same incident.
const MAX_CONFLICTS: usize = 32;

/// Events the sequencer moves per transaction.
pub const SEQUENCE_BATCH: i64 = 500;

/// After moving events, the sequencer waits this long for more before its next batch.
const SEQUENCER_GATHER: Duration = Duration::from_millis(5);

/// The sequencer warns when it moves an event committed longer ago than this.
const SEQUENCER_LAG_WARN_MS: i64 = 5_000;

/// Errors of applying what routing or availability reported.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Routing could not be asked about a team's previous assignment.
    #[error("routing unavailable: {0}")]
    Routing(tonic::Status),
}

/// Errors of intake's domain logic, mapped to the API in `handler.rs`.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// No incident has this id.
    #[error("incident {0} not found")]
    NotFound(String),
    /// The incident is closed or cancelled.
    #[error("incident {0} is not open")]
    NotOpen(String),
    /// expected_revision is stale.
    #[error("incident revision is {current}, not {expected}")]
    RevisionMismatch {
        /// The incident's revision.
        current: i64,
        /// The request's expected revision.
        expected: i64,
    },
    /// The dispatcher override is forbidden by the flags.
    #[error("override not allowed: {0}")]
    OverrideNotAllowed(String),
    /// The request_id was used for another request.
    #[error("request_id was already used for a different request")]
    RequestIdReused,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Too many concurrent changes to one incident.
    #[error("incident changed concurrently too often; retry")]
    Contended,
}

/// A notice that a CAD's stream has new events.
#[derive(Debug, Clone)]
pub struct EventNotice {
    /// The CAD system whose stream grew.
    pub cad_system: String,
}

/// A validated SubmitIncident request.
#[derive(Debug, Clone)]
pub struct NewIncident {
    /// See the contract.
    pub cad_system: String,
    /// See the contract.
    pub cad_incident_id: String,
    /// See the contract.
    pub incident_type: String,
    /// See the contract.
    pub priority: i32,
    /// See the contract.
    pub location: GeoPoint,
    /// See the contract.
    pub address: String,
    /// See the contract.
    pub region: String,
    /// See the contract.
    pub narrative: String,
    /// See the contract (deduplicated, in order).
    pub risk_flags: Vec<RiskFlag>,
    /// Micros since the epoch.
    pub received_at: i64,
    /// See the contract.
    pub caller: Option<CallerContact>,
    /// See the contract (deduplicated).
    pub required_capabilities: Vec<String>,
    /// See the contract (deduplicated).
    pub preferred_capabilities: Vec<String>,
    /// AUTO_ASSIGN or RECOMMEND.
    pub routing_mode: AssignmentMode,
}

/// A validated UpdateIncident request.
#[derive(Debug, Clone, Default)]
pub struct IncidentUpdate {
    /// Idempotency key.
    pub request_id: String,
    /// Digest of the request.
    pub fingerprint: String,
    /// The incident.
    pub incident_id: String,
    /// 0 for no check.
    pub expected_revision: i64,
    /// Flags to add.
    pub add_risk_flags: Vec<RiskFlag>,
    /// New location.
    pub location: Option<GeoPoint>,
    /// New address.
    pub address: Option<String>,
    /// New priority.
    pub priority: Option<i32>,
    /// New incident type.
    pub incident_type: Option<String>,
    /// Note to append.
    pub note: Option<String>,
    /// Dispatcher override.
    pub override_disposition: Option<Disposition>,
}

/// The answer to a submission.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The incident as stored (after waiting for routing).
    pub incident: Incident,
    /// Whether this call created it.
    pub created: bool,
}

/// The shared state of the intake service.
#[derive(Debug)]
pub struct Intake {
    pub(crate) store: Arc<dyn IncidentStore>,
    pub(crate) protocol: Arc<Protocol>,
    pub(crate) programs: Programs,
    pub(crate) settings: IntakeSettings,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) routing: RoutingClient,
    pub(crate) notices: broadcast::Sender<EventNotice>,
    pub(crate) outbox_wake: Notify,
    /// Wakes the sequencer: a change committed events.
    pub(crate) sequencer_wake: Notify,
    /// Regions whose routing and availability events intake consumes (or has asked to).
    pub(crate) watched_regions: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Tells the application to start consuming a region's events.
    pub(crate) new_regions: tokio::sync::mpsc::UnboundedSender<String>,
    /// Passes of the background jobs, for tests that wait for one.
    pub(crate) passes: Passes,
}

/// How many passes the outbox worker and the deadline job have finished: a test that must
/// show something did not happen waits for a pass that began after its change, instead of
/// sleeping.
#[derive(Debug, Default)]
pub struct Passes {
    outbox: std::sync::atomic::AtomicU64,
    deadlines: std::sync::atomic::AtomicU64,
}

impl Passes {
    /// Outbox passes finished (each delivered or retried every due row it read).
    #[must_use]
    pub fn outbox(&self) -> u64 {
        self.outbox.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Deadline-job passes finished (each escalated every call past its limit).
    #[must_use]
    pub fn deadlines(&self) -> u64 {
        self.deadlines.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A digest of a request for `request_id` reuse detection.
#[must_use]
pub fn fingerprint(rpc: &str, request: &impl Message) -> String {
    let mut hasher = Sha256::new();
    hasher.update(rpc.as_bytes());
    hasher.update([0]);
    hasher.update(request.encode_to_vec());
    base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        hasher.finalize(),
    )
}

fn decision_proto(decision: &Decision, version: &str, now: i64) -> TriageDecision {
    TriageDecision {
        disposition: decision.disposition as i32,
        reasons: decision.reasons.clone(),
        protocol_version: version.to_owned(),
        rule_ids: decision.rule_ids.clone(),
        required_capabilities: decision.required_capabilities.clone(),
        co_responders: decision.co_responders.clone(),
        decided_time: Some(timestamp_of(now)),
    }
}

fn routable(disposition: i32) -> bool {
    disposition == Disposition::CommunityResponse as i32
        || disposition == Disposition::CoResponse as i32
}

fn flags_of(incident: &Incident) -> Vec<RiskFlag> {
    incident
        .risk_flags
        .iter()
        .filter_map(|f| RiskFlag::try_from(*f).ok())
        .collect()
}

fn outbox_id(now: i64) -> String {
    format!("{now:020}-{}", uuid::Uuid::new_v4().simple())
}

impl Intake {
    /// How many passes the background jobs have finished.
    #[must_use]
    pub fn passes(&self) -> &Passes {
        &self.passes
    }

    /// Makes sure intake consumes `region`'s routing and availability events (its queue
    /// assignments, escalations and team statuses), starting at its first incident.
    pub(crate) fn watch_region(&self, region: &str) {
        if !self.settings.consume_upstream {
            return;
        }
        let first = self
            .watched_regions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(region.to_owned());
        if first {
            // The receiver lives as long as the application runs; after that nothing listens.
            let _ = self.new_regions.send(region.to_owned());
        }
    }

    fn now(&self) -> i64 {
        self.clock.now_micros()
    }

    /// The outbox lease in clock microseconds, lasting `outbox_lease_ms` of wall time at any
    /// clock speed (a lease guards a delivery in flight, which takes wall time).
    fn lease_micros(&self) -> i64 {
        let lease = self
            .clock
            .elapsed_in(IntakeSettings::ms(self.settings.outbox_lease_ms));
        i64::try_from(lease.as_micros()).unwrap_or(i64::MAX)
    }

    /// A change committed events: the sequencer gives them their sequences, then tells the
    /// watchers.
    fn events_queued(&self) {
        self.sequencer_wake.notify_one();
    }

    /// Intake's clock.
    #[must_use]
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Subscribes to stream-growth notices.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<EventNotice> {
        self.notices.subscribe()
    }

    /// The store (for tests and the retention job).
    #[must_use]
    pub fn store(&self) -> &Arc<dyn IncidentStore> {
        &self.store
    }

    /// The protocol in force.
    #[must_use]
    pub fn protocol(&self) -> &Protocol {
        &self.protocol
    }

    /// Whether `region` is served by this deployment.
    #[must_use]
    pub fn region_known(&self, region: &str) -> bool {
        self.settings.regions.is_empty() || self.settings.regions.iter().any(|r| r == region)
    }

    fn assign_item(&self, incident: &Incident, attempt: i64, now: i64) -> OutboxItem {
        let triage = incident.triage.clone().unwrap_or_default();
        let mut required = incident.required_capabilities.clone();
        for tag in &triage.required_capabilities {
            if !required.contains(tag) {
                required.push(tag.clone());
            }
        }
        let request = AssignTeamRequest {
            request_id: format!("assign-{}-{attempt}", incident.incident_id),
            incident_id: incident.incident_id.clone(),
            region: incident.region.clone(),
            location: incident.location,
            required_capabilities: required,
            preferred_capabilities: incident.preferred_capabilities.clone(),
            priority: incident.priority,
            mode: incident.routing_mode,
            expected_duration_seconds: None,
            cad_system: incident.cad_system.clone(),
            cad_incident_id: incident.cad_incident_id.clone(),
        };
        OutboxItem {
            outbox_id: outbox_id(now),
            incident_id: incident.incident_id.clone(),
            kind: OutboxKind::Assign,
            payload: request.encode_to_vec(),
            attempts: 0,
            next_attempt_at: now,
        }
    }

    fn cancel_item(&self, incident: &Incident, reason: &str, now: i64) -> OutboxItem {
        let request = CancelRoutingRequest {
            request_id: format!("cancel-{}-{}", incident.incident_id, incident.revision),
            incident_id: incident.incident_id.clone(),
            reason: reason.to_owned(),
        };
        OutboxItem {
            outbox_id: outbox_id(now),
            incident_id: incident.incident_id.clone(),
            kind: OutboxKind::Cancel,
            payload: request.encode_to_vec(),
            attempts: 0,
            next_attempt_at: now,
        }
    }

    fn release_item(&self, incident: &Incident, assignment_id: &str, now: i64) -> OutboxItem {
        let request = ReleaseTeamRequest {
            request_id: format!("release-{}-{}", incident.incident_id, incident.revision),
            assignment_id: assignment_id.to_owned(),
            reason: "incident closed".to_owned(),
        };
        OutboxItem {
            outbox_id: outbox_id(now),
            incident_id: incident.incident_id.clone(),
            kind: OutboxKind::Release,
            payload: request.encode_to_vec(),
            attempts: 0,
            next_attempt_at: now,
        }
    }

    /// An eligible call outside its region's program hours is answered at once: escalated
    /// with OUTSIDE_PROGRAM_HOURS for a traditional response, never queued to wait for a team
    /// that is not on duty. Returns the ESCALATED event, or None when the program operates.
    fn outside_program_hours(&self, incident: &mut Incident, now: i64) -> Option<IncidentEvent> {
        let at = chrono::DateTime::from_timestamp_micros(now).unwrap_or_default();
        if self.programs.is_open(&incident.region, at) {
            return None;
        }
        let rationale = "outside the region's program hours; send a traditional response";
        let routing = RoutingOutcome {
            state: RoutingState::Escalated as i32,
            unserved_reason: UnservedReason::OutsideProgramHours as i32,
            rationale: rationale.into(),
            update_time: Some(timestamp_of(now)),
            ..RoutingOutcome::default()
        };
        incident.routing = Some(routing.clone());
        lifecycle::unserved(incident, routing.unserved_reason);
        mark(incident, Step::Escalated, None, now);
        let mut escalated = event(incident, IncidentEventKind::Escalated, now);
        escalated.routing = Some(routing);
        escalated.detail = rationale.into();
        Some(escalated)
    }

    /// Accepts an incident (see `SubmitIncident`).
    ///
    /// # Errors
    /// When storage fails.
    pub async fn submit(self: &Arc<Self>, new: NewIncident) -> Result<Submitted, IntakeError> {
        self.watch_region(&new.region);
        let now = self.now();
        let decision = self.protocol.triage(
            &new.cad_system,
            &new.incident_type,
            &new.risk_flags,
            Disposition::Unspecified,
        );
        let triage = decision_proto(&decision, &self.protocol.version, now);
        let mut routed = routable(triage.disposition);
        let incident_id = format!("inc-{}", uuid::Uuid::now_v7());
        let mut incident = Incident {
            incident_id: incident_id.clone(),
            cad_system: new.cad_system,
            cad_incident_id: new.cad_incident_id,
            incident_type: new.incident_type,
            apco_incident_type: decision.apco_incident_type.clone(),
            priority: new.priority,
            location: Some(new.location),
            address: new.address,
            region: new.region,
            narrative: new.narrative,
            risk_flags: new.risk_flags.iter().map(|f| *f as i32).collect(),
            received_at: Some(timestamp_of(new.received_at)),
            caller: new.caller,
            required_capabilities: new.required_capabilities,
            preferred_capabilities: new.preferred_capabilities,
            routing_mode: new.routing_mode as i32,
            state: IncidentState::Open as i32,
            triage: Some(triage.clone()),
            routing: Some(RoutingOutcome {
                state: if routed {
                    RoutingState::Pending as i32
                } else {
                    RoutingState::NotRouted as i32
                },
                update_time: Some(timestamp_of(now)),
                ..RoutingOutcome::default()
            }),
            revision: 1,
            create_time: Some(timestamp_of(now)),
            update_time: Some(timestamp_of(now)),
            ..Incident::default()
        };
        let received_at = incident.received_at;
        mark(&mut incident, Step::Received, received_at, now);
        mark(&mut incident, Step::Triaged, None, now);
        let mut received = event(&incident, IncidentEventKind::Received, now);
        received.source_time = incident.received_at;
        let mut triaged = event(&incident, IncidentEventKind::Triaged, now);
        triaged.triage = Some(triage);
        let mut events = vec![received, triaged];
        if routed && let Some(escalated) = self.outside_program_hours(&mut incident, now) {
            routed = false;
            events.push(escalated);
        }
        let mut outbox = Vec::new();
        if routed {
            let mut item = self.assign_item(&incident, 1, now);
            // The submitting call delivers at once; the lease keeps the worker away meanwhile.
            item.next_attempt_at = now + self.lease_micros();
            outbox.push(item);
        }
        let stored = StoredIncident {
            incident,
            override_disposition: 0,
            team_status: 0,
        };
        match self
            .store
            .create_incident(&stored, events, outbox.clone(), now)
            .await?
        {
            CreateOutcome::Existing(existing) => Ok(Submitted {
                incident: existing.incident,
                created: false,
            }),
            CreateOutcome::Created => {
                self.events_queued();
                tracing::info!(
                    incident_id = %incident_id,
                    cad_system = %stored.incident.cad_system,
                    disposition = decision.disposition.as_str_name(),
                    "incident accepted"
                );
                if let Some(item) = outbox.pop() {
                    let intake = Arc::clone(self);
                    // The delivery runs on its own task: a caller that gives up does not stop it.
                    let known = stored.clone();
                    let delivery =
                        tokio::spawn(async move { intake.deliver_known(item, Some(known)).await });
                    let wait = IntakeSettings::ms(self.settings.submit_wait_ms);
                    match tokio::time::timeout(wait, delivery).await {
                        Ok(Ok(Some(current))) => {
                            return Ok(Submitted {
                                incident: current.incident,
                                created: true,
                            });
                        }
                        Ok(_) => {
                            if let Some(current) = self.store.get_incident(&incident_id).await? {
                                return Ok(Submitted {
                                    incident: current.incident,
                                    created: true,
                                });
                            }
                        }
                        Err(_) => {}
                    }
                }
                Ok(Submitted {
                    incident: stored.incident,
                    created: true,
                })
            }
        }
    }

    /// One incident by id.
    ///
    /// # Errors
    /// NotFound, or storage failure.
    pub async fn get(&self, incident_id: &str) -> Result<StoredIncident, IntakeError> {
        self.store
            .get_incident(incident_id)
            .await?
            .ok_or_else(|| IntakeError::NotFound(incident_id.to_owned()))
    }

    async fn remembered<R: Message + Default>(
        &self,
        request_id: &str,
        fingerprint: &str,
    ) -> Result<Option<R>, IntakeError> {
        match self.store.find_request(request_id).await? {
            None => Ok(None),
            Some(record) => replay(&record, fingerprint).map(Some),
        }
    }

    /// Applies an update (see `UpdateIncident`).
    ///
    /// # Errors
    /// See the contract.
    #[allow(clippy::too_many_lines)]
    pub async fn update(
        &self,
        update: IncidentUpdate,
    ) -> Result<UpdateIncidentResponse, IntakeError> {
        if let Some(response) = self
            .remembered(&update.request_id, &update.fingerprint)
            .await?
        {
            return Ok(response);
        }
        for _ in 0..MAX_CONFLICTS {
            let stored = self.get(&update.incident_id).await?;
            let before = &stored.incident;
            if before.state != IncidentState::Open as i32 {
                return Err(IntakeError::NotOpen(update.incident_id.clone()));
            }
            if update.expected_revision != 0 && update.expected_revision != before.revision {
                return Err(IntakeError::RevisionMismatch {
                    current: before.revision,
                    expected: update.expected_revision,
                });
            }
            let now = self.now();
            let mut after = before.clone();
            let mut next = stored.clone();
            let mut added = Vec::new();
            for flag in &update.add_risk_flags {
                if !after.risk_flags.contains(&(*flag as i32)) {
                    after.risk_flags.push(*flag as i32);
                    added.push(*flag);
                }
            }
            let mut routing_inputs_changed = false;
            if let Some(location) = update.location
                && after.location != Some(location)
            {
                after.location = Some(location);
                routing_inputs_changed = true;
            }
            if let Some(priority) = update.priority
                && after.priority != priority
            {
                after.priority = priority;
                routing_inputs_changed = true;
            }
            let mut other_changed = false;
            if let Some(address) = &update.address
                && &after.address != address
            {
                after.address.clone_from(address);
                other_changed = true;
            }
            if let Some(incident_type) = &update.incident_type
                && &after.incident_type != incident_type
            {
                after.incident_type.clone_from(incident_type);
                other_changed = true;
            }
            let flags = flags_of(&after);
            if let Some(wanted) = update.override_disposition {
                let protocol_decision = self.protocol.triage(
                    &after.cad_system,
                    &after.incident_type,
                    &flags,
                    Disposition::Unspecified,
                );
                self.protocol
                    .check_override(protocol_decision.disposition, &flags, wanted)
                    .map_err(|e| IntakeError::OverrideNotAllowed(e.0))?;
                if next.override_disposition != wanted as i32 {
                    next.override_disposition = wanted as i32;
                    other_changed = true;
                }
            }
            let retriage = !added.is_empty() || routing_inputs_changed || other_changed;
            if !retriage && update.note.is_none() {
                // Nothing changes: no new revision.
                return Ok(UpdateIncidentResponse {
                    triage: before.triage.clone(),
                    incident: Some(before.clone()),
                    safety_alert_raised: false,
                });
            }
            after.revision = before.revision + 1;
            after.update_time = Some(timestamp_of(now));
            if let Some(note) = &update.note {
                after.notes.push(IncidentNote {
                    text: note.clone(),
                    create_time: Some(timestamp_of(now)),
                });
            }
            let mut events = Vec::new();
            let mut outbox = Vec::new();
            let mut updated = event(&after, IncidentEventKind::Updated, now);
            updated.risk_flags = added.iter().map(|f| *f as i32).collect();
            events.push(updated);
            let mut safety_alert = false;
            if retriage {
                let override_in_force = Disposition::try_from(next.override_disposition)
                    .unwrap_or(Disposition::Unspecified);
                let decision = self.protocol.triage(
                    &after.cad_system,
                    &after.incident_type,
                    &flags,
                    override_in_force,
                );
                let previous = before.triage.clone().unwrap_or_default();
                let triage = decision_proto(&decision, &self.protocol.version, now);
                after
                    .apco_incident_type
                    .clone_from(&decision.apco_incident_type);
                let decision_changed = previous.disposition != triage.disposition
                    || previous.rule_ids != triage.rule_ids
                    || previous.required_capabilities != triage.required_capabilities
                    || previous.co_responders != triage.co_responders;
                if decision_changed {
                    let mut triaged = event(&after, IncidentEventKind::Triaged, now);
                    triaged.triage = Some(triage.clone());
                    events.push(triaged);
                }
                let previous_disposition =
                    Disposition::try_from(previous.disposition).unwrap_or(Disposition::NeedsReview);
                let new_co_responder = triage
                    .co_responders
                    .iter()
                    .any(|c| !previous.co_responders.contains(c));
                let state = routing_state(before);
                let team_id = before
                    .routing
                    .as_ref()
                    .map(|r| r.team_id.clone())
                    .unwrap_or_default();
                if state == RoutingState::Assigned
                    && (!added.is_empty()
                        || protocol::more_restrictive(previous_disposition, decision.disposition)
                        || new_co_responder)
                {
                    safety_alert = true;
                    lifecycle::safety_alert(&mut after, now);
                    let mut alert = event(&after, IncidentEventKind::SafetyAlert, now);
                    alert.team_id.clone_from(&team_id);
                    alert.risk_flags = added.iter().map(|f| *f as i32).collect();
                    let flag_names: Vec<&str> =
                        added.iter().map(|f| protocol::flag_name(*f)).collect();
                    alert.detail = if flag_names.is_empty() {
                        format!(
                            "triage is now {} while team {team_id} is assigned",
                            decision.disposition.as_str_name()
                        )
                    } else {
                        format!(
                            "risk flag {} added while team {team_id} is assigned; triage is now {}",
                            flag_names.join(", "),
                            decision.disposition.as_str_name()
                        )
                    };
                    // The alert goes first: the team must hear it at once.
                    events.insert(0, alert);
                }
                let now_routable = routable(triage.disposition);
                let mut routing = after.routing.clone().unwrap_or_default();
                after.triage = Some(triage.clone());
                match state {
                    RoutingState::Queued | RoutingState::Recommended | RoutingState::Pending
                        if !now_routable =>
                    {
                        routing.state = RoutingState::NotRouted as i32;
                        routing.update_time = Some(timestamp_of(now));
                        outbox.push(self.cancel_item(
                            &after,
                            "no longer eligible for a community response",
                            now,
                        ));
                    }
                    RoutingState::NotRouted
                    | RoutingState::Released
                    | RoutingState::Cancelled
                    | RoutingState::Escalated
                        if now_routable && !routable(previous.disposition) =>
                    {
                        if let Some(escalated) = self.outside_program_hours(&mut after, now) {
                            events.push(escalated);
                            routing = after.routing.clone().unwrap_or_default();
                        } else {
                            routing.state = RoutingState::Pending as i32;
                            routing.update_time = Some(timestamp_of(now));
                            outbox.push(self.assign_item(&after, after.revision, now));
                        }
                    }
                    RoutingState::Queued
                        if now_routable
                            && (routing_inputs_changed
                                || previous.required_capabilities
                                    != triage.required_capabilities) =>
                    {
                        outbox.push(self.assign_item(&after, after.revision, now));
                    }
                    _ => {}
                }
                after.routing = Some(routing);
                after.triage = Some(triage);
            }
            next.incident = after.clone();
            let response = UpdateIncidentResponse {
                triage: after.triage.clone(),
                incident: Some(after.clone()),
                safety_alert_raised: safety_alert,
            };
            let change = Change {
                incident: Some(next),
                expected_revision: before.revision,
                events,
                outbox,
                request: Some(RequestRecord {
                    request_id: update.request_id.clone(),
                    rpc: "UpdateIncident".into(),
                    fingerprint: update.fingerprint.clone(),
                    response: response.encode_to_vec(),
                }),
                now,
                ..Change::default()
            };
            match self.store.apply_change(change).await? {
                ChangeOutcome::Applied(_) => {
                    self.events_queued();
                    self.outbox_wake.notify_one();
                    tracing::info!(
                        incident_id = %after.incident_id,
                        revision = after.revision,
                        safety_alert,
                        "incident updated"
                    );
                    return Ok(response);
                }
                ChangeOutcome::RequestExists(record) => {
                    return replay(&record, &update.fingerprint);
                }
                _ => {}
            }
        }
        Err(IntakeError::Contended)
    }

    /// Cancels an incident (see `CancelIncident`).
    ///
    /// # Errors
    /// See the contract.
    pub async fn cancel(
        &self,
        request_id: &str,
        fingerprint: &str,
        incident_id: &str,
        reason: &str,
    ) -> Result<CancelIncidentResponse, IntakeError> {
        if let Some(response) = self.remembered(request_id, fingerprint).await? {
            return Ok(response);
        }
        for _ in 0..MAX_CONFLICTS {
            let stored = self.get(incident_id).await?;
            let before = &stored.incident;
            if before.state != IncidentState::Open as i32 {
                return Err(IntakeError::NotOpen(incident_id.to_owned()));
            }
            let now = self.now();
            let mut after = before.clone();
            after.revision += 1;
            after.state = IncidentState::Cancelled as i32;
            after.cancel_reason = reason.to_owned();
            after.close_time = Some(timestamp_of(now));
            mark(&mut after, Step::Cancelled, None, now);
            after.update_time = Some(timestamp_of(now));
            let mut outbox = Vec::new();
            let mut cancelled = event(&after, IncidentEventKind::Cancelled, now);
            if matches!(
                routing_state(before),
                RoutingState::Pending
                    | RoutingState::Assigned
                    | RoutingState::Queued
                    | RoutingState::Recommended
            ) {
                outbox.push(self.cancel_item(&after, "incident cancelled", now));
                let routing = after.routing.get_or_insert_with(RoutingOutcome::default);
                routing.state = RoutingState::Cancelled as i32;
                routing.update_time = Some(timestamp_of(now));
                cancelled.routing = after.routing.clone();
                cancelled.team_id = after
                    .routing
                    .as_ref()
                    .map(|r| r.team_id.clone())
                    .unwrap_or_default();
            }
            let response = CancelIncidentResponse {
                incident: Some(after.clone()),
            };
            let change = Change {
                incident: Some(StoredIncident {
                    incident: after.clone(),
                    override_disposition: stored.override_disposition,
                    team_status: 0,
                }),
                expected_revision: before.revision,
                events: vec![cancelled],
                outbox,
                request: Some(RequestRecord {
                    request_id: request_id.to_owned(),
                    rpc: "CancelIncident".into(),
                    fingerprint: fingerprint.to_owned(),
                    response: response.encode_to_vec(),
                }),
                now,
                ..Change::default()
            };
            match self.store.apply_change(change).await? {
                ChangeOutcome::Applied(_) => {
                    self.events_queued();
                    self.outbox_wake.notify_one();
                    tracing::info!(incident_id = %incident_id, "incident cancelled");
                    return Ok(response);
                }
                ChangeOutcome::RequestExists(record) => return replay(&record, fingerprint),
                _ => {}
            }
        }
        Err(IntakeError::Contended)
    }

    /// Closes an incident (see `CloseIncident`).
    ///
    /// # Errors
    /// See the contract.
    pub async fn close(
        &self,
        request_id: &str,
        fingerprint: &str,
        incident_id: &str,
        outcome: i32,
        referral_ids: Vec<String>,
        notes: String,
    ) -> Result<CloseIncidentResponse, IntakeError> {
        if let Some(response) = self.remembered(request_id, fingerprint).await? {
            return Ok(response);
        }
        for _ in 0..MAX_CONFLICTS {
            let stored = self.get(incident_id).await?;
            let before = &stored.incident;
            if before.state != IncidentState::Open as i32 {
                return Err(IntakeError::NotOpen(incident_id.to_owned()));
            }
            let now = self.now();
            let mut after = before.clone();
            after.revision += 1;
            after.state = IncidentState::Closed as i32;
            after.close_outcome = outcome;
            after.referral_ids.clone_from(&referral_ids);
            after.close_notes.clone_from(&notes);
            after.close_time = Some(timestamp_of(now));
            mark(&mut after, Step::Closed, None, now);
            after.update_time = Some(timestamp_of(now));
            let mut events = Vec::new();
            let mut outbox = Vec::new();
            match routing_state(before) {
                RoutingState::Assigned => {
                    let assignment_id = before
                        .routing
                        .as_ref()
                        .map(|r| r.assignment_id.clone())
                        .unwrap_or_default();
                    outbox.push(self.release_item(&after, &assignment_id, now));
                    let mut routing = after.routing.clone().unwrap_or_default();
                    routing.state = RoutingState::Released as i32;
                    routing.update_time = Some(timestamp_of(now));
                    after.routing = Some(routing.clone());
                    mark(&mut after, Step::Released, None, now);
                    let mut released = event(&after, IncidentEventKind::Released, now);
                    released.team_id.clone_from(&routing.team_id);
                    released.routing = Some(routing);
                    released.detail = "team released: incident closed".into();
                    events.push(released);
                }
                RoutingState::Pending | RoutingState::Queued | RoutingState::Recommended => {
                    outbox.push(self.cancel_item(&after, "incident closed", now));
                    let routing = after.routing.get_or_insert_with(RoutingOutcome::default);
                    routing.state = RoutingState::Cancelled as i32;
                    routing.update_time = Some(timestamp_of(now));
                }
                _ => {}
            }
            let mut closed = event(&after, IncidentEventKind::Closed, now);
            closed.close_outcome = outcome;
            events.push(closed);
            let response = CloseIncidentResponse {
                incident: Some(after.clone()),
            };
            let change = Change {
                incident: Some(StoredIncident {
                    incident: after.clone(),
                    override_disposition: stored.override_disposition,
                    team_status: 0,
                }),
                expected_revision: before.revision,
                events,
                outbox,
                request: Some(RequestRecord {
                    request_id: request_id.to_owned(),
                    rpc: "CloseIncident".into(),
                    fingerprint: fingerprint.to_owned(),
                    response: response.encode_to_vec(),
                }),
                now,
                ..Change::default()
            };
            match self.store.apply_change(change).await? {
                ChangeOutcome::Applied(_) => {
                    self.events_queued();
                    self.outbox_wake.notify_one();
                    tracing::info!(incident_id = %incident_id, "incident closed");
                    return Ok(response);
                }
                ChangeOutcome::RequestExists(record) => return replay(&record, fingerprint),
                _ => {}
            }
        }
        Err(IntakeError::Contended)
    }

    // ---- Outbox delivery ----------------------------------------------------------------

    /// Delivers one outbox row to routing and records the outcome, or schedules a retry.
    pub async fn deliver(&self, item: OutboxItem) {
        self.deliver_known(item, None).await;
    }

    /// As [`Self::deliver`], starting from the incident as the caller knows it (saving a read;
    /// a stale copy only costs a retry). Returns the incident when the outcome changed it.
    async fn deliver_known(
        &self,
        item: OutboxItem,
        known: Option<StoredIncident>,
    ) -> Option<StoredIncident> {
        let timeout = IntakeSettings::ms(self.settings.routing_timeout_ms);
        let mut client = self.routing.clone();
        let result = match item.kind {
            OutboxKind::Assign => match AssignTeamRequest::decode(item.payload.as_slice()) {
                Ok(request) => {
                    let mut call = tonic::Request::new(request);
                    call.set_timeout(timeout);
                    client.assign_team(call).await.map(|r| Some(r.into_inner()))
                }
                Err(error) => Err(tonic::Status::internal(error.to_string())),
            },
            OutboxKind::Cancel => match CancelRoutingRequest::decode(item.payload.as_slice()) {
                Ok(request) => {
                    let mut call = tonic::Request::new(request);
                    call.set_timeout(timeout);
                    client.cancel_routing(call).await.map(|_| None)
                }
                Err(error) => Err(tonic::Status::internal(error.to_string())),
            },
            OutboxKind::Release => match ReleaseTeamRequest::decode(item.payload.as_slice()) {
                Ok(request) => {
                    let mut call = tonic::Request::new(request);
                    call.set_timeout(timeout);
                    client.release_team(call).await.map(|_| None)
                }
                Err(error) => Err(tonic::Status::internal(error.to_string())),
            },
        };
        let recorded = match result {
            Ok(answer) => self.record_delivery(&item, answer, None, known).await,
            Err(status) if retryable(status.code()) => {
                let delay = backoff(&self.settings, item.attempts);
                let delay = self.clock.elapsed_in(delay);
                let next = self.now() + i64::try_from(delay.as_micros()).unwrap_or(i64::MAX);
                tracing::warn!(
                    incident_id = %item.incident_id,
                    kind = item.kind.as_str(),
                    attempts = item.attempts,
                    code = ?status.code(),
                    retry_in_ms = delay.as_millis(),
                    "routing delivery failed; will retry"
                );
                self.store
                    .reschedule_outbox(&item.outbox_id, next, &format!("{:?}", status.code()))
                    .await
                    .map(|()| None)
                    .map_err(ApplyError::from)
            }
            // The assignment already ended (the team cleared first): nothing left to release.
            Err(status)
                if matches!(item.kind, OutboxKind::Release)
                    && status.code() == tonic::Code::FailedPrecondition =>
            {
                tracing::debug!(
                    incident_id = %item.incident_id,
                    "assignment already ended; nothing to release"
                );
                self.record_delivery(&item, None, None, known).await
            }
            Err(status) => {
                tracing::error!(
                    incident_id = %item.incident_id,
                    kind = item.kind.as_str(),
                    code = ?status.code(),
                    "routing refused the request"
                );
                self.record_delivery(&item, None, Some(status), known).await
            }
        };
        match recorded {
            Ok(changed) => changed,
            Err(error) => {
                tracing::error!(incident_id = %item.incident_id, error = %error, "recording a routing outcome failed; the row will be retried");
                None
            }
        }
    }

    async fn record_delivery(
        &self,
        item: &OutboxItem,
        answer: Option<AssignTeamResponse>,
        refused: Option<tonic::Status>,
        mut known: Option<StoredIncident>,
    ) -> Result<Option<StoredIncident>, ApplyError> {
        let assigned = answer
            .as_ref()
            .filter(|a| a.outcome == AssignmentOutcome::Assigned as i32)
            .and_then(|a| a.assignment.as_ref());
        if item.kind == OutboxKind::Assign
            && let Some(a) = assigned
        {
            self.settle_team(&a.team_id, &item.incident_id).await?;
        }
        for _ in 0..MAX_CONFLICTS {
            let now = self.now();
            let stored = match known.take() {
                Some(known) => Some(known),
                None => self.store.get_incident(&item.incident_id).await?,
            };
            let pending = stored.as_ref().is_some_and(|s| {
                s.incident.state == IncidentState::Open as i32
                    && routing_state(&s.incident) == RoutingState::Pending
            });
            let plan = match (&stored, &answer, &refused) {
                (Some(before), Some(answer), _) if item.kind == OutboxKind::Assign && pending => {
                    let (outcome, kind) = outcome_of(answer, now);
                    match (kind, &answer.assignment) {
                        (IncidentEventKind::Assigned, Some(a)) => {
                            let kept = self.store.observations(&item.incident_id).await?;
                            lifecycle::assigned(before, a, outcome, &kept, now)
                        }
                        _ => {
                            let source = answer.queued.as_ref().and_then(|q| q.queued_time);
                            Some(lifecycle::routed(before, outcome, kind, source, now))
                        }
                    }
                }
                (Some(before), None, Some(status))
                    if item.kind == OutboxKind::Assign && pending =>
                {
                    let outcome = RoutingOutcome {
                        state: RoutingState::Escalated as i32,
                        unserved_reason: UnservedReason::RoutingRefused as i32,
                        rationale: format!(
                            "routing refused the incident ({:?}); send a traditional response",
                            status.code()
                        ),
                        ..before.incident.routing.clone().unwrap_or_default()
                    };
                    Some(lifecycle::routed(
                        before,
                        outcome,
                        IncidentEventKind::Escalated,
                        None,
                        now,
                    ))
                }
                _ => None,
            };
            let Some(plan) = plan else {
                // Nothing to change: settle the row alone.
                let change = Change {
                    settles_outbox: Some(item.outbox_id.clone()),
                    now,
                    ..Change::default()
                };
                self.store.apply_change(change).await?;
                return Ok(None);
            };
            let changed = plan.next.clone();
            match self
                .apply_plan(plan, None, Some(&item.outbox_id), now)
                .await?
            {
                ChangeOutcome::Conflict => {}
                ChangeOutcome::Applied(_) => return Ok(Some(changed)),
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Claims due outbox rows and delivers them; returns how many were claimed.
    ///
    /// # Errors
    /// When storage fails.
    pub async fn deliver_due(self: &Arc<Self>, limit: i64) -> Result<usize, StoreError> {
        let now = self.now();
        let items = self
            .store
            .claim_outbox(now, now + self.lease_micros(), limit)
            .await?;
        let count = items.len();
        let mut tasks = tokio::task::JoinSet::new();
        for item in items {
            let intake = Arc::clone(self);
            tasks.spawn(async move { intake.deliver(item).await });
        }
        while tasks.join_next().await.is_some() {}
        Ok(count)
    }

    /// The outbox worker: delivers due rows until `shutdown`.
    pub async fn run_outbox(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let poll = IntakeSettings::ms(self.settings.outbox_poll_ms);
        loop {
            let delivered = self.deliver_due(64).await;
            self.passes
                .outbox
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match delivered {
                Ok(64) => continue,
                Ok(_) => {}
                Err(error) => {
                    tracing::error!(error = %error, "outbox worker could not read the outbox")
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.outbox_wake.notified() => {}
                () = tokio::time::sleep(poll) => {}
            }
        }
    }

    // ---- Sequencing ------------------------------------------------------------------------

    /// Gives every event committed so far its per-CAD sequence (in batches of
    /// [`SEQUENCE_BATCH`]), telling this process's watchers after each batch commits. The
    /// sequencer task runs it when woken; a new watch runs it first, so that it starts after
    /// every change committed before it. Returns how many events were sequenced.
    ///
    /// # Errors
    /// When storage fails (the events stay pending; nothing is lost).
    pub async fn sequence_now(&self) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            let batch = self.store.sequence_events(SEQUENCE_BATCH).await?;
            total += batch.events;
            crate::metrics::record(&batch.moved);
            if let Some(oldest) = batch.oldest_event_time {
                let lag_ms = (self.now() - oldest) / 1000;
                if lag_ms > SEQUENCER_LAG_WARN_MS {
                    tracing::warn!(
                        lag_ms,
                        events = batch.events,
                        "sequencer is behind: events reach WatchIncidentEvents late"
                    );
                }
            }
            for cad_system in batch.cad_systems {
                // No receiver is fine: nobody is watching.
                let _ = self.notices.send(EventNotice { cad_system });
            }
            if batch.events < usize::try_from(SEQUENCE_BATCH).unwrap_or(usize::MAX) {
                return Ok(total);
            }
        }
    }

    /// The sequencer: sequences events when a change of this process commits, and every
    /// `sequencer_poll_ms` for other replicas' (and a crashed replica's) events, until
    /// `shutdown`; then once more, for the changes committed while draining.
    pub async fn run_sequencer(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let poll = IntakeSettings::ms(self.settings.sequencer_poll_ms.max(1));
        loop {
            match self.sequence_now().await {
                // Let the next changes gather for a moment: one batch and one WAL flush for
                // several changes, instead of a sequencer commit after every request commit.
                Ok(moved) if moved > 0 => {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(SEQUENCER_GATHER) => {}
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::error!(error = %error, "sequencer could not move events; will retry");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.sequencer_wake.notified() => {}
                () = tokio::time::sleep(poll) => {}
            }
        }
        if let Err(error) = self.sequence_now().await {
            tracing::warn!(error = %error, "sequencer stopped with events pending; another replica or the next start sequences them");
        }
    }

    // ---- Upstream events ------------------------------------------------------------------

    /// Records one routing assignment event (idempotent by event id).
    ///
    /// # Errors
    /// When storage fails, or routing cannot be asked about a team's previous assignment
    /// (the event is not consumed; the consumer retries it).
    pub async fn apply_assignment_event(
        &self,
        region: &str,
        upstream: &AssignmentEvent,
    ) -> Result<(), ApplyError> {
        let consumed = Consumed {
            source: "routing",
            region: region.to_owned(),
            event_id: upstream.event_id.clone(),
        };
        let kind = AssignmentEventKind::try_from(upstream.kind)
            .unwrap_or(AssignmentEventKind::Unspecified);
        if kind == AssignmentEventKind::Assigned
            && let Some(a) = &upstream.assignment
        {
            self.settle_team(&a.team_id, &upstream.incident_id).await?;
        }
        for _ in 0..MAX_CONFLICTS {
            let now = self.now();
            let Some(before) = self.store.get_incident(&upstream.incident_id).await? else {
                self.store.record_consumed(&consumed, now).await?;
                return Ok(());
            };
            let plan = match kind {
                AssignmentEventKind::Assigned => match &upstream.assignment {
                    Some(a) => {
                        let kept = self.store.observations(&upstream.incident_id).await?;
                        // Keep the candidates of the last ranking; the rationale is new.
                        let mut outcome = before.incident.routing.clone().unwrap_or_default();
                        outcome.rationale.clear();
                        lifecycle::assigned(&before, a, outcome, &kept, now)
                    }
                    None => None,
                },
                AssignmentEventKind::Queued => {
                    let queued = upstream.queued.as_ref();
                    lifecycle::queued(
                        &before,
                        upstream.reason,
                        queued.and_then(|q| q.queued_time),
                        queued.and_then(|q| q.escalate_time),
                        now,
                    )
                }
                AssignmentEventKind::Escalated => {
                    lifecycle::escalated(&before, upstream.reason, upstream.event_time, now)
                }
                AssignmentEventKind::Released => upstream
                    .assignment
                    .as_ref()
                    .and_then(|a| lifecycle::ended(&before, a, now)),
                AssignmentEventKind::Cancelled => match &upstream.assignment {
                    Some(a) => lifecycle::ended(&before, a, now),
                    None => lifecycle::dequeued(&before, now),
                },
                AssignmentEventKind::Unspecified => None,
            };
            let Some(plan) = plan else {
                self.store.record_consumed(&consumed, now).await?;
                return Ok(());
            };
            match self.apply_plan(plan, Some(&consumed), None, now).await? {
                ChangeOutcome::Conflict => {}
                _ => return Ok(()),
            }
        }
        Ok(())
    }

    /// Writes a [`lifecycle::Plan`] as one change (with the upstream event it consumes, or
    /// the outbox row it settles).
    async fn apply_plan(
        &self,
        plan: lifecycle::Plan,
        consumed: Option<&Consumed>,
        settles_outbox: Option<&str>,
        now: i64,
    ) -> Result<ChangeOutcome, StoreError> {
        let queued = !plan.events.is_empty();
        let change = Change {
            expected_revision: plan.next.incident.revision - 1,
            incident: Some(plan.next),
            events: plan.events,
            consumed: consumed.cloned(),
            settles_outbox: settles_outbox.map(str::to_owned),
            observe: plan.observe,
            applied_observations: plan.applied,
            now,
            ..Change::default()
        };
        let outcome = self.store.apply_change(change).await?;
        if queued && matches!(outcome, ChangeOutcome::Applied(_)) {
            self.events_queued();
        }
        Ok(outcome)
    }

    /// Before recording that `team_id` was assigned to `incident_id`, ends every other
    /// incident that still shows that team ASSIGNED, as routing recorded the end of its
    /// assignment (routing refuses a second active assignment of a team, so the previous one
    /// has ended in its record). This keeps the CAD's stream in causal order: the end of a
    /// team's previous call always comes before its next ASSIGNED, whichever of routing's
    /// event, the team's status and the answer to AssignTeam reached intake first.
    async fn settle_team(&self, team_id: &str, incident_id: &str) -> Result<(), ApplyError> {
        for other in self.store.assigned_to_team(team_id).await? {
            if other.incident.incident_id == incident_id {
                continue;
            }
            let assignment_id = other
                .incident
                .routing
                .as_ref()
                .map(|r| r.assignment_id.clone())
                .unwrap_or_default();
            let mut client = self.routing.clone();
            let mut call = tonic::Request::new(GetAssignmentRequest {
                assignment_id: assignment_id.clone(),
            });
            call.set_timeout(IntakeSettings::ms(self.settings.routing_timeout_ms));
            let record = match client.get_assignment(call).await {
                Ok(response) => response.into_inner().assignment,
                Err(status) if status.code() == Code::NotFound => None,
                Err(status) => return Err(ApplyError::Routing(status)),
            };
            let Some(record) = record else {
                tracing::warn!(team_id = %team_id, assignment_id = %assignment_id, "routing has no record of a team's previous assignment");
                continue;
            };
            for _ in 0..MAX_CONFLICTS {
                let now = self.now();
                let Some(before) = self.store.get_incident(&other.incident.incident_id).await?
                else {
                    break;
                };
                let Some(plan) = lifecycle::ended(&before, &record, now) else {
                    if record.state == AssignmentState::Active as i32 {
                        tracing::warn!(team_id = %team_id, assignment_id = %assignment_id, "a team's previous assignment is still active in routing's record");
                    }
                    break;
                };
                if self.apply_plan(plan, None, None, now).await? != ChangeOutcome::Conflict {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Records one availability team event (idempotent by event id). `event_time` is the
    /// team's own time of the change.
    ///
    /// # Errors
    /// When storage fails.
    pub async fn apply_team_event(
        &self,
        region: &str,
        event_id: &str,
        team: &relay_proto::availability::Team,
        event_time: Option<&prost_types::Timestamp>,
    ) -> Result<(), StoreError> {
        let consumed = Consumed {
            source: "availability",
            region: region.to_owned(),
            event_id: event_id.to_owned(),
        };
        let status = TeamStatus::try_from(team.status).unwrap_or(TeamStatus::Unspecified);
        let source_time = micros_of(event_time.or(team.update_time.as_ref()));
        for _ in 0..MAX_CONFLICTS {
            let now = self.now();
            // Only the statuses of a call matter here: the end of a call is routing's to
            // record (see `lifecycle`).
            let target = if lifecycle::busy_step(status).is_none() {
                None
            } else if team.incident_id.is_empty() {
                self.store
                    .assigned_to_team(&team.team_id)
                    .await?
                    .into_iter()
                    .next()
            } else {
                self.store.get_incident(&team.incident_id).await?
            };
            let plan = target.and_then(|before| {
                lifecycle::team_status(&before, &team.team_id, status, source_time, event_id, now)
            });
            let Some(plan) = plan else {
                self.store.record_consumed(&consumed, now).await?;
                return Ok(());
            };
            match self.apply_plan(plan, Some(&consumed), None, now).await? {
                ChangeOutcome::Conflict => {}
                _ => return Ok(()),
            }
        }
        Ok(())
    }

    /// Escalates the calls that waited past a program limit: a NEEDS_REVIEW call nobody
    /// decided within the region's review wait (REVIEW_TIMEOUT), and a recommendation nobody
    /// confirmed within the region's expiry (RECOMMENDATION_EXPIRED; routing is told to drop
    /// it). Each escalation is an ESCALATED event with the reason, so the CAD sends a
    /// traditional response. Returns how many were escalated.
    ///
    /// # Errors
    /// When storage fails.
    pub async fn run_deadlines_once(&self) -> Result<usize, StoreError> {
        const SECOND: i64 = 1_000_000;
        let now = self.now();
        let mut escalated = 0;
        let rules = [
            (
                Disposition::NeedsReview as i32,
                RoutingState::NotRouted,
                UnservedReason::ReviewTimeout,
            ),
            (
                0,
                RoutingState::Recommended,
                UnservedReason::RecommendationExpired,
            ),
        ];
        for (disposition, routing_state, reason) in rules {
            let filter = ListFilter {
                state: IncidentState::Open as i32,
                disposition,
                routing_state: routing_state as i32,
                limit: 500,
                ..ListFilter::default()
            };
            for stored in self.store.list_incidents(&filter).await? {
                let incident = &stored.incident;
                let region = &incident.region;
                let (limit, since) = if reason == UnservedReason::ReviewTimeout {
                    let triaged = incident
                        .timeline
                        .as_ref()
                        .and_then(|t| t.triaged.as_ref())
                        .and_then(|t| t.record_time.as_ref())
                        .or(incident.create_time.as_ref());
                    (
                        self.programs
                            .review_wait_seconds(region, self.settings.review_wait_seconds),
                        micros_of(triaged),
                    )
                } else {
                    let recommended = incident
                        .routing
                        .as_ref()
                        .and_then(|r| r.update_time.as_ref());
                    (
                        self.programs.recommendation_expiry_seconds(
                            region,
                            self.settings.recommendation_expiry_seconds,
                        ),
                        micros_of(recommended),
                    )
                };
                let limit = i64::try_from(limit).unwrap_or(i64::MAX / SECOND);
                if now - since < limit * SECOND {
                    continue;
                }
                let rationale = if reason == UnservedReason::ReviewTimeout {
                    format!(
                        "no dispatcher reviewed the call within {limit} s; send a traditional response"
                    )
                } else {
                    format!(
                        "no dispatcher confirmed the recommendation within {limit} s; send a traditional response"
                    )
                };
                let outcome = RoutingOutcome {
                    state: RoutingState::Escalated as i32,
                    unserved_reason: reason as i32,
                    rationale,
                    ..incident.routing.clone().unwrap_or_default()
                };
                let mut plan =
                    lifecycle::routed(&stored, outcome, IncidentEventKind::Escalated, None, now);
                let mut change = Change {
                    expected_revision: incident.revision,
                    now,
                    ..Change::default()
                };
                if reason == UnservedReason::RecommendationExpired {
                    change.outbox.push(self.cancel_item(
                        &plan.next.incident,
                        "recommendation expired",
                        now,
                    ));
                }
                change.events = std::mem::take(&mut plan.events);
                change.incident = Some(plan.next);
                // A conflict means someone acted on the call meanwhile: the next round sees.
                if let ChangeOutcome::Applied(_) = self.store.apply_change(change).await? {
                    escalated += 1;
                    tracing::warn!(incident_id = %incident.incident_id, reason = reason.as_str_name(), "call escalated past a program limit");
                }
            }
        }
        if escalated > 0 {
            self.events_queued();
            self.outbox_wake.notify_one();
        }
        Ok(escalated)
    }

    /// The deadline loop, until `shutdown`.
    pub async fn run_deadlines(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let every = self.clock.pace(IntakeSettings::ms(
            self.settings.deadline_interval_ms.max(10),
        ));
        loop {
            if let Err(error) = self.run_deadlines_once().await {
                tracing::warn!(error = %error, "deadline job failed; will retry");
            }
            self.passes
                .deadlines
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Runs the retention job once: erases personal data past its retention and old history.
    ///
    /// # Errors
    /// When storage fails.
    pub async fn run_retention_once(&self) -> Result<(u64, u64), StoreError> {
        const DAY: i64 = 86_400_000_000;
        // Retention applies to the stream: sequence what is pending first, so that old events
        // are not kept only because they were still waiting.
        self.sequence_now().await?;
        let now = self.now();
        let personal = self
            .store
            .purge_personal_data(now - self.settings.personal_data_retention_days * DAY, now)
            .await?;
        let history = self
            .store
            .purge_history(now - self.settings.event_retention_days * DAY)
            .await?;
        tracing::info!(
            incidents_purged = personal,
            history_rows_deleted = history,
            "retention job ran"
        );
        Ok((personal, history))
    }

    /// The retention loop, until `shutdown`.
    pub async fn run_retention(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let every = self.clock.pace(Duration::from_secs(
            self.settings.retention_interval_seconds.max(1),
        ));
        loop {
            if let Err(error) = self.run_retention_once().await {
                tracing::error!(error = %error, "retention job failed");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}

fn replay<R: Message + Default>(
    record: &RequestRecord,
    fingerprint: &str,
) -> Result<R, IntakeError> {
    if record.fingerprint != fingerprint {
        return Err(IntakeError::RequestIdReused);
    }
    R::decode(record.response.as_slice())
        .map_err(|e| IntakeError::Store(StoreError::Corrupt(e.to_string())))
}

fn outcome_of(answer: &AssignTeamResponse, now: i64) -> (RoutingOutcome, IncidentEventKind) {
    let mut routing = RoutingOutcome {
        candidates: answer.candidates.clone(),
        rationale: answer.rationale.clone(),
        update_time: Some(timestamp_of(now)),
        ..RoutingOutcome::default()
    };
    match AssignmentOutcome::try_from(answer.outcome).unwrap_or(AssignmentOutcome::Unspecified) {
        AssignmentOutcome::Assigned => {
            let a = answer.assignment.clone().unwrap_or_default();
            routing.state = RoutingState::Assigned as i32;
            routing.assignment_id = a.assignment_id;
            routing.team_id = a.team_id;
            routing.eta_seconds = a.eta_seconds;
            routing.distance_meters = a.distance_meters;
            (routing, IncidentEventKind::Assigned)
        }
        AssignmentOutcome::Recommended => {
            routing.state = RoutingState::Recommended as i32;
            if let Some(top) = answer.candidates.iter().find(|c| c.eligible) {
                routing.team_id.clone_from(&top.team_id);
                routing.eta_seconds = top.eta_seconds;
                routing.distance_meters = top.distance_meters;
            }
            (routing, IncidentEventKind::Recommended)
        }
        AssignmentOutcome::Queued | AssignmentOutcome::Unspecified => {
            routing.state = RoutingState::Queued as i32;
            routing.unserved_reason = answer.unserved_reason;
            routing.escalate_time = answer.queued.as_ref().and_then(|q| q.escalate_time);
            (routing, IncidentEventKind::Queued)
        }
    }
}

fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::Cancelled
            | Code::Unknown
            | Code::Internal
            | Code::Unauthenticated
    )
}

/// Exponential backoff with jitter: base * 2^(attempts-1), capped, then a random half to full.
fn backoff(settings: &IntakeSettings, attempts: i32) -> Duration {
    let exponent = u32::try_from(attempts.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    let ceiling = settings
        .retry_base_ms
        .saturating_mul(1u64 << exponent)
        .min(settings.retry_max_ms)
        .max(1);
    let jittered = rand::random_range(ceiling / 2..=ceiling);
    Duration::from_millis(jittered)
}
