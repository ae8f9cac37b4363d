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
//!
//! **One region lost alone.** On a Redis Cluster the keyspace's epoch lives on one primary and
//! each region's keys on theirs: a primary that fails over to a replica without its data
//! loses the regions it held and nothing else, and the keyspace's epoch survives. So the epoch
//! is also stamped in every region the roster has (`<p>:{region}:live_epoch`, in the region's
//! slot, lost with its teams), and each check reads those stamps too (one pipelined GET per
//! region). A region this replica saw stamped whose stamp is gone lost its keys: the check
//! logs, counts and rebuilds as for a whole loss (seeding recreates only the teams that are
//! missing). A region never seen stamped is new (its first team was just created): it is
//! seeded, which creates nothing, and stamped, silently. Availability tells the watch of the
//! regions ([`LiveState::note_regions`]): the roster's at each build, a new team's region when
//! it is created, and the whole roster's again every minute (regions other replicas created).

use std::{
    collections::BTreeSet,
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
    /// The regions whose epoch stamps the check reads, and those of them it saw stamped with
    /// the epoch (only a region seen stamped can be said to have lost its stamp).
    regions: Mutex<Regions>,
}

/// The regions of the live state, as far as this replica knows.
#[derive(Debug, Default)]
struct Regions {
    known: BTreeSet<String>,
    stamped: BTreeSet<String>,
}

/// What one check of the live state found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveCheck {
    /// The epoch is the one this replica knows.
    Intact,
    /// The live state was lost (no epoch) and was rebuilt: this many teams were recreated.
    Rebuilt(usize),
    /// Another replica rebuilt it after a loss; this one seeded this many teams it still
    /// lacked and adopted the new epoch.
    Adopted(usize),
    /// These regions lost their keys (their stamps were gone) and were rebuilt: this many
    /// teams were recreated.
    RegionsRebuilt(Vec<String>, usize),
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

    /// Regions the check is to read the stamps of (the roster's, a new team's).
    pub fn note_regions(&self, regions: impl IntoIterator<Item = String>) {
        if let Ok(mut known) = self.regions.lock() {
            known.known.extend(regions);
        }
    }

    fn known_regions(&self) -> Vec<String> {
        self.regions
            .lock()
            .map(|r| r.known.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Stamps the epoch in every known region, and remembers them as seen stamped.
    async fn stamp(&self, store: &dyn TeamStore, epoch: &str) -> Result<(), StoreError> {
        let regions = self.known_regions();
        store.stamp_region_epochs(&regions, epoch).await?;
        if let Ok(mut known) = self.regions.lock() {
            known.stamped.extend(regions);
        }
        Ok(())
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
        self.stamp(store, &epoch).await?;
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
            Some(epoch) if Some(&epoch) == known.as_ref() => {
                self.check_regions(store, &epoch, rebuild, lost, rebuilt)
                    .await
            }
            Some(epoch) => {
                let created = rebuild().await?;
                tracing::warn!(
                    recreated = created,
                    "another replica rebuilt the live state after a loss; adopted its epoch"
                );
                self.stamp(store, &epoch).await?;
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

impl LiveState {
    /// The keyspace's epoch is intact: reads each known region's stamp, and rebuilds when a
    /// region seen stamped lost it (see the module documentation).
    async fn check_regions<E, F>(
        &self,
        store: &dyn TeamStore,
        epoch: &str,
        rebuild: impl FnOnce() -> F,
        lost: impl FnOnce(),
        rebuilt: impl FnOnce(usize),
    ) -> Result<LiveCheck, E>
    where
        E: From<StoreError>,
        F: Future<Output = Result<usize, E>>,
    {
        let regions = self.known_regions();
        let stamps = store.region_epochs(&regions).await?;
        let (mut gone, mut new) = (Vec::new(), Vec::new());
        {
            let mut known = self.regions.lock().map_err(|_| {
                StoreError::Corrupt(String::from("the live state's region lock was poisoned"))
            })?;
            for (region, stamp) in regions.into_iter().zip(stamps) {
                match stamp {
                    Some(_) => {
                        known.stamped.insert(region);
                    }
                    None if known.stamped.contains(&region) => gone.push(region),
                    None => new.push(region),
                }
            }
        }
        if gone.is_empty() && new.is_empty() {
            return Ok(LiveCheck::Intact);
        }
        if !gone.is_empty() && self.intact.swap(false, Ordering::AcqRel) {
            tracing::error!(
                regions = %gone.join(","),
                "redis lost the live state of these regions (their epoch stamps are gone): rebuilding their teams from the roster as OFF_DUTY"
            );
            lost();
        }
        let created = rebuild().await?;
        let mut stamped = gone.clone();
        stamped.extend(new);
        store.stamp_region_epochs(&stamped, epoch).await?;
        if let Ok(mut known) = self.regions.lock() {
            known.stamped.extend(stamped);
        }
        self.intact.store(true, Ordering::Release);
        if gone.is_empty() {
            return Ok(LiveCheck::Intact);
        }
        rebuilt(created);
        tracing::warn!(recreated = created, regions = %gone.join(","), "live state of the lost regions rebuilt from the roster");
        Ok(LiveCheck::RegionsRebuilt(gone, created))
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
