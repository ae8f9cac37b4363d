//! Intake's own configuration: the `[intake]` section, `RELAY_INTAKE__<KEY>` in the
//! environment. Every key has a default; see docs/intake.md for the operator's table. The
//! database's pool size and migrations at start are in `[database]`, as for every service
//! (`relay_runtime::config::DatabaseSettings`).

use std::{collections::HashMap, path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::program::ProgramSettings;

/// The `[intake]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntakeSettings {
    /// The triage protocol file; unset uses the protocol shipped with the crate.
    pub protocol_path: Option<PathBuf>,
    /// The regions this deployment serves. A submitted region must be one of them (empty:
    /// any well-formed region is accepted). Intake watches routing and availability for each.
    pub regions: Vec<String>,
    /// How long SubmitIncident waits for routing's answer, in milliseconds.
    pub submit_wait_ms: u64,
    /// Deadline of each call to routing, in milliseconds.
    pub routing_timeout_ms: u64,
    /// How often the outbox worker looks for due rows when not woken, in milliseconds.
    pub outbox_poll_ms: u64,
    /// How long a delivery attempt holds its row before another worker may retry it.
    pub outbox_lease_ms: u64,
    /// First retry delay after a failed delivery, in milliseconds (doubles each attempt).
    pub retry_base_ms: u64,
    /// Longest retry delay, in milliseconds.
    pub retry_max_ms: u64,
    /// WatchIncidentEvents heartbeat interval on a quiet stream, in milliseconds.
    pub heartbeat_ms: u64,
    /// How often a watch polls the database for events written by other replicas.
    pub watch_poll_ms: u64,
    /// How often the sequencer looks for events committed by other replicas when not woken
    /// by a change of its own, in milliseconds.
    pub sequencer_poll_ms: u64,
    /// Days after received_at when narrative, caller contact and notes are erased.
    pub personal_data_retention_days: i64,
    /// Days the event stream, request ids and consumed upstream ids are kept.
    pub event_retention_days: i64,
    /// How often the retention job runs, in seconds.
    pub retention_interval_seconds: u64,
    /// Consume routing's WatchAssignments and availability's WatchTeams for `regions`.
    pub consume_upstream: bool,
    /// Each region's program rules (`[intake.programs.<region>]`): operating hours, closed
    /// dates, and the two limits below for that region.
    pub programs: HashMap<String, ProgramSettings>,
    /// How long a NEEDS_REVIEW call may wait for a dispatcher's decision before it is
    /// escalated for a traditional response, in seconds.
    pub review_wait_seconds: u64,
    /// How long a recommendation (ASSIGNMENT_MODE_RECOMMEND) may wait for a dispatcher to
    /// confirm it before it expires and the call is escalated, in seconds.
    pub recommendation_expiry_seconds: u64,
    /// How often the deadline job looks for calls past those limits, in milliseconds.
    pub deadline_interval_ms: u64,
    /// The region of incidents submitted as NENA EIDO documents (an EIDO names none); unset:
    /// the first of `regions`, else "default".
    pub eido_region: Option<String>,
}

impl Default for IntakeSettings {
    fn default() -> Self {
        Self {
            protocol_path: None,
            regions: Vec::new(),
            submit_wait_ms: 2000,
            routing_timeout_ms: 3000,
            outbox_poll_ms: 500,
            outbox_lease_ms: 10_000,
            retry_base_ms: 100,
            retry_max_ms: 30_000,
            heartbeat_ms: 15_000,
            watch_poll_ms: 1000,
            sequencer_poll_ms: 200,
            personal_data_retention_days: 30,
            event_retention_days: 7,
            retention_interval_seconds: 3600,
            consume_upstream: true,
            programs: HashMap::new(),
            review_wait_seconds: 600,
            recommendation_expiry_seconds: 300,
            deadline_interval_ms: 1000,
            eido_region: None,
        }
    }
}

impl IntakeSettings {
    /// `ms` milliseconds as a duration.
    #[must_use]
    pub fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }
}
