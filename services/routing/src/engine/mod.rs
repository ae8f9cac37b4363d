//! The routing engine: the RPCs' domain logic, the queue, escalation and reconciliation,
//! over a [`DispatchStore`] (live team state, atomic claims) and a [`Store`] (the record).
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
use relay_fleet::{
    ClaimError, DispatchStore, FleetTeam, ReleaseError, ReleaseOutcome,
    model::{Position, is_busy},
};
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
    audit::AuditRecord,
    error::ApiError,
    idempotency::{self, ReplayError, fingerprint},
    paging::PageTokens,
    validate::{Violations, to_timestamp},
};
use tokio::sync::Notify;

use crate::{
    error::RoutingError,
    eta::EtaEstimator,
    ranking::{RankInput, RankedTeam, Ranking, TeamSnapshot, rank},
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
    fleet: Arc<dyn DispatchStore>,
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

mod assign;
mod check;
mod claim;
mod confirm;
mod maintenance;
mod queue;

pub use assign::queued_entry;
use check::replayed;

tokio::task_local! {
    /// The audit record of the RPC being served (the handler scopes it around the engine
    /// call): [`Engine::write`] commits it with the call's own write, naming what it touched.
    pub static CALL_AUDIT: AuditRecord;
}

/// `record` naming the incident, team and assignment `write` touches.
fn audit_of(record: &AuditRecord, write: &Write) -> AuditRecord {
    let mut record = record.clone();
    let incident = write.incident.as_ref().map(|i| &i.record.incident_id);
    let assignment = write.new_assignment.as_ref();
    let named = incident
        .map(|id| format!("incident:{id}"))
        .into_iter()
        .chain(assignment.map(|a| format!("team:{}", a.team_id)))
        .chain(assignment.map(|a| format!("assignment:{}", a.assignment_id)))
        .chain(
            write
                .end_assignment
                .as_ref()
                .map(|e| format!("assignment:{}", e.assignment_id)),
        );
    record.resources.extend(named);
    record
}
pub use check::{
    Params, check_assign_team, check_cancel_routing, check_confirm_assignment,
    check_get_assignment, check_list_queue, check_release_team, check_watch_assignments,
};

/// A point of the API as the fleet's geometry takes it.
fn position(point: GeoPoint) -> Position {
    Position::new(point.latitude, point.longitude)
}

/// Why the fleet refused a claim (nothing changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// No team has this id, in any region.
    UnknownTeam,
    /// The team is not AVAILABLE (another call claimed it, or it went off duty), its position
    /// is older than the limit, or it belongs to another region.
    Unavailable,
}

/// What a claim is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClaimFor {
    /// A call (AssignTeam, ConfirmAssignment): the team must be AVAILABLE, with a position no
    /// older than the limit when one is given.
    Call { max_position_age: Option<Duration> },
    /// RestoreAssignment: the team may also be OFF_DUTY, as a rebuild of the live state left
    /// it ([`DispatchStore::claim_to_restore`]).
    Restore,
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

impl Engine {
    /// An engine over `store` and `fleet`, timed by `clock`.
    #[must_use]
    pub fn new(
        store: Arc<dyn Store>,
        fleet: Arc<dyn DispatchStore>,
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

    /// The fleet: the teams' live state, where teams are claimed.
    #[must_use]
    pub fn fleet(&self) -> &Arc<dyn DispatchStore> {
        &self.fleet
    }

    /// Claims `team_id` for the incident (see [`DispatchStore::claim`]) as `how` says: its
    /// fencing token, or why it was refused.
    async fn claim_team(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        now: DateTime<Utc>,
        how: ClaimFor,
    ) -> Result<Result<i64, Refused>, RoutingError> {
        let claimed = match how {
            ClaimFor::Call { max_position_age } => {
                self.fleet
                    .claim(region, team_id, incident_id, None, now, max_position_age)
                    .await
            }
            ClaimFor::Restore => {
                self.fleet
                    .claim_to_restore(region, team_id, incident_id, now)
                    .await
            }
        };
        match claimed {
            Ok(claim) => Ok(Ok(claim.fencing_token)),
            // Not in this region: tell a team of another region from no team at all.
            Err(ClaimError::NotFound) => Ok(Err(match self.fleet.fleet_team(team_id).await? {
                Some(_) => Refused::Unavailable,
                None => Refused::UnknownTeam,
            })),
            // No expected revision is passed, so a mismatch cannot happen; it would be a lost
            // race.
            Err(
                ClaimError::NotAvailable { .. }
                | ClaimError::StalePosition
                | ClaimError::RevisionMismatch { .. },
            ) => Ok(Err(Refused::Unavailable)),
            Err(ClaimError::Store(error)) => Err(error.into()),
        }
    }

    /// Makes a team busy on `incident_id` AVAILABLE; whether it did. With `announce` false,
    /// the team is not announced to this replica's queue drain (see
    /// [`DispatchStore::release_quietly`]).
    async fn release_claim(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        announce: bool,
    ) -> Result<bool, RoutingError> {
        let now = self.now();
        let outcome = if announce {
            self.fleet.release(region, team_id, incident_id, now).await
        } else {
            self.fleet
                .release_quietly(region, team_id, incident_id, now)
                .await
        };
        match outcome {
            Ok(ReleaseOutcome::Released(_)) => Ok(true),
            Ok(ReleaseOutcome::AlreadyReleased(_))
            | Err(ReleaseError::NotFound | ReleaseError::NotOnIncident { .. }) => Ok(false),
            Err(ReleaseError::Store(error)) => Err(error.into()),
        }
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

    async fn write(&self, mut write: Write) -> Result<(), StoreError> {
        let has_events = !write.events.is_empty();
        // The call's own write (the one carrying its idempotency record) commits its record.
        if write.request.is_some() && write.audit.is_none() {
            write.audit = CALL_AUDIT.try_with(|record| audit_of(record, &write)).ok();
        }
        self.store.write(write).await?;
        if has_events {
            self.written.notify_waiters();
        }
        Ok(())
    }

    async fn remembered<R: Message + Default>(
        &self,
        request_id: &str,
        fingerprint: &str,
    ) -> Result<Option<R>, RoutingError> {
        self.store
            .request(request_id)
            .await?
            .map(|record| replayed(&record, fingerprint))
            .transpose()
    }
}
