//! Routing's domain metrics (the RPC ones come from `relay_runtime::metrics`). Labels are
//! regions and enumerations only.
//!
//! - `relay_routing_assignments_total{region, source}`: assignments recorded, by how they
//!   were made (AUTO_ASSIGN, QUEUE, DISPATCHER).
//! - `relay_routing_claims_refused_total{region, reason}`: claims the record refused:
//!   TEAM_BUSY (the team has an active assignment) or STALE_FENCING_TOKEN (a claim older than
//!   one already recorded: Redis lost writes).
//! - `relay_routing_escalations_total{region}`: queued incidents escalated past their limit.
//! - `relay_queue_length{region, priority}` and `relay_queue_oldest_wait_seconds{region,
//!   priority}`: incidents waiting for a team, and how long the oldest has waited, sampled at
//!   each upkeep round (every replica reports the same shared queue: aggregate with `max`).
//! - `relay_routing_sequencer_pending_events` and `relay_routing_sequencer_oldest_age_seconds`:
//!   assignment events written and not yet numbered for WatchAssignments (its lag).

use std::{
    collections::HashMap,
    sync::{Mutex, OnceLock},
};

use chrono::{DateTime, Utc};

use opentelemetry::{KeyValue, metrics::Counter};
use relay_proto::routing::{Assignment, AssignmentSource};

use crate::store::IncidentRecord;
use relay_runtime::metrics::meter;

struct Counters {
    assignments: Counter<u64>,
    refused: Counter<u64>,
    escalations: Counter<u64>,
}

fn counters() -> &'static Counters {
    static COUNTERS: OnceLock<Counters> = OnceLock::new();
    COUNTERS.get_or_init(|| {
        let meter = meter();
        Counters {
            assignments: meter
                .u64_counter("relay_routing_assignments")
                .with_description("Assignments recorded, by region and how they were made")
                .build(),
            refused: meter
                .u64_counter("relay_routing_claims_refused")
                .with_description("Claims the assignment record refused, by region and reason")
                .build(),
            escalations: meter
                .u64_counter("relay_routing_escalations")
                .with_description("Queued incidents escalated past their priority's limit")
                .build(),
        }
    })
}

/// An assignment was recorded.
pub fn assigned(assignment: &Assignment) {
    let source = AssignmentSource::try_from(assignment.source).unwrap_or_default();
    let source = source
        .as_str_name()
        .trim_start_matches("ASSIGNMENT_SOURCE_");
    counters().assignments.add(
        1,
        &[
            KeyValue::new("region", assignment.region.clone()),
            KeyValue::new("source", source.to_owned()),
        ],
    );
}

/// The record refused a claim.
pub fn claim_refused(region: &str, reason: &'static str) {
    counters().refused.add(
        1,
        &[
            KeyValue::new("region", region.to_owned()),
            KeyValue::new("reason", reason),
        ],
    );
}

/// A queued incident was escalated.
pub fn escalated(region: &str) {
    counters()
        .escalations
        .add(1, &[KeyValue::new("region", region.to_owned())]);
}

type QueueSample = HashMap<(String, i32), (u64, f64)>;

/// The latest queue sample and the two gauges that report it (kept for the process's life).
struct QueueGauges {
    sample: Mutex<QueueSample>,
    _gauges: Vec<opentelemetry::metrics::ObservableGauge<f64>>,
}

fn queue_sample() -> &'static Mutex<QueueSample> {
    static GAUGES: OnceLock<QueueGauges> = OnceLock::new();
    &GAUGES
        .get_or_init(|| {
            let meter = meter();
            let read = |pick: fn(&(u64, f64)) -> f64| {
                move |gauge: &dyn opentelemetry::metrics::AsyncInstrument<f64>| {
                    for ((region, priority), value) in queue_sample()
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .iter()
                    {
                        gauge.observe(
                            pick(value),
                            &[
                                KeyValue::new("region", region.clone()),
                                KeyValue::new("priority", i64::from(*priority)),
                            ],
                        );
                    }
                }
            };
            #[allow(clippy::cast_precision_loss)]
            let length = read(|(count, _)| *count as f64);
            let gauges = vec![
                meter
                    .f64_observable_gauge("relay_queue_length")
                    .with_description("Incidents waiting in the queue, by region and priority")
                    .with_callback(length)
                    .build(),
                meter
                    .f64_observable_gauge("relay_queue_oldest_wait_seconds")
                    .with_description(
                        "How long the oldest queued incident has waited, by region and priority",
                    )
                    .with_callback(read(|(_, oldest)| *oldest))
                    .build(),
            ];
            QueueGauges {
                sample: Mutex::new(QueueSample::new()),
                _gauges: gauges,
            }
        })
        .sample
}

/// Replaces the queue sample with the incidents queued now (every region's).
pub fn queue(queued: &[IncidentRecord], now: DateTime<Utc>) {
    let mut sample = QueueSample::new();
    for incident in queued {
        let entry = sample
            .entry((incident.region.clone(), incident.priority))
            .or_insert((0, 0.0));
        entry.0 += 1;
        if let Some(at) = incident.queued_time {
            #[allow(clippy::cast_precision_loss)]
            let waited = now.signed_duration_since(at).num_milliseconds().max(0) as f64 / 1e3;
            entry.1 = entry.1.max(waited);
        }
    }
    *queue_sample()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = sample;
}

/// The routing sequencer's backlog, as last sampled: (pending events, oldest age in seconds).
fn sequencer_sample() -> &'static Mutex<(f64, f64)> {
    struct SequencerGauges {
        sample: Mutex<(f64, f64)>,
        _gauges: Vec<opentelemetry::metrics::ObservableGauge<f64>>,
    }
    static GAUGES: OnceLock<SequencerGauges> = OnceLock::new();
    &GAUGES
        .get_or_init(|| {
            let read = |pick: fn(&(f64, f64)) -> f64| {
                move |gauge: &dyn opentelemetry::metrics::AsyncInstrument<f64>| {
                    let sample = *sequencer_sample()
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    gauge.observe(pick(&sample), &[]);
                }
            };
            let meter = meter();
            SequencerGauges {
                sample: Mutex::new((0.0, 0.0)),
                _gauges: vec![
                    meter
                        .f64_observable_gauge("relay_routing_sequencer_pending_events")
                        .with_description("Assignment events written and not yet numbered")
                        .with_callback(read(|(pending, _)| *pending))
                        .build(),
                    meter
                        .f64_observable_gauge("relay_routing_sequencer_oldest_age_seconds")
                        .with_description(
                            "Age of the oldest assignment event waiting for its number",
                        )
                        .with_callback(read(|(_, age)| *age))
                        .build(),
                ],
            }
        })
        .sample
}

/// Replaces the sequencer sample.
pub fn sequencer(pending: i64, oldest: Option<DateTime<Utc>>, now: DateTime<Utc>) {
    #[allow(clippy::cast_precision_loss)]
    let sample = (
        pending as f64,
        oldest.map_or(0.0, |at| {
            now.signed_duration_since(at).num_milliseconds().max(0) as f64 / 1e3
        }),
    );
    *sequencer_sample()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = sample;
}
