//! Routing's own settings (`[routing]` in the configuration file, `RELAY_ROUTING__*` in the
//! environment), chiefly the per-region parameters of ranking and the queue.
//!
//! ```toml
//! [routing]
//! any_region = false            # refuse regions not listed below (REGION_UNKNOWN)
//! [routing.regions.eugene]
//! road_factor = 1.4             # roads are 40% longer than the straight line
//! average_speed_kmh = 40.0
//! staleness_limit_seconds = 300 # positions older than this never win
//! max_eta_seconds = 2700
//! max_distance_meters = 50000
//! tie_window_seconds = 60       # preferred capabilities reorder teams this close in ETA
//! default_expected_duration_seconds = 3600
//! escalation_seconds = [300, 600, 900, 1800, 3600]   # queue wait limit for priority 1..5
//! ```
//!
//! Also `fleet` (`"memory"` for the in-process fleet), `key_prefix` (`relay`: the prefix of
//! the teams' Redis keys, which must equal `availability.key_prefix`),
//! `team_event_retention_seconds` (86400, as `availability.event_retention_seconds`),
//! `maintenance_interval_ms` (2000), `reconcile_grace_seconds` (30) and
//! `event_retention_hours` (24).

use std::{collections::BTreeMap, time::Duration};

use serde::Deserialize;

use crate::eta::GreatCircleEstimator;

/// The parameters of one region.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegionSettings {
    /// Road distance over great-circle distance (at least 1.0).
    pub road_factor: f64,
    /// Average driving speed, km/h (more than 0).
    pub average_speed_kmh: f64,
    /// A team whose last position is older than this is excluded (STALE_POSITION), seconds.
    pub staleness_limit_seconds: u64,
    /// A team whose ETA is longer than this is excluded (OUT_OF_RANGE), seconds.
    pub max_eta_seconds: u32,
    /// A team farther than this is excluded (OUT_OF_RANGE), meters.
    pub max_distance_meters: f64,
    /// Eligible teams whose ETAs lie within this window of each other count as a near-tie,
    /// which preferred capabilities may reorder, seconds.
    pub tie_window_seconds: u32,
    /// How long a call takes when the request does not say, for the shift check, seconds.
    pub default_expected_duration_seconds: u32,
    /// How long an incident of priority 1..5 may wait in the queue before it is escalated,
    /// seconds.
    pub escalation_seconds: [u32; 5],
}

impl Default for RegionSettings {
    fn default() -> Self {
        Self {
            road_factor: 1.4,
            average_speed_kmh: 40.0,
            staleness_limit_seconds: 300,
            max_eta_seconds: 2_700,
            max_distance_meters: 50_000.0,
            tie_window_seconds: 60,
            default_expected_duration_seconds: 3_600,
            escalation_seconds: [300, 600, 900, 1_800, 3_600],
        }
    }
}

impl RegionSettings {
    /// The default great-circle estimator of this region.
    #[must_use]
    pub fn estimator(&self) -> GreatCircleEstimator {
        GreatCircleEstimator {
            road_factor: self.road_factor,
            speed_meters_per_second: self.average_speed_kmh / 3.6,
        }
    }

    /// The staleness limit as a duration.
    #[must_use]
    pub fn staleness_limit(&self) -> Duration {
        Duration::from_secs(self.staleness_limit_seconds)
    }

    /// How long an incident of `priority` (1..5) may wait in the queue.
    #[must_use]
    pub fn escalation_limit(&self, priority: u8) -> Duration {
        let index = usize::from(priority.clamp(1, 5) - 1);
        Duration::from_secs(u64::from(self.escalation_seconds[index]))
    }

    fn validate(&self, name: &str) -> Result<(), String> {
        let key = |field: &str| format!("routing.regions.{name}.{field}");
        if !(self.road_factor.is_finite() && self.road_factor >= 1.0) {
            return Err(format!(
                "{}: must be a number of at least 1.0",
                key("road_factor")
            ));
        }
        if !(self.average_speed_kmh.is_finite() && self.average_speed_kmh > 0.0) {
            return Err(format!("{}: must be more than 0", key("average_speed_kmh")));
        }
        if !(self.max_distance_meters.is_finite() && self.max_distance_meters > 0.0) {
            return Err(format!(
                "{}: must be more than 0",
                key("max_distance_meters")
            ));
        }
        if self.staleness_limit_seconds == 0 {
            return Err(format!(
                "{}: must be more than 0",
                key("staleness_limit_seconds")
            ));
        }
        if self.max_eta_seconds == 0 {
            return Err(format!("{}: must be more than 0", key("max_eta_seconds")));
        }
        if self.escalation_seconds.contains(&0) {
            return Err(format!(
                "{}: every limit must be more than 0",
                key("escalation_seconds")
            ));
        }
        Ok(())
    }
}

/// Routing's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingSettings {
    /// Accept any region, with the default parameters, instead of refusing regions not
    /// listed (REGION_UNKNOWN). On by default so a new deployment works before it is tuned.
    pub any_region: bool,
    /// Per-region parameters.
    pub regions: BTreeMap<String, RegionSettings>,
    /// Which fleet to use: empty or `redis` for the teams' live state in Redis, the keys
    /// availability serves (the production path), `memory` for an in-process fleet of
    /// routing's own (tests).
    pub fleet: String,
    /// The prefix of the teams' Redis keys (default `relay`). It must equal availability's
    /// `availability.key_prefix`: both services work on the same keys.
    pub key_prefix: String,
    /// How long the teams' event streams keep events when routing's claims and releases trim
    /// them, seconds (default 86400). Keep it equal to
    /// `availability.event_retention_seconds`, how far back WatchTeams can resume.
    pub team_event_retention_seconds: u64,
    /// How often the upkeep runs (escalations, queue re-check, reconciliation), milliseconds.
    pub maintenance_interval_ms: u64,
    /// Reconciliation leaves alone states younger than this, seconds.
    pub reconcile_grace_seconds: u64,
    /// Events and remembered responses are kept this long, hours (at least 24).
    pub event_retention_hours: u64,
}

impl Default for RoutingSettings {
    fn default() -> Self {
        Self {
            any_region: true,
            regions: BTreeMap::new(),
            fleet: String::new(),
            key_prefix: String::from(relay_fleet::keyspace::DEFAULT_PREFIX),
            team_event_retention_seconds: 24 * 3600,
            maintenance_interval_ms: 2_000,
            reconcile_grace_seconds: 30,
            event_retention_hours: 24,
        }
    }
}

impl RoutingSettings {
    /// Checks every region's parameters.
    ///
    /// # Errors
    /// The key and the problem of the first invalid value.
    pub fn validate(&self) -> Result<(), String> {
        if !matches!(self.fleet.as_str(), "" | "redis" | "memory") {
            return Err(String::from(
                "routing.fleet: must be \"redis\" (availability's store, the default) or \"memory\"",
            ));
        }
        if self.key_prefix.is_empty() {
            return Err(String::from("routing.key_prefix: must not be empty"));
        }
        if self.team_event_retention_seconds < 60 {
            return Err(String::from(
                "routing.team_event_retention_seconds: must be at least 60",
            ));
        }
        if self.maintenance_interval_ms == 0 {
            return Err(String::from(
                "routing.maintenance_interval_ms: must be more than 0",
            ));
        }
        if self.event_retention_hours < 24 {
            return Err(String::from(
                "routing.event_retention_hours: must be at least 24",
            ));
        }
        self.regions
            .iter()
            .try_for_each(|(name, region)| region.validate(name))
    }

    /// How long the teams' event streams keep events (see
    /// [`Self::team_event_retention_seconds`]).
    #[must_use]
    pub fn team_event_retention(&self) -> Duration {
        Duration::from_secs(self.team_event_retention_seconds)
    }

    /// The parameters of `region`, or `None` when it is unknown and `any_region` is off.
    #[must_use]
    pub fn region(&self, region: &str) -> Option<RegionSettings> {
        match self.regions.get(region) {
            Some(settings) => Some(settings.clone()),
            None if self.any_region => Some(RegionSettings::default()),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_default_or_are_refused() {
        let mut settings = RoutingSettings::default();
        assert_eq!(settings.region("anywhere"), Some(RegionSettings::default()));
        settings.any_region = false;
        assert_eq!(settings.region("anywhere"), None);
        settings.regions.insert(
            "eugene".into(),
            RegionSettings {
                road_factor: 1.2,
                ..RegionSettings::default()
            },
        );
        assert_eq!(settings.region("eugene").map(|r| r.road_factor), Some(1.2));
    }

    #[test]
    fn invalid_values_name_their_key() {
        let mut settings = RoutingSettings::default();
        settings.regions.insert(
            "north".into(),
            RegionSettings {
                road_factor: 0.5,
                ..RegionSettings::default()
            },
        );
        let error = settings.validate().expect_err("road factor below 1");
        assert!(
            error.contains("routing.regions.north.road_factor"),
            "{error}"
        );
    }

    #[test]
    fn escalation_limits_follow_priority() {
        let region = RegionSettings::default();
        assert_eq!(region.escalation_limit(1), Duration::from_secs(300));
        assert_eq!(region.escalation_limit(5), Duration::from_secs(3_600));
        assert_eq!(region.escalation_limit(9), Duration::from_secs(3_600));
    }
}
