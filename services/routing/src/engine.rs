//! The routing engine: the RPCs' domain logic, the queue, escalation and reconciliation,
//! over a [`Fleet`] (live team state, atomic claims) and a [`Store`] (the record).
//!
//! The order of steps is what makes routing safe:
//! 1. validate (nothing is touched on bad input), then answer a remembered request_id;
//! 2. read the incident (and its version) from the record, rank the fleet's teams;
//! 3. claim the best team in the fleet (one atomic step; a lost race tries the next);
//! 4. record the assignment, the incident change, the events and the response in one
//!    transaction that refuses a stale fencing token, a second ACTIVE assignment for the team
//!    or incident, and an incident changed since step 2;
//! 5. if the record refused or failed, undo the claim (release), so no team stays DISPATCHED
//!    to nothing; a crash between 3 and 4 is repaired by [`Engine::reconcile`].

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use prost::Message;
use relay_proto::{
    common::{Candidate, ExclusionReason, GeoPoint, TeamStatus, UnservedReason},
    routing::{
        AssignTeamRequest, AssignTeamResponse, Assignment, AssignmentEndCause, AssignmentEvent,
        AssignmentEventKind, AssignmentOutcome, AssignmentSource, AssignmentState,
        CancelRoutingRequest, CancelRoutingResponse, ConfirmAssignmentRequest,
        ConfirmAssignmentResponse, GetAssignmentRequest, ListQueueRequest, ListQueueResponse,
        QueuedIncident, ReleaseTeamRequest, ReleaseTeamResponse, RestoreAssignmentRequest,
        RestoreAssignmentResponse, WatchAssignmentsRequest,
    },
};
use relay_runtime::{
    error::ApiError,
    paging::PageTokens,
    validate::{Violations, to_timestamp},
};
use tokio::sync::Notify;

use crate::{
    error::RoutingError,
    eta::EtaEstimator,
    fleet::{Claim, ClaimRefused, Fleet, FleetTeam},
    ranking::{RankInput, RankedTeam, Ranking, rank},
    settings::{RegionSettings, RoutingSettings},
    store::{
        EndAssignment, IncidentRecord, IncidentState, IncidentWrite, LIVE_STATE_LOST, QueueCursor,
        RequestRecord, Store, StoreError, Write, end_cause_of, from_timestamp, timestamp,
    },
};
use relay_runtime::clock::Clock;

/// At most this many candidates are returned.
pub const MAX_CANDIDATES: usize = 50;
/// Teams read in the first, bounded read of a ranking (then 4x more each time, up to
/// [`MAX_READ`], before reading the whole region).
const FIRST_READ: usize = 16;
const MAX_READ: usize = 1_024;
/// How often one call retries when the incident changed under it.
const MAX_ATTEMPTS: usize = 8;
/// How long a first recommendation stays confirmable without being recorded.
const RECOMMENDATION_TTL: Duration = Duration::from_secs(3_600);
/// Capability lists hold at most this many tags.
const MAX_TAGS: usize = 32;
/// Reasons are at most this long.
const MAX_REASON: usize = 256;
/// A CAD's incident number is at most this long (characters).
const MAX_CAD_INCIDENT_ID: usize = 128;
pub use crate::store::TEAM_CLEARED;
/// The region error reason.
pub const REGION_UNKNOWN: &str = "REGION_UNKNOWN";

/// The routing engine. Cheap to clone; replicas share nothing but the fleet and the record.
#[derive(Debug, Clone)]
pub struct Engine {
    store: Arc<dyn Store>,
    fleet: Arc<dyn Fleet>,
    clock: Arc<dyn Clock>,
    settings: Arc<RoutingSettings>,
    estimator: Option<Arc<dyn EtaEstimator>>,
    page_tokens: PageTokens,
    written: Arc<Notify>,
}

/// What one attempt at claiming and recording came to.
enum Attempt<T> {
    /// Recorded.
    Done(T),
    /// The incident changed under us; read it again.
    Retry,
    /// No eligible team could be claimed.
    NoTeam,
}

/// Checks an AssignTeam request's fields (whether the region is served is checked after,
/// against the deployment) and returns its parameters.
///
/// # Errors
/// INVALID_ARGUMENT naming each bad field.
pub fn check_assign_team(request: &AssignTeamRequest) -> Result<Params, ApiError> {
    let mut v = Violations::new();
    v.id("request_id", &request.request_id);
    v.id("incident_id", &request.incident_id);
    v.id("region", &request.region);
    v.id("cad_system", &request.cad_system);
    let location = v.geo_point("location", request.location.as_ref());
    for (field, tags) in [
        ("required_capabilities", &request.required_capabilities),
        ("preferred_capabilities", &request.preferred_capabilities),
    ] {
        v.capabilities(field, tags);
        if dedupe(tags).len() > MAX_TAGS {
            v.add(field, format!("holds at most {MAX_TAGS} tags"));
        }
    }
    if !(1..=5).contains(&request.priority) {
        v.add("priority", "must be from 1 (highest) to 5");
    }
    let recommend = match relay_proto::common::AssignmentMode::try_from(request.mode) {
        Ok(relay_proto::common::AssignmentMode::Recommend) => true,
        Ok(_) => false,
        Err(_) => {
            v.add("mode", format!("{} is not a known value", request.mode));
            false
        }
    };
    if let Some(seconds) = request.expected_duration_seconds
        && !(1..=86_400).contains(&seconds)
    {
        v.add(
            "expected_duration_seconds",
            "must be from 1 to 86400 seconds",
        );
    }
    if request.cad_incident_id.chars().count() > MAX_CAD_INCIDENT_ID {
        v.add(
            "cad_incident_id",
            format!("must be at most {MAX_CAD_INCIDENT_ID} characters"),
        );
    }
    v.finish()?;
    Ok(Params {
        incident_id: request.incident_id.clone(),
        region: request.region.clone(),
        location: location.unwrap_or_default(),
        required: dedupe(&request.required_capabilities),
        preferred: dedupe(&request.preferred_capabilities),
        priority: request.priority,
        recommend,
        expected_duration_seconds: request.expected_duration_seconds,
        cad_system: request.cad_system.clone(),
        cad_incident_id: request.cad_incident_id.clone(),
    })
}

/// Checks a ConfirmAssignment request.
///
/// # Errors
/// INVALID_ARGUMENT naming each bad field.
pub fn check_confirm_assignment(request: &ConfirmAssignmentRequest) -> Result<(), ApiError> {
    let mut v = Violations::new();
    v.id("request_id", &request.request_id);
    v.id("incident_id", &request.incident_id);
    v.id("team_id", &request.team_id);
    v.finish()
}

/// Checks a ReleaseTeam request.
///
/// # Errors
/// INVALID_ARGUMENT naming each bad field.
pub fn check_release_team(request: &ReleaseTeamRequest) -> Result<(), ApiError> {
    let mut v = Violations::new();
    v.id("request_id", &request.request_id);
    v.id("assignment_id", &request.assignment_id);
    if request.reason.chars().count() > MAX_REASON {
        v.add("reason", format!("must be at most {MAX_REASON} characters"));
    }
    v.finish()
}

/// Checks a CancelRouting request.
///
/// # Errors
/// INVALID_ARGUMENT naming each bad field.
pub fn check_cancel_routing(request: &CancelRoutingRequest) -> Result<(), ApiError> {
    let mut v = Violations::new();
    v.id("request_id", &request.request_id);
    v.id("incident_id", &request.incident_id);
    if request.reason.chars().count() > MAX_REASON {
        v.add("reason", format!("must be at most {MAX_REASON} characters"));
    }
    v.finish()
}

/// Checks a GetAssignment request.
///
/// # Errors
/// INVALID_ARGUMENT naming the bad field.
pub fn check_get_assignment(request: &GetAssignmentRequest) -> Result<(), ApiError> {
    let mut v = Violations::new();
    v.id("assignment_id", &request.assignment_id);
    v.finish()
}

/// Checks a ListQueue request's fields: the effective page size.
///
/// # Errors
/// INVALID_ARGUMENT naming each bad field.
pub fn check_list_queue(request: &ListQueueRequest) -> Result<usize, ApiError> {
    let mut v = Violations::new();
    v.id("region", &request.region);
    let size = v.page_size("page_size", request.page_size);
    v.finish()?;
    Ok(size)
}

/// Checks a WatchAssignments request's fields: the sequence number to resume after, if any.
///
/// # Errors
/// INVALID_ARGUMENT naming each bad field.
pub fn check_watch_assignments(request: &WatchAssignmentsRequest) -> Result<Option<i64>, ApiError> {
    let mut v = Violations::new();
    v.id("region", &request.region);
    let after = if request.after_event_id.is_empty() {
        None
    } else {
        match request.after_event_id.parse::<i64>() {
            Ok(seq) if seq >= 0 => Some(seq),
            _ => {
                v.add("after_event_id", "is not an event id this service issued");
                None
            }
        }
    };
    v.finish()?;
    Ok(after)
}

/// A team chosen by name for an incident (ConfirmAssignment, RestoreAssignment).
#[derive(Clone, Copy)]
struct Chosen<'a> {
    request_id: &'a str,
    fingerprint: &'a [u8],
    incident_id: &'a str,
    team_id: &'a str,
    source: AssignmentSource,
}

/// The validated parameters of an AssignTeam call.
#[derive(Debug, Clone)]
pub struct Params {
    /// The incident.
    pub incident_id: String,
    /// Its region.
    pub region: String,
    /// Where it is.
    pub location: GeoPoint,
    /// Capabilities a team must have, without duplicates.
    pub required: Vec<String>,
    /// Capabilities that rank a team higher, without duplicates.
    pub preferred: Vec<String>,
    /// 1 (highest) to 5.
    pub priority: i32,
    /// RECOMMEND rather than AUTO_ASSIGN.
    pub recommend: bool,
    /// How long the call is expected to take, seconds.
    pub expected_duration_seconds: Option<i32>,
    /// The CAD that sent it.
    pub cad_system: String,
    /// The CAD's own id of the incident.
    pub cad_incident_id: String,
}

impl Params {
    /// The incident as routing records it once ranked (state ROUTED).
    fn routed(&self, version: i64, now: DateTime<Utc>) -> IncidentRecord {
        IncidentRecord {
            incident_id: self.incident_id.clone(),
            region: self.region.clone(),
            cad_system: self.cad_system.clone(),
            priority: self.priority,
            location: self.location,
            required_capabilities: self.required.clone(),
            preferred_capabilities: self.preferred.clone(),
            expected_duration_seconds: self.expected_duration_seconds,
            state: IncidentState::Routed,
            queued_time: None,
            escalate_time: None,
            unserved_reason: 0,
            version,
            update_time: now,
            cad_incident_id: self.cad_incident_id.clone(),
        }
    }
}

/// The remembered response of a request, unless the request_id was used for another request.
fn replayed<R: Message + Default>(
    record: &RequestRecord,
    fingerprint: &[u8],
) -> Result<R, RoutingError> {
    if record.fingerprint != fingerprint {
        return Err(RoutingError::RequestIdReused);
    }
    R::decode(record.response.as_slice())
        .map_err(|e| RoutingError::Store(StoreError::Backend(Box::new(e))))
}

fn dedupe(tags: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for tag in tags {
        if !out.contains(tag) {
            out.push(tag.clone());
        }
    }
    out
}

fn fingerprint(method: &str, request: &impl Message) -> Vec<u8> {
    let mut bytes = method.as_bytes().to_vec();
    bytes.push(0);
    request.encode(&mut bytes).unwrap_or_default();
    bytes
}

fn is_busy(status: TeamStatus) -> bool {
    matches!(
        status,
        TeamStatus::Dispatched
            | TeamStatus::EnRoute
            | TeamStatus::OnScene
            | TeamStatus::Transporting
    )
}

/// Whether the fleet lost the live state that held `active`'s claim: the team is gone from
/// the fleet, or its live record was created after the assignment began (availability rebuilt
/// it from the roster after Redis lost its data, so it never held this claim). A team that
/// merely cleared keeps its record, so this tells the two apart. (Both times are taken by
/// servers' clocks: a skew between availability's and routing's larger than the time between
/// a team's creation and its first claim would read as a loss; reconciliation only looks at
/// assignments older than its grace period.)
#[must_use]
pub fn lost_live_state(team: Option<&FleetTeam>, active: &Assignment) -> bool {
    // At the record's precision (microseconds), so that a team created in the same instant as
    // its first claim is not read as rebuilt.
    let assigned_at = from_timestamp(active.assigned_at.as_ref()).timestamp_micros();
    team.is_none_or(|t| t.live_since.timestamp_micros() > assigned_at)
}

/// How an ACTIVE assignment whose team is no longer working it ended, and when at the
/// latest: LIVE_STATE_LOST when the fleet lost the claim (at the rebuild), otherwise
/// TEAM_CLEARED (when the team last changed status).
fn interrupted(
    team: Option<&FleetTeam>,
    active: &Assignment,
) -> (AssignmentEndCause, &'static str, Option<DateTime<Utc>>) {
    if lost_live_state(team, active) {
        (
            AssignmentEndCause::LiveStateLost,
            LIVE_STATE_LOST,
            team.map(|t| t.live_since),
        )
    } else {
        (
            AssignmentEndCause::TeamCleared,
            TEAM_CLEARED,
            team.map(|t| t.status_since),
        )
    }
}

/// Whether `team` is busy on `incident_id`.
fn working_on(team: Option<&FleetTeam>, incident_id: &str) -> bool {
    team.is_some_and(|t| {
        is_busy(t.snapshot.status) && t.incident_id.as_deref() == Some(incident_id)
    })
}

fn duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

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

fn unserved_text(reason: UnservedReason) -> &'static str {
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

fn candidates(ranking: &Ranking) -> Vec<Candidate> {
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
fn nearer_reach(estimator: &dyn EtaEstimator, best: &RankedTeam, limit: f64) -> f64 {
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

fn minutes(seconds: u32) -> String {
    if seconds < 90 {
        format!("{seconds} s")
    } else {
        format!("{} min", (seconds + 30) / 60)
    }
}

/// The rationale of an assignment: the chosen team, and the nearest excluded team that was
/// faster, if any.
fn assigned_rationale(ranking: &Ranking, team_id: &str) -> String {
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
    /// An engine over `store` and `fleet`, timed by `clock`.
    #[must_use]
    pub fn new(
        store: Arc<dyn Store>,
        fleet: Arc<dyn Fleet>,
        clock: Arc<dyn Clock>,
        settings: RoutingSettings,
        page_tokens: PageTokens,
    ) -> Self {
        Self {
            store,
            fleet,
            clock,
            settings: Arc::new(settings),
            estimator: None,
            page_tokens,
            written: Arc::new(Notify::new()),
        }
    }

    /// Replaces the per-region great-circle estimator (e.g. with a road-network engine).
    #[must_use]
    pub fn with_estimator(mut self, estimator: Arc<dyn EtaEstimator>) -> Self {
        self.estimator = Some(estimator);
        self
    }

    /// The record.
    #[must_use]
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The fleet.
    #[must_use]
    pub fn fleet(&self) -> &Arc<dyn Fleet> {
        &self.fleet
    }

    /// Notified whenever this engine appended events (watchers also poll for other replicas').
    #[must_use]
    pub fn written(&self) -> &Arc<Notify> {
        &self.written
    }

    /// The settings.
    #[must_use]
    pub fn settings(&self) -> &RoutingSettings {
        &self.settings
    }

    /// The region's parameters, or REGION_UNKNOWN naming `field`.
    ///
    /// # Errors
    /// When the region is not configured and `any_region` is off.
    pub fn region(&self, field: &str, region: &str) -> Result<RegionSettings, RoutingError> {
        self.settings.region(region).ok_or_else(|| {
            ApiError::invalid_with_reason(
                REGION_UNKNOWN,
                field,
                format!("region {region} is not configured in this deployment"),
            )
            .into()
        })
    }

    /// The clock every time rule of the engine reads.
    #[must_use]
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The clock, to the microsecond (what the record keeps), so that answers and the
    /// record agree.
    fn now(&self) -> DateTime<Utc> {
        use chrono::SubsecRound;
        self.clock.now().trunc_subsecs(6)
    }

    async fn write(&self, write: Write) -> Result<(), StoreError> {
        let has_events = !write.events.is_empty();
        self.store.write(write).await?;
        if has_events {
            self.written.notify_waiters();
        }
        Ok(())
    }

    async fn remembered<R: Message + Default>(
        &self,
        request_id: &str,
        fingerprint: &[u8],
    ) -> Result<Option<R>, RoutingError> {
        self.store
            .request(request_id)
            .await?
            .map(|record| replayed(&record, fingerprint))
            .transpose()
    }

    #[allow(clippy::too_many_arguments)]
    async fn rank_incident(
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
                .available_near(region_name, location, region.max_distance_meters, count)
                .await?;
            let horizon = match nearest.frontier {
                None => None,
                Some(frontier) => match estimator.min_eta_beyond(frontier) {
                    Some(horizon) => Some(horizon),
                    None => break,
                },
            };
            let mut ranking = self.rank_teams(
                &nearest.teams,
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
                        .unavailable_near(region_name, location, reach, MAX_CANDIDATES)
                        .await?;
                    if unavailable.is_empty() {
                        return Ok(ranking);
                    }
                    let mut teams = nearest.teams;
                    for team in unavailable {
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
        let teams = self
            .fleet
            .teams_near(region_name, location, f64::INFINITY)
            .await?;
        Ok(self.rank_teams(&teams, region, location, required, preferred, expected, now))
    }

    #[allow(clippy::too_many_arguments)]
    fn rank_teams(
        &self,
        teams: &[crate::ranking::TeamSnapshot],
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
    async fn find_incident(
        &self,
        incident_id: &str,
    ) -> Result<Option<IncidentRecord>, RoutingError> {
        if let Some(incident) = self.store.incident(incident_id).await? {
            return Ok(Some(incident));
        }
        let Some(bytes) = self.fleet.recommendation(incident_id).await? else {
            return Ok(None);
        };
        let request = AssignTeamRequest::decode(bytes.as_slice())
            .map_err(|e| RoutingError::Store(StoreError::Backend(Box::new(e))))?;
        let params = self.validate_assign(&request)?;
        Ok(Some(params.routed(0, self.now())))
    }

    /// Undoes a claim after the record refused or failed (best effort: reconciliation
    /// repairs what this cannot).
    async fn undo_claim(&self, region: &str, team_id: &str, incident_id: &str) {
        if let Err(error) = self.fleet.release(region, team_id, incident_id, true).await {
            tracing::warn!(%region, %team_id, %incident_id, %error, "could not undo a claim; reconciliation will release the team");
        }
    }

    /// Claims the best eligible team of `ranking` for the incident and records the
    /// assignment, trying the next team when one was lost to another call.
    /// `respond` builds the remembered response (None for the queue's own assignments).
    #[allow(clippy::too_many_arguments)]
    async fn claim_and_record(
        &self,
        ranking: &mut Ranking,
        record: &IncidentRecord,
        expected_version: i64,
        source: AssignmentSource,
        region: &RegionSettings,
        request: Option<(&str, &[u8])>,
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
                .fleet
                .claim(
                    &record.region,
                    &best.team_id,
                    &record.incident_id,
                    now,
                    Some(region.staleness_limit()),
                )
                .await?;
            let Ok(Claim { fencing_token }) = claim else {
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

    async fn record_assignment(
        &self,
        record: &IncidentRecord,
        expected_version: i64,
        assignment: &Assignment,
        request: Option<(&str, &[u8])>,
        response: Vec<u8>,
    ) -> Result<(), StoreError> {
        let now = from_timestamp(assignment.assigned_at.as_ref());
        let mut incident = record.clone();
        incident.state = IncidentState::Assigned;
        incident.unserved_reason = 0;
        incident.update_time = now;
        self.write(Write {
            region: record.region.clone(),
            request: request.map(|(request_id, fingerprint)| RequestRecord {
                request_id: request_id.to_owned(),
                fingerprint: fingerprint.to_vec(),
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

    fn validate_assign(&self, request: &AssignTeamRequest) -> Result<Params, RoutingError> {
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
                            )
                            .await?;
                        return Ok(response);
                    }
                    let write = Write {
                        region: params.region.clone(),
                        request: Some(RequestRecord {
                            request_id: request.request_id.clone(),
                            fingerprint: fingerprint.clone(),
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
                    fingerprint: fingerprint.clone(),
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

    async fn replay<R: Message + Default>(
        &self,
        request_id: &str,
        fingerprint: &[u8],
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
            let team = self.fleet.team(&request.team_id).await?;
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
            incident_id,
            team_id,
            source,
        } = *chosen;
        for _ in 0..MAX_ATTEMPTS {
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
                    return Ok(wrap(active));
                }
                return Err(RoutingError::IncidentAlreadyAssigned {
                    assignment_id: active.assignment_id,
                    team_id: active.team_id,
                });
            }
            let Some(team) = self.fleet.team(team_id).await? else {
                return Err(RoutingError::TeamNotFound(team_id.to_owned()));
            };
            if team.region != incident.region {
                return Err(RoutingError::RegionMismatch {
                    team_id: team_id.to_owned(),
                    team_region: team.region,
                    incident_region: incident.region,
                });
            }
            let now = self.now();
            let claim = self
                .fleet
                .claim(&incident.region, team_id, &incident.incident_id, now, None)
                .await?;
            let fencing_token = match claim {
                Ok(claim) => claim.fencing_token,
                Err(ClaimRefused::UnknownTeam) => {
                    return Err(RoutingError::TeamNotFound(team_id.to_owned()));
                }
                Err(_) => return Err(RoutingError::TeamNotAvailable(team_id.to_owned())),
            };
            // As in `claim_and_record`: the assignment starts once the claim holds.
            let now = now.max(self.now());
            let region = self.region("region", &incident.region)?;
            let (distance_meters, eta_seconds) = team.snapshot.position.map_or((0.0, 0), |p| {
                let estimate = match &self.estimator {
                    Some(e) => e.estimate(p.point, incident.location),
                    None => region.estimator().estimate(p.point, incident.location),
                };
                (
                    estimate.distance_meters,
                    i32::try_from(estimate.eta_seconds).unwrap_or(i32::MAX),
                )
            });
            let assignment = Assignment {
                assignment_id: uuid::Uuid::now_v7().to_string(),
                incident_id: incident.incident_id.clone(),
                team_id: team_id.to_owned(),
                region: incident.region.clone(),
                distance_meters,
                eta_seconds,
                assigned_at: Some(to_timestamp(now)),
                fencing_token,
                state: AssignmentState::Active.into(),
                source: source.into(),
                cad_system: incident.cad_system.clone(),
                end_time: None,
                end_reason: String::new(),
                end_cause: 0,
                cad_incident_id: incident.cad_incident_id.clone(),
            };
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

    /// Ends an ACTIVE assignment in the record (and the incident's ASSIGNED state), with its
    /// event. `request` remembers the response. `read` is the incident when the caller read
    /// it with the assignment (the first attempt uses it; a retry reads again). Returns the
    /// ended assignment.
    #[allow(clippy::too_many_arguments)] // the three ends share one write path
    async fn end_assignment(
        &self,
        active: &Assignment,
        mut read: Option<Option<IncidentRecord>>,
        cause: AssignmentEndCause,
        reason: &str,
        cleared_at: Option<DateTime<Utc>>,
        request: Option<(&str, &[u8])>,
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
                request: request.map(|(request_id, fingerprint)| RequestRecord {
                    request_id: request_id.to_owned(),
                    fingerprint: fingerprint.to_vec(),
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
    async fn free_team(&self, region: &str, team_id: &str, incident_id: &str) {
        let engine = self.clone();
        let (region, team_id, incident_id) = (
            region.to_owned(),
            team_id.to_owned(),
            incident_id.to_owned(),
        );
        let freeing = tokio::spawn(async move {
            match engine
                .fleet
                .release(&region, &team_id, &incident_id, false)
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
                request: Some(RequestRecord {
                    request_id: request.request_id.clone(),
                    fingerprint: fingerprint.clone(),
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

    /// ListQueue.
    ///
    /// # Errors
    /// INVALID_ARGUMENT (INVALID_FIELD, INVALID_PAGE_TOKEN, REGION_UNKNOWN) or the record
    /// unavailable.
    pub async fn list_queue(
        &self,
        request: ListQueueRequest,
    ) -> Result<ListQueueResponse, RoutingError> {
        let size = check_list_queue(&request)?;
        self.region("region", &request.region)?;
        let scope = format!("ListQueue region={}", request.region);
        let cursor: Option<QueueCursor> =
            self.page_tokens
                .decode("page_token", &scope, &request.page_token)?;
        let mut page = self
            .store
            .queue(&request.region, cursor.as_ref(), size + 1)
            .await?;
        let more = page.len() > size;
        page.truncate(size);
        let next_page_token = match page.last() {
            Some(last) if more => self.page_tokens.encode(
                &scope,
                &QueueCursor {
                    priority: last.priority,
                    queued_time: last.queued_time.unwrap_or_default(),
                    incident_id: last.incident_id.clone(),
                },
            ),
            _ => String::new(),
        };
        Ok(ListQueueResponse {
            queued_incidents: page.iter().map(queued_entry).collect(),
            next_page_token,
        })
    }

    /// A team became AVAILABLE: end an ACTIVE assignment it still has in the record (it
    /// cleared), then assign it the first queued incident of its region that it suits.
    /// Returns the assignment made, if any.
    ///
    /// # Errors
    /// When the record or the fleet is unreachable.
    pub async fn on_team_available(
        &self,
        region: &str,
        team_id: &str,
    ) -> Result<Option<Assignment>, RoutingError> {
        // The record is read before the fleet: a team seen not working the incident of its
        // ACTIVE assignment after that assignment was recorded has left it (the reverse
        // order could end an assignment recorded just after a stale fleet read).
        if let Some(stale) = self.store.active_assignment_of_team(team_id).await? {
            let team = self.fleet.team(team_id).await?;
            if working_on(team.as_ref(), &stale.incident_id) {
                return Ok(None);
            }
            // A team that comes back AVAILABLE after Redis lost the live state did not clear
            // its call: that assignment ends LIVE_STATE_LOST.
            let (cause, reason, at) = interrupted(team.as_ref(), &stale);
            match self
                .end_assignment(&stale, None, cause, reason, at, None, &|_| Vec::new())
                .await
            {
                Ok(_) | Err(StoreError::NotActive) => {}
                Err(error) => return Err(error.into()),
            }
        }
        self.offer_to_queue(region, team_id).await
    }

    /// Assigns a team the first queued incident of its region that it suits, if the team
    /// is AVAILABLE. The queue is read first, so when it is empty (the usual case) that one
    /// read is all this costs.
    async fn offer_to_queue(
        &self,
        region: &str,
        team_id: &str,
    ) -> Result<Option<Assignment>, RoutingError> {
        let Some(settings) = self.settings.region(region) else {
            return Ok(None);
        };
        let mut page = self.store.queue(region, None, 100).await?;
        if page.is_empty() {
            return Ok(None);
        }
        let Some(team) = self.fleet.team(team_id).await? else {
            return Ok(None);
        };
        if team.snapshot.status != TeamStatus::Available || team.region != region {
            return Ok(None);
        }
        loop {
            let Some(last) = page.last() else {
                return Ok(None);
            };
            let after = Some(QueueCursor {
                priority: last.priority,
                queued_time: last.queued_time.unwrap_or_default(),
                incident_id: last.incident_id.clone(),
            });
            for incident in &page {
                let now = self.now();
                let mut ranking = self.rank_teams(
                    std::slice::from_ref(&team.snapshot),
                    &settings,
                    incident.location,
                    &incident.required_capabilities,
                    &incident.preferred_capabilities,
                    incident.expected_duration_seconds,
                    now,
                );
                if ranking.eligible().next().is_none() {
                    continue;
                }
                match self
                    .claim_and_record(
                        &mut ranking,
                        incident,
                        incident.version,
                        AssignmentSource::Queue,
                        &settings,
                        None,
                        &|_, _| Vec::new(),
                    )
                    .await
                {
                    Ok(Attempt::Done(assignment)) => {
                        tracing::info!(incident_id = %assignment.incident_id, team_id = %assignment.team_id, %region, "queued incident assigned");
                        return Ok(Some(assignment));
                    }
                    // The team was taken (or its claim refused): nothing more to do for it.
                    Ok(Attempt::NoTeam) | Err(RoutingError::ClaimConflict) => return Ok(None),
                    // The incident changed (another replica took it): try the next one.
                    Ok(Attempt::Retry) => {}
                    Err(error) => return Err(error),
                }
            }
            page = self.store.queue(region, after.as_ref(), 100).await?;
        }
    }

    /// Re-checks a region's queue: each queued incident, in serving order, gets the best
    /// eligible team if one is free now.
    ///
    /// # Errors
    /// When the record or the fleet is unreachable.
    pub async fn recheck_queue(&self, region: &str) -> Result<usize, RoutingError> {
        let Some(settings) = self.settings.region(region) else {
            return Ok(0);
        };
        let mut assigned = 0;
        let page = self.store.queue(region, None, 500).await?;
        if page.is_empty() {
            return Ok(0);
        }
        // One fleet read for the whole page; claims re-check every team atomically.
        let mut teams = self
            .fleet
            .teams_near(region, page[0].location, f64::INFINITY)
            .await?;
        for incident in &page {
            if !teams.iter().any(|t| t.status == TeamStatus::Available) {
                break;
            }
            let now = self.now();
            let mut ranking = self.rank_teams(
                &teams,
                &settings,
                incident.location,
                &incident.required_capabilities,
                &incident.preferred_capabilities,
                incident.expected_duration_seconds,
                now,
            );
            if ranking.eligible().next().is_none() {
                continue;
            }
            match self
                .claim_and_record(
                    &mut ranking,
                    incident,
                    incident.version,
                    AssignmentSource::Queue,
                    &settings,
                    None,
                    &|_, _| Vec::new(),
                )
                .await
            {
                Ok(Attempt::Done(assignment)) => {
                    assigned += 1;
                    if let Some(taken) = teams.iter_mut().find(|t| t.team_id == assignment.team_id)
                    {
                        taken.status = TeamStatus::Dispatched;
                    }
                }
                Ok(Attempt::Retry | Attempt::NoTeam) | Err(RoutingError::ClaimConflict) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(assigned)
    }

    /// Escalates every queued incident whose escalate_time has come (by this engine's clock),
    /// each exactly once across replicas. Returns how many this call escalated.
    ///
    /// # Errors
    /// When the record is unreachable.
    pub async fn escalate_due(&self) -> Result<usize, RoutingError> {
        let now = self.now();
        let mut escalated = 0;
        loop {
            let due = self.store.due_escalations(now, 100).await?;
            if due.is_empty() {
                return Ok(escalated);
            }
            let mut progressed = false;
            for incident in due {
                let queued = queued_entry(&incident);
                let mut record = incident.clone();
                record.state = IncidentState::Escalated;
                record.update_time = now;
                let write = Write {
                    region: incident.region.clone(),
                    incident: Some(IncidentWrite {
                        record,
                        expected_version: incident.version,
                    }),
                    events: vec![AssignmentEvent {
                        event_id: String::new(),
                        kind: AssignmentEventKind::Escalated.into(),
                        incident_id: incident.incident_id.clone(),
                        cad_system: incident.cad_system.clone(),
                        assignment: None,
                        queued: Some(queued),
                        reason: incident.unserved_reason,
                        event_time: Some(to_timestamp(now)),
                        cad_incident_id: incident.cad_incident_id.clone(),
                    }],
                    ..Write::default()
                };
                match self.write(write).await {
                    Ok(()) => {
                        escalated += 1;
                        progressed = true;
                        tracing::warn!(incident_id = %incident.incident_id, region = %incident.region, "queued incident escalated");
                        crate::metrics::escalated(&incident.region);
                    }
                    // Another replica (or a call) changed it first; it is re-read next round.
                    Err(StoreError::VersionConflict) => progressed = true,
                    Err(error) => return Err(error.into()),
                }
            }
            if !progressed {
                return Ok(escalated);
            }
        }
    }

    /// Compares the record with the fleet in `region` and repairs what a crash or a lost
    /// Redis write left behind, for states older than `grace`:
    /// - a busy team whose incident has no ACTIVE assignment of that team in the record (a
    ///   replica died between claiming and recording) is released;
    /// - an ACTIVE assignment whose team is no longer busy on its incident (the team cleared,
    ///   or the fleet lost the claim) is ended as RELEASED ("team cleared"), cause
    ///   TEAM_CLEARED.
    ///
    /// Returns (teams released, assignments ended).
    ///
    /// # Errors
    /// When the record or the fleet is unreachable.
    pub async fn reconcile(
        &self,
        region: &str,
        grace: Duration,
    ) -> Result<(usize, usize), RoutingError> {
        let now = self.now();
        let grace = duration(grace);
        let mut released = 0;
        for team in self.fleet.busy_teams(region).await? {
            let FleetTeam {
                snapshot,
                incident_id,
                status_since,
                ..
            } = team;
            let Some(incident_id) = incident_id else {
                continue;
            };
            if now.signed_duration_since(status_since) < grace {
                continue;
            }
            let recorded = self
                .store
                .active_assignment_of_team(&snapshot.team_id)
                .await?;
            if recorded.is_some_and(|a| a.incident_id == incident_id) {
                continue;
            }
            if self
                .fleet
                .release(region, &snapshot.team_id, &incident_id, true)
                .await?
            {
                tracing::warn!(%region, team_id = %snapshot.team_id, %incident_id, "released a team claimed without a recorded assignment");
                released += 1;
            }
        }
        let mut ended = 0;
        for active in self.store.active_assignments(region).await? {
            if now.signed_duration_since(from_timestamp(active.assigned_at.as_ref())) < grace {
                continue;
            }
            let team = self.fleet.team(&active.team_id).await?;
            if working_on(team.as_ref(), &active.incident_id) {
                continue;
            }
            // TEAM_CLEARED when the team's live record held the claim and the team left the
            // call (a team seen busy on another call left this one no later than it took that
            // one; otherwise, when it last changed status); LIVE_STATE_LOST when its live
            // record was rebuilt after the assignment began (Redis lost its data), never the
            // team clearing, which it did not.
            let (cause, reason, at) = interrupted(team.as_ref(), &active);
            match self
                .end_assignment(&active, None, cause, reason, at, None, &|_| Vec::new())
                .await
            {
                Ok(_) => {
                    tracing::warn!(%region, team_id = %active.team_id, incident_id = %active.incident_id, %reason, "ended an assignment whose team is no longer on the incident");
                    ended += 1;
                }
                Err(StoreError::NotActive) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok((released, ended))
    }

    /// Every incident queued in `region`, in serving order (for the queue gauges).
    async fn queued(&self, region: &str) -> Result<Vec<IncidentRecord>, RoutingError> {
        let mut all: Vec<IncidentRecord> = Vec::new();
        loop {
            let cursor = all.last().map(|last| QueueCursor {
                priority: last.priority,
                queued_time: last.queued_time.unwrap_or_default(),
                incident_id: last.incident_id.clone(),
            });
            let page = self.store.queue(region, cursor.as_ref(), 500).await?;
            let full = page.len() == 500;
            all.extend(page);
            if !full {
                return Ok(all);
            }
        }
    }

    /// One round of upkeep: escalations, then for each region the record knows (and each
    /// configured one) a queue re-check and reconciliation, then pruning of events and
    /// remembered responses older than the retention window.
    ///
    /// # Errors
    /// When the record or the fleet is unreachable.
    pub async fn maintain(&self) -> Result<(), RoutingError> {
        // Events nobody is watching still get their numbers.
        self.store.sequence_events().await?;
        self.escalate_due().await?;
        let mut regions = self.store.regions().await?;
        regions.extend(self.settings.regions.keys().cloned());
        regions.sort();
        regions.dedup();
        // The grace covers a replica's own work between a claim and its record (wall time),
        // so it lasts as long on the wall clock at any clock speed.
        let grace = self
            .clock
            .elapsed_in(Duration::from_secs(self.settings.reconcile_grace_seconds));
        let mut waiting = Vec::new();
        for region in regions {
            self.recheck_queue(&region).await?;
            self.reconcile(&region, grace).await?;
            waiting.extend(self.queued(&region).await?);
        }
        crate::metrics::queue(&waiting, self.now());
        let (pending, oldest) = self.store.pending_events().await?;
        crate::metrics::sequencer(pending, oldest, self.now());
        let retention = Duration::from_secs(self.settings.event_retention_hours * 3_600);
        self.store.prune(self.now() - duration(retention)).await?;
        Ok(())
    }
}
