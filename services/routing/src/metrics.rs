//! Routing's domain metrics (the RPC ones come from `relay_runtime::metrics`). Labels are
//! regions and enumerations only.
//!
//! - `relay_routing_assignments_total{region, source}`: assignments recorded, by how they
//!   were made (AUTO_ASSIGN, QUEUE, DISPATCHER).
//! - `relay_routing_claims_refused_total{region, reason}`: claims the record refused:
//!   TEAM_BUSY (the team has an active assignment) or STALE_FENCING_TOKEN (a claim older than
//!   one already recorded: Redis lost writes).
//! - `relay_routing_escalations_total{region}`: queued incidents escalated past their limit.

use std::sync::OnceLock;

use opentelemetry::{KeyValue, metrics::Counter};
use relay_proto::routing::{Assignment, AssignmentSource};
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
