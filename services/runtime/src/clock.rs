//! The one clock every service reads for its time rules (queue escalation, review waits,
//! recommendation expiry, stale positions, program hours, shift ends, retention), behind a
//! trait so that tests move time instead of sleeping and `relay dev` / `relay simulate` can
//! run every service on the same simulated time.
//!
//! - [`SystemClock`]: the wall clock (production).
//! - [`ManualClock`]: moves only when told (tests); clones share the time.
//! - [`OffsetClock`]: the wall clock plus an offset a test moves forward.
//! - [`ScaledClock`]: simulated time, `origin + speed × (wall now − anchor)`; built from the
//!   `[clock]` settings (see [`crate::config::ClockSettings`]).
//!
//! One time type: chrono's `DateTime<Utc>`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, TimeDelta, Utc};

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Now.
    fn now(&self) -> DateTime<Utc>;

    /// Now, in microseconds since the Unix epoch.
    fn now_micros(&self) -> i64 {
        self.now().timestamp_micros()
    }

    /// Clock seconds per wall-clock second: 1 except for a [`ScaledClock`].
    fn speed(&self) -> f64 {
        1.0
    }

    /// How long to wait on the wall clock so that `every` passes on this clock, but not less
    /// than [`PACE_FLOOR`] (nor more than `every`): background loops whose work follows the
    /// clock (escalation, deadlines, retention, samples) pace themselves with it, so that they
    /// tick as often in simulated terms as in real time without spinning.
    fn pace(&self, every: Duration) -> Duration {
        let speed = self.speed();
        if speed.is_finite() && speed > 1.0 {
            every.div_f64(speed).max(PACE_FLOOR.min(every))
        } else {
            every
        }
    }

    /// How much time passes on this clock while `wall` passes on the wall clock: for waits
    /// that are about the machine rather than the domain (leases, retry backoff) but are
    /// written as clock times, so that they last as long on the wall clock at any speed.
    fn elapsed_in(&self, wall: Duration) -> Duration {
        let speed = self.speed();
        if speed.is_finite() && speed > 1.0 {
            wall.mul_f64(speed)
        } else {
            wall
        }
    }
}

/// The shortest wall-clock wait [`Clock::pace`] gives a background loop at high speed.
pub const PACE_FLOOR: Duration = Duration::from_millis(50);

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A span of time a test clock can be moved by: a `std::time::Duration` or a chrono
/// `TimeDelta`.
pub trait Span {
    /// The span in microseconds (saturating).
    fn micros(self) -> i64;
}

impl Span for Duration {
    fn micros(self) -> i64 {
        i64::try_from(self.as_micros()).unwrap_or(i64::MAX)
    }
}

impl Span for TimeDelta {
    fn micros(self) -> i64 {
        self.num_microseconds().unwrap_or(i64::MAX)
    }
}

fn from_micros(micros: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_micros(micros).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A clock that shows what it was last set to (tests); clones share the time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl Default for ManualClock {
    fn default() -> Self {
        Self::new(Utc::now())
    }
}

impl ManualClock {
    /// A clock showing `now`.
    #[must_use]
    pub fn new(now: DateTime<Utc>) -> Self {
        Self::at(now.timestamp_micros())
    }

    /// A clock at `micros` since the epoch.
    #[must_use]
    pub fn at(micros: i64) -> Self {
        Self(Arc::new(AtomicI64::new(micros)))
    }

    /// Moves the clock to `now`.
    pub fn set(&self, now: DateTime<Utc>) {
        self.0.store(now.timestamp_micros(), Ordering::SeqCst);
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: impl Span) {
        let by = by.micros();
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(by))
            });
    }

    /// Moves the clock forward by `days`.
    pub fn advance_days(&self, days: i64) {
        self.advance(TimeDelta::days(days));
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        from_micros(self.0.load(Ordering::SeqCst))
    }
}

/// The wall clock plus an offset that tests move forward (time keeps flowing).
#[derive(Debug, Clone, Default)]
pub struct OffsetClock {
    offset: Arc<AtomicI64>,
}

impl OffsetClock {
    /// A clock equal to the wall clock until advanced.
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
    fn now(&self) -> DateTime<Utc> {
        from_micros(
            Utc::now()
                .timestamp_micros()
                .saturating_add(self.offset.load(Ordering::SeqCst)),
        )
    }
}

/// Simulated time: `origin` at the wall instant `anchor`, then `speed` simulated seconds per
/// wall-clock second. Processes given the same three values read the same time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaledClock {
    origin: DateTime<Utc>,
    anchor: DateTime<Utc>,
    speed: f64,
}

impl ScaledClock {
    /// A clock reading `origin` at the wall instant `anchor` and running `speed` times as
    /// fast as the wall clock.
    ///
    /// # Errors
    /// When `speed` is not a finite number greater than 0.
    pub fn new(origin: DateTime<Utc>, anchor: DateTime<Utc>, speed: f64) -> Result<Self, String> {
        if !(speed.is_finite() && speed > 0.0) {
            return Err(format!("speed {speed} is not a number greater than 0"));
        }
        Ok(Self {
            origin,
            anchor,
            speed,
        })
    }

    /// The simulated time at the wall instant `wall`.
    #[must_use]
    pub fn at(&self, wall: DateTime<Utc>) -> DateTime<Utc> {
        let elapsed = (wall - self.anchor).num_microseconds().unwrap_or(0);
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
        let scaled = (elapsed as f64 * self.speed) as i64;
        from_micros(self.origin.timestamp_micros().saturating_add(scaled))
    }

    /// The simulated time at the anchor.
    #[must_use]
    pub fn origin(&self) -> DateTime<Utc> {
        self.origin
    }

    /// The wall instant at which the clock read [`Self::origin`].
    #[must_use]
    pub fn anchor(&self) -> DateTime<Utc> {
        self.anchor
    }
}

impl Clock for ScaledClock {
    fn now(&self) -> DateTime<Utc> {
        self.at(Utc::now())
    }

    fn speed(&self) -> f64 {
        self.speed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(text: &str) -> DateTime<Utc> {
        text.parse().expect("RFC 3339")
    }

    #[test]
    fn scaled_time_is_origin_plus_speed_times_wall_elapsed() {
        let clock = ScaledClock::new(t("2026-01-05T08:00:00Z"), t("2026-11-30T00:00:00Z"), 120.0)
            .expect("valid");
        assert_eq!(
            clock.at(t("2026-11-30T00:00:00Z")),
            t("2026-01-05T08:00:00Z")
        );
        assert_eq!(
            clock.at(t("2026-11-30T00:00:30Z")),
            t("2026-01-05T09:00:00Z")
        );
        assert_eq!(
            clock.at(t("2026-11-30T00:02:00Z")),
            t("2026-01-05T12:00:00Z")
        );
        assert!(ScaledClock::new(clock.origin(), clock.anchor(), 0.0).is_err());
        assert!(ScaledClock::new(clock.origin(), clock.anchor(), f64::NAN).is_err());
    }

    #[test]
    fn loops_pace_by_speed_with_a_floor() {
        let every = Duration::from_secs(60);
        assert_eq!(SystemClock.pace(every), every);
        let fast = ScaledClock::new(Utc::now(), Utc::now(), 120.0).expect("valid");
        assert_eq!(fast.pace(every), Duration::from_millis(500));
        assert_eq!(fast.pace(Duration::from_secs(1)), PACE_FLOOR);
        assert_eq!(
            fast.pace(Duration::from_millis(10)),
            Duration::from_millis(10)
        );
        assert_eq!(
            fast.elapsed_in(Duration::from_secs(1)),
            Duration::from_secs(120)
        );
        assert_eq!(SystemClock.elapsed_in(every), every);
    }

    #[test]
    fn manual_clocks_share_time_and_take_either_duration() {
        let clock = ManualClock::new(t("2026-01-01T00:00:00Z"));
        let shared = clock.clone();
        clock.advance(Duration::from_secs(60));
        shared.advance(TimeDelta::minutes(1));
        clock.advance_days(1);
        assert_eq!(shared.now(), t("2026-01-02T00:02:00Z"));
        clock.set(t("2026-03-01T00:00:00Z"));
        assert_eq!(
            shared.now_micros(),
            t("2026-03-01T00:00:00Z").timestamp_micros()
        );
    }
}
