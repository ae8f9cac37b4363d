//! Time, behind a trait so tests can control it (retention, escalation of stale leases).

use std::sync::{
    Arc,
    atomic::{AtomicI64, Ordering},
};

/// A source of the current time in microseconds since the Unix epoch (UTC).
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Now, in microseconds since the epoch.
    fn now_micros(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_micros(&self) -> i64 {
        chrono::Utc::now().timestamp_micros()
    }
}

/// A clock that starts at the system time and moves only when told to, by an offset.
#[derive(Debug, Clone, Default)]
pub struct OffsetClock {
    offset: Arc<AtomicI64>,
}

impl OffsetClock {
    /// A clock equal to the system clock until advanced.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `seconds`.
    pub fn advance_seconds(&self, seconds: i64) {
        self.offset
            .fetch_add(seconds.saturating_mul(1_000_000), Ordering::SeqCst);
    }
}

impl Clock for OffsetClock {
    fn now_micros(&self) -> i64 {
        chrono::Utc::now().timestamp_micros() + self.offset.load(Ordering::SeqCst)
    }
}
