//! The trail's settings (`[audit]`, `RELAY_AUDIT__*`), the same for every service.

use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

/// The least retention a deployment may set: CJIS asks for a year of audit records.
pub const MIN_RETENTION_DAYS: u32 = 365;

/// `[audit]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSettings {
    /// How long a record is kept (`RELAY_AUDIT__RETENTION_DAYS`, default 365; less is
    /// refused unless `insecure_dev`).
    pub retention_days: u32,
    /// How often the pruning task runs (`RELAY_AUDIT__PRUNE_INTERVAL_S`, default 3600).
    pub prune_interval_s: u64,
    /// Records forgotten per pruning transaction (`RELAY_AUDIT__PRUNE_BATCH`, default 1000).
    pub prune_batch: u32,
    /// Refusal and failed-write records queued for the background writer
    /// (`RELAY_AUDIT__QUEUE`, default 4096); past it records are counted as dropped
    /// (`relay_audit_dropped_total`) and an `audit.dropped` record says how many.
    pub queue: usize,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            retention_days: MIN_RETENTION_DAYS,
            prune_interval_s: 3600,
            prune_batch: 1000,
            queue: 4096,
        }
    }
}

impl AuditSettings {
    /// The retention.
    #[must_use]
    pub fn retention(&self) -> Duration {
        Duration::from_secs(u64::from(self.retention_days) * 86_400)
    }

    /// The pruning interval.
    #[must_use]
    pub fn prune_interval(&self) -> Duration {
        Duration::from_secs(self.prune_interval_s.max(1))
    }

    /// Refuses a retention under [`MIN_RETENTION_DAYS`] outside a development setup, and
    /// zero sizes.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key.
    pub fn validate(&self, insecure_dev: bool) -> Result<(), ConfigError> {
        if self.retention_days < MIN_RETENTION_DAYS && !insecure_dev {
            return Err(ConfigError::new(format!(
                "invalid value for `audit.retention_days` (RELAY_AUDIT__RETENTION_DAYS): {} is \
                 less than {MIN_RETENTION_DAYS} days, allowed only with insecure_dev",
                self.retention_days
            )));
        }
        for (key, value) in [
            (
                "audit.retention_days (RELAY_AUDIT__RETENTION_DAYS)",
                u64::from(self.retention_days),
            ),
            (
                "audit.prune_batch (RELAY_AUDIT__PRUNE_BATCH)",
                u64::from(self.prune_batch),
            ),
            ("audit.queue (RELAY_AUDIT__QUEUE)", self.queue as u64),
        ] {
            if value == 0 {
                return Err(ConfigError::new(format!(
                    "invalid value for `{key}`: must be greater than 0"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retention_under_a_year_is_refused_outside_development() {
        let short = AuditSettings {
            retention_days: 30,
            ..AuditSettings::default()
        };
        let error = short.validate(false).expect_err("refused").to_string();
        assert!(error.contains("RELAY_AUDIT__RETENTION_DAYS"), "{error}");
        assert!(short.validate(true).is_ok());
        assert!(AuditSettings::default().validate(false).is_ok());
        assert_eq!(AuditSettings::default().retention_days, 365);
    }
}
