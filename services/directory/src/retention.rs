//! Retention of personal data in referrals: notes may hold personal details (a name, a
//! phone number, a situation), so, as intake does with a caller's details, they are erased
//! once the referral is older than `[directory] personal_data_retention_days` (default 30).
//! The referral itself (incident, service, location, status, times) stays for program
//! reporting. The idempotency records of CreateReferral and UpdateReferral, whose request
//! and response bytes carry notes too, are deleted once older than a day (the documented
//! idempotency window) or than the retention, whichever is shorter.

use std::{sync::Arc, time::Duration};

use relay_runtime::clock::Clock;

use crate::{store::DirectoryStore, store::StoreResult};

/// A day in microseconds.
const DAY: i64 = 86_400_000_000;

/// The retention job of one store.
#[derive(Debug, Clone)]
pub struct Retention<S> {
    store: S,
    clock: Arc<dyn Clock>,
    days: i64,
}

/// What one run erased.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Erased {
    /// Referrals whose notes were erased.
    pub referrals: u64,
    /// Idempotency records of referral RPCs deleted.
    pub requests: u64,
}

impl<S: DirectoryStore> Retention<S> {
    /// Erases notes of referrals created more than `days` days before `clock`'s now.
    pub fn new(store: S, clock: Arc<dyn Clock>, days: i64) -> Self {
        Self { store, clock, days }
    }

    /// Runs once.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn run_once(&self) -> StoreResult<Erased> {
        let now = self.clock.now_micros();
        let before = now.saturating_sub(self.days.saturating_mul(DAY));
        let requests_before = before.max(now.saturating_sub(DAY));
        let (referrals, requests) = self
            .store
            .erase_referral_notes(before, requests_before)
            .await?;
        tracing::info!(
            referrals_erased = referrals,
            requests_deleted = requests,
            "referral notes retention ran"
        );
        Ok(Erased {
            referrals,
            requests,
        })
    }

    /// Runs every `every` until `shutdown` is cancelled (the first run at once).
    pub async fn run(self, every: Duration, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            if let Err(error) = self.run_once().await {
                tracing::error!(error = %error, "referral notes retention failed");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}
