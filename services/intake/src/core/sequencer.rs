//! The sequencer task: gives the events changes committed their gapless per-CAD sequences
//! (the store moves them with [`relay_runtime::sequencer`]), then tells this process's
//! watchers which CAD streams grew.

use std::{sync::Arc, time::Duration};

use super::{EventNotice, Intake};
use crate::{settings::IntakeSettings, store::StoreError};

/// Events the sequencer moves per transaction.
pub const SEQUENCE_BATCH: i64 = 500;

/// After moving events, the sequencer waits this long for more before its next batch.
const SEQUENCER_GATHER: Duration = Duration::from_millis(5);

/// The sequencer warns when it moves an event committed longer ago than this.
const SEQUENCER_LAG_WARN_MS: i64 = 5_000;

impl Intake {
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
}
