//! The domain operations of availability over a [`TeamStore`] (live state) and a
//! [`RosterStore`] (durable roster), with an injectable [`Clock`]. Handlers validate requests
//! and call these; nothing here sees protobuf, SQL or Redis commands.

use relay_runtime::audit::AuditRecord;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use relay_runtime::clock::Clock;

use relay_fleet::{
    ChangeError, LocationOutcome, LocationReport, Recorded, RequestRecord, TeamPage, TeamStore,
    UpsertOutcome,
    live_state::{self, LiveCheck, LiveState},
    model::{Team, TeamDefinition, TeamStatus},
};

use crate::{
    error::AvailabilityError,
    roster::{RosterEntry, RosterStore},
};

/// The availability domain: roster and live state.
#[derive(Clone)]
pub struct Availability {
    store: Arc<dyn TeamStore>,
    roster: Arc<dyn RosterStore>,
    clock: Arc<dyn Clock>,
    live: Arc<LiveState>,
    /// When the loss watch last read the roster's regions.
    regions_read: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

/// How often the loss watch reads the roster's regions (see [`Availability::refresh_regions`]).
const REGIONS_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl std::fmt::Debug for Availability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Availability").finish_non_exhaustive()
    }
}

impl Availability {
    /// The domain over these stores and clock.
    #[must_use]
    pub fn new(
        store: Arc<dyn TeamStore>,
        roster: Arc<dyn RosterStore>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            roster,
            clock,
            live: Arc::default(),
            regions_read: Arc::default(),
        }
    }

    /// What this replica knows of the live state's epoch (loss detection).
    #[must_use]
    pub fn live(&self) -> &Arc<LiveState> {
        &self.live
    }

    /// A team the roster may hold is missing from the live store: check for a loss now.
    fn missing(&self) -> AvailabilityError {
        self.live.wake();
        AvailabilityError::TeamNotFound
    }

    /// The live store (routing uses the same trait).
    #[must_use]
    pub fn store(&self) -> &Arc<dyn TeamStore> {
        &self.store
    }

    /// The clock.
    #[must_use]
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Now, by the clock.
    #[must_use]
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Recreates in the live store every roster team it lacks (after Redis lost its data),
    /// with revisions and fencing counters above any issued before
    /// ([`relay_fleet::live_state::seed`]). Returns how many teams were recreated.
    ///
    /// # Errors
    /// When the roster or the live store fails.
    pub async fn rebuild(&self) -> Result<usize, AvailabilityError> {
        let roster = self.roster.load_all().await?;
        self.live
            .note_regions(roster.iter().map(|e| e.definition.region.clone()));
        let entries = roster.into_iter().map(|e| (e.definition, e.revision));
        Ok(live_state::seed(self.store.as_ref(), entries, self.now()).await?)
    }

    /// Tells the loss watch of every region the roster has (regions other replicas created
    /// since this one last read the roster).
    ///
    /// # Errors
    /// When the roster cannot be read.
    pub async fn refresh_regions(&self) -> Result<(), AvailabilityError> {
        let roster = self.roster.load_all().await?;
        self.live
            .note_regions(roster.into_iter().map(|e| e.definition.region));
        Ok(())
    }

    /// Builds the live state from the roster and adopts the epoch (start, and after a loss;
    /// see [`relay_fleet::live_state`]). Returns how many teams were recreated.
    ///
    /// # Errors
    /// When the roster or the live store fails.
    pub async fn build_live_state(&self) -> Result<usize, AvailabilityError> {
        self.live
            .build(self.store.as_ref(), || self.rebuild())
            .await
    }

    /// Checks the live-state epoch once and rebuilds after a loss, counting losses and
    /// recreated teams in this service's metrics.
    ///
    /// # Errors
    /// When the roster or the live store fails (the next check retries).
    pub async fn check_live_state(&self) -> Result<LiveCheck, AvailabilityError> {
        let due = self
            .regions_read
            .lock()
            .is_ok_and(|read| read.is_none_or(|at| at.elapsed() >= REGIONS_EVERY));
        if due {
            // A roster that cannot be read now is read at the next check; the stamps of the
            // regions already known are checked meanwhile.
            match self.refresh_regions().await {
                Ok(()) => {
                    if let Ok(mut read) = self.regions_read.lock() {
                        *read = Some(std::time::Instant::now());
                    }
                }
                Err(error) => tracing::warn!(%error, "could not read the roster's regions"),
            }
        }
        self.live
            .check(
                self.store.as_ref(),
                || self.rebuild(),
                crate::metrics::live_state_lost,
                crate::metrics::live_state_rebuilt,
            )
            .await
    }

    /// Creates or updates a team's roster fields under a request id, in the durable roster and
    /// the live store, so that a failed upsert records nothing (common.proto): the roster change
    /// is a transaction that writes the new fields first (proving the database answers, and
    /// locking the team's row so concurrent upserts of one team reach both stores in one
    /// order), then the live store changes (writing the request's idempotency record in the
    /// same step), then the transaction commits with the live store's revision. A refusal or a
    /// failure before the commit rolls the roster back and leaves the live store as it was.
    /// Only a commit that fails after the live store changed leaves the two apart; a retry
    /// converges: it replays the recorded answer and, under the same row lock, writes the
    /// live team's current definition to the roster. A creation whose commit fails is undone
    /// in the live store ([`TeamStore::undo_create`]), so only an update can stay apart from
    /// the roster until its retry.
    ///
    /// # Errors
    /// The store's refusals, or a storage failure.
    pub async fn upsert(
        &self,
        definition: &TeamDefinition,
        expected_revision: Option<i64>,
        request: &RequestRecord<'_>,
    ) -> Result<Recorded<UpsertOutcome>, AvailabilityError> {
        self.upsert_audited(definition, expected_revision, request, None)
            .await
    }

    /// [`Self::upsert`], committing `audit` (the call's record) with the roster change when
    /// the request changed something (a replay records nothing).
    ///
    /// # Errors
    /// As [`Self::upsert`].
    pub async fn upsert_audited(
        &self,
        definition: &TeamDefinition,
        expected_revision: Option<i64>,
        request: &RequestRecord<'_>,
        audit: Option<&AuditRecord>,
    ) -> Result<Recorded<UpsertOutcome>, AvailabilityError> {
        let mut roster = self.roster.begin().await?;
        // Revision 0 never lowers a stored revision (the save keeps the greater one).
        roster
            .save(&RosterEntry {
                definition: definition.clone(),
                revision: 0,
            })
            .await?;
        let recorded = self
            .store
            .upsert_team_once(definition, expected_revision, self.now(), request)
            .await?;
        let team = match &recorded {
            Recorded::Applied(outcome) => outcome.team.clone(),
            Recorded::Replayed(_) => match self.store.get_team(&definition.team_id).await? {
                Some(team) => team,
                None => return Ok(recorded),
            },
            // Nothing changed: the roster write is rolled back.
            Recorded::Reused => return Ok(recorded),
        };
        let committed = async {
            roster
                .save(&RosterEntry {
                    definition: team.definition(),
                    revision: team.revision,
                })
                .await?;
            if let (Some(record), Recorded::Applied(_)) = (audit, &recorded) {
                roster.audit(record).await?;
            }
            roster.commit().await
        }
        .await;
        if let Err(error) = committed {
            // The roster refused or lost the commit after the live store changed: a team this
            // request created is removed again (with its record), so the failure records
            // nothing and the retry creates it whole. An update stays in the live store until
            // the retry writes its roster row (it replays the record under the row lock).
            if let Recorded::Applied(outcome) = &recorded
                && outcome.created
            {
                match self.store.undo_create(&team, request, self.now()).await {
                    Ok(true) => {
                        tracing::warn!(team_id = %team.team_id, "roster commit failed; the team's creation was undone in the live store");
                    }
                    Ok(false) => {}
                    Err(undo) => {
                        tracing::warn!(team_id = %team.team_id, error = %undo, "roster commit failed and the live store could not undo the team's creation; the retry converges");
                    }
                }
            }
            return Err(error.into());
        }
        // The team is in the live store: its region's epoch stamp is now worth checking.
        self.live.note_regions([team.region.clone()]);
        Ok(recorded)
    }

    /// One team.
    ///
    /// # Errors
    /// `TeamNotFound`, or a storage failure.
    pub async fn get(&self, team_id: &str) -> Result<Team, AvailabilityError> {
        self.store
            .get_team(team_id)
            .await?
            .ok_or_else(|| self.missing())
    }

    /// A page of teams.
    ///
    /// # Errors
    /// A storage failure.
    pub async fn list(
        &self,
        region: Option<&str>,
        status: Option<TeamStatus>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<TeamPage, AvailabilityError> {
        Ok(self.store.list_teams(region, status, after, limit).await?)
    }

    /// Changes a team's status under a request id (its record is written with the change).
    ///
    /// # Errors
    /// The state machine's refusals, or a storage failure.
    pub async fn set_status(
        &self,
        team_id: &str,
        status: TeamStatus,
        incident_id: &str,
        expected_revision: Option<i64>,
        request: &RequestRecord<'_>,
    ) -> Result<Recorded<(Team, bool)>, AvailabilityError> {
        match self
            .store
            .set_status_once(
                team_id,
                status,
                incident_id,
                expected_revision,
                self.now(),
                request,
            )
            .await
        {
            Err(ChangeError::NotFound) => Err(self.missing()),
            other => Ok(other?),
        }
    }

    /// Applies position reports in order.
    ///
    /// # Errors
    /// A storage failure.
    pub async fn report(
        &self,
        reports: &[LocationReport],
    ) -> Result<Vec<LocationOutcome>, AvailabilityError> {
        let outcomes = self.store.report_locations(reports, self.now()).await?;
        crate::metrics::record_reports(&outcomes);
        if outcomes.contains(&LocationOutcome::NotFound) {
            self.live.wake();
        }
        Ok(outcomes)
    }
}
