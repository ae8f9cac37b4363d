//! The domain operations of availability over a [`TeamStore`] (live state) and a
//! [`RosterStore`] (durable roster), with an injectable [`Clock`]. Handlers validate requests
//! and call these; nothing here sees protobuf, SQL or Redis commands.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use relay_runtime::clock::Clock;

use crate::{
    error::AvailabilityError,
    live_state::LiveState,
    model::{Team, TeamDefinition, TeamStatus, to_micros},
    roster::{RosterEntry, RosterStore},
    store::{ChangeError, LocationOutcome, LocationReport, TeamPage, TeamStore, UpsertOutcome},
};

/// The availability domain: roster and live state.
#[derive(Clone)]
pub struct Availability {
    store: Arc<dyn TeamStore>,
    roster: Arc<dyn RosterStore>,
    clock: Arc<dyn Clock>,
    live: Arc<LiveState>,
}

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
    /// with revisions and fencing counters above any issued before. Returns how many teams
    /// were recreated.
    ///
    /// # Errors
    /// When the roster or the live store fails.
    pub async fn rebuild(&self) -> Result<usize, AvailabilityError> {
        let now = self.now();
        // Microseconds of wall time exceed any revision or fencing token issued earlier
        // (those grow by one per change), so neither ever decreases across a loss of Redis.
        let floor = to_micros(now);
        let mut created = 0;
        for entry in self.roster.load_all().await? {
            if self
                .store
                .seed_team(&entry.definition, floor.max(entry.revision + 1), now)
                .await?
            {
                created += 1;
            }
        }
        Ok(created)
    }

    /// Creates or updates a team's roster fields, in the durable roster and the live store, so
    /// that a failed upsert records nothing (common.proto): the roster change is a transaction
    /// that writes the new fields first (proving the database answers, and locking the team's
    /// row so concurrent upserts of one team reach both stores in one order), then the live
    /// store changes, then the transaction commits with the live store's revision. A refusal
    /// or a failure before the commit rolls the roster back and leaves the live store as it
    /// was. Only a commit that fails after the live store changed leaves the two apart; a
    /// retry converges (an unchanged upsert still writes the roster).
    ///
    /// # Errors
    /// The store's refusals, or a storage failure.
    pub async fn upsert(
        &self,
        definition: &TeamDefinition,
        expected_revision: Option<i64>,
    ) -> Result<UpsertOutcome, AvailabilityError> {
        let mut roster = self.roster.begin().await?;
        // Revision 0 never lowers a stored revision (the save keeps the greater one).
        roster
            .save(&RosterEntry {
                definition: definition.clone(),
                revision: 0,
            })
            .await?;
        let outcome = self
            .store
            .upsert_team(definition, expected_revision, self.now())
            .await?;
        roster
            .save(&RosterEntry {
                definition: outcome.team.definition(),
                revision: outcome.team.revision,
            })
            .await?;
        roster.commit().await?;
        Ok(outcome)
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

    /// Changes a team's status.
    ///
    /// # Errors
    /// The state machine's refusals, or a storage failure.
    pub async fn set_status(
        &self,
        team_id: &str,
        status: TeamStatus,
        incident_id: &str,
        expected_revision: Option<i64>,
    ) -> Result<(Team, bool), AvailabilityError> {
        match self
            .store
            .set_status(team_id, status, incident_id, expected_revision, self.now())
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
