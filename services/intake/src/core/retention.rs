//! The retention job: erases personal data past its retention, and old history.

use std::{sync::Arc, time::Duration};

use super::Intake;
use crate::store::StoreError;

impl Intake {
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
