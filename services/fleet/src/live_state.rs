//! Detecting that Redis lost the live state, and rebuilding it without a restart (issue 18).
//!
//! Why an epoch key rather than the roster's count against Redis: after the live state is
//! built from the roster, availability writes a random epoch to `<p>:live_epoch` (SET NX, so
//! replicas agree on one). Checking it is one GET, O(1) whatever the size of the roster, and
//! touches neither PostgreSQL nor any region's keys; a flush, or a failover to a replica that
//! never had the data, removes it as it removes the teams. A count comparison would read the
//! whole roster from PostgreSQL on every check, need one SCARD per region, and could not tell
//! a lost team from one being upserted. A failover that lost only a few recent writes keeps
//! the epoch: that case is not a loss of the live state, and the fencing record in PostgreSQL
//! keeps it from dispatching twice.
//!
//! The watch runs every `live_state_check_ms` (default 1000), and at once when a request
//! finds a team missing. On a loss it logs one ERROR line, counts it
//! (`relay_live_state_losses_total`), turns the `live state` readiness check failing (health
//! detail: "the live state was lost and is being rebuilt"), writes a new epoch first (so a
//! second loss during the rebuild is seen too), recreates every roster team as OFF_DUTY with
//! no position ([`seed`]), and turns the check passing again.
//! An epoch that differs from this replica's means another replica already detected a loss:
//! this one rebuilds too (seeding is idempotent) and adopts it.

use std::{
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    model::{TeamDefinition, to_micros},
    store::{StoreError, TeamStore},
};

/// What this replica knows of the live state's epoch.
#[derive(Debug, Default)]
pub struct LiveState {
    /// The epoch this replica last built or adopted (`None` before the first build).
    epoch: Mutex<Option<String>>,
    /// Whether the live state is built and its epoch matches (the readiness check).
    intact: AtomicBool,
    /// Wakes the watch early (a request found a team missing).
    wake: Notify,
}

/// What one check of the live state found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveCheck {
    /// The epoch is the one this replica knows.
    Intact,
    /// The live state was lost (no epoch) and was rebuilt: this many teams were recreated.
    Rebuilt(usize),
    /// Another replica rebuilt it after a loss; this one seeded this many teams it still
    /// lacked and adopted the new epoch.
    Adopted(usize),
}

impl LiveState {
    /// Whether the live state is built and intact (readiness).
    #[must_use]
    pub fn is_intact(&self) -> bool {
        self.intact.load(Ordering::Acquire)
    }

    /// Asks the watch to check now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn known(&self) -> Option<String> {
        self.epoch.lock().map_or(None, |e| e.clone())
    }

    fn set(&self, epoch: String) {
        if let Ok(mut known) = self.epoch.lock() {
            *known = Some(epoch);
        }
        self.intact.store(true, Ordering::Release);
    }

    /// Builds the live state with `rebuild` (which recreates the roster's teams, as [`seed`]
    /// does) and adopts the epoch (start, and after a loss): the epoch is written first, so a
    /// loss during the rebuild removes it and is seen. Returns how many teams were recreated.
    ///
    /// # Errors
    /// When the roster or the live store fails.
    pub async fn build<E, F>(
        &self,
        store: &dyn TeamStore,
        rebuild: impl FnOnce() -> F,
    ) -> Result<usize, E>
    where
        E: From<StoreError>,
        F: Future<Output = Result<usize, E>>,
    {
        let candidate = uuid::Uuid::now_v7().to_string();
        let epoch = store.adopt_live_epoch(&candidate).await?;
        let created = rebuild().await?;
        self.set(epoch);
        Ok(created)
    }

    /// Checks the live-state epoch once and rebuilds after a loss (see the module
    /// documentation): `rebuild` recreates the roster's teams; `lost` runs once per loss,
    /// `rebuilt` after a rebuild, with the number of teams recreated (the caller's metrics).
    ///
    /// # Errors
    /// When the roster or the live store fails (the next check retries).
    pub async fn check<E, F>(
        &self,
        store: &dyn TeamStore,
        rebuild: impl FnOnce() -> F,
        lost: impl FnOnce(),
        rebuilt: impl FnOnce(usize),
    ) -> Result<LiveCheck, E>
    where
        E: From<StoreError>,
        F: Future<Output = Result<usize, E>>,
    {
        let current = store.live_epoch().await?;
        let known = self.known();
        match current {
            Some(epoch) if Some(&epoch) == known.as_ref() => Ok(LiveCheck::Intact),
            Some(epoch) => {
                let created = rebuild().await?;
                tracing::warn!(
                    recreated = created,
                    "another replica rebuilt the live state after a loss; adopted its epoch"
                );
                self.set(epoch);
                Ok(LiveCheck::Adopted(created))
            }
            None => {
                // Log and count once per loss: a failed rebuild leaves `intact` false and the
                // next check retries without a second line.
                if self.intact.swap(false, Ordering::AcqRel) {
                    tracing::error!(
                        "redis lost the live state (its epoch key is gone): rebuilding every team from the roster as OFF_DUTY"
                    );
                    lost();
                }
                let created = self.build(store, rebuild).await?;
                rebuilt(created);
                tracing::warn!(recreated = created, "live state rebuilt from the roster");
                Ok(LiveCheck::Rebuilt(created))
            }
        }
    }
}

/// Recreates in the live store every roster team it lacks (after Redis lost its data), each
/// given as its definition and the revision of its last roster change, with revisions and
/// fencing counters above any issued before. Returns how many teams were recreated.
///
/// # Errors
/// When the live store fails.
pub async fn seed(
    store: &dyn TeamStore,
    roster: impl IntoIterator<Item = (TeamDefinition, i64)>,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    // Microseconds of wall time exceed any revision or fencing token issued earlier (those
    // grow by one per change), so neither ever decreases across a loss of Redis.
    let floor = to_micros(now);
    let mut created = 0;
    for (definition, revision) in roster {
        if store
            .seed_team(&definition, floor.max(revision + 1), now)
            .await?
        {
            created += 1;
        }
    }
    Ok(created)
}

/// Runs `check` every `every` (and when `live` is woken) until `shutdown`. Does nothing until
/// the first build has succeeded.
pub async fn run_watch<E, F>(
    live: Arc<LiveState>,
    every: Duration,
    shutdown: CancellationToken,
    check: impl Fn() -> F,
) where
    E: std::fmt::Display,
    F: Future<Output = Result<LiveCheck, E>>,
{
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
            () = live.wake.notified() => {}
        }
        if live.known().is_none() {
            continue;
        }
        if let Err(error) = check().await {
            tracing::warn!(%error, "could not check or rebuild the live state; retrying");
        }
    }
}
