//! The conformance suite of the team stores: every scenario is a public function over
//! `&dyn FleetStore` (both traits), which the crate's `tests/conformance.rs` runs unchanged on
//! the Redis backend (the machine's real server, and a Redis Cluster) and on the in-process
//! backend. Another store implementation runs the same functions. Times are fixed (`t0()`), so
//! every scenario passes whatever the clock says.
#![allow(clippy::missing_panics_doc, clippy::unwrap_used)]

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use crate::{
    ChangeError, ClaimError, FleetStore, LocationOutcome, LocationReport, Recorded, ReleaseError,
    ReleaseOutcome, RequestRecord,
    model::{EventId, EventKind, Position, TeamDefinition, TeamStatus},
};

mod teams;
pub use teams::*;
mod dispatch;
pub use dispatch::*;
mod records;
pub use records::*;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5)
        .single()
        .expect("valid time")
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

fn def(id: &str, region: &str) -> TeamDefinition {
    TeamDefinition {
        team_id: id.into(),
        display_name: format!("Team {id}"),
        region: region.into(),
        capabilities: vec!["clinician".into(), "emt".into()],
        shift_ends_at: None,
    }
}

fn at(latitude: f64, longitude: f64) -> Position {
    Position {
        latitude,
        longitude,
    }
}

fn report(id: &str, position: Position, recorded_at: DateTime<Utc>) -> LocationReport {
    LocationReport {
        team_id: id.into(),
        position,
        recorded_at,
        heading_degrees: Some(90.0),
        speed_meters_per_second: None,
        accuracy_meters: Some(5.0),
    }
}

/// Creates an AVAILABLE team with a position reported at `t0()`.
async fn available_team(store: &dyn FleetStore, id: &str, region: &str, position: Position) {
    store
        .upsert_team(&def(id, region), None, t0())
        .await
        .expect("upsert");
    store
        .set_status(id, TeamStatus::Available, "", None, t0())
        .await
        .expect("available");
    let outcome = store
        .report_locations(&[report(id, position, t0())], t0())
        .await
        .expect("report");
    assert!(matches!(outcome[0], LocationOutcome::Accepted { .. }));
}

fn ids(found: &[(crate::model::Team, f64)]) -> Vec<String> {
    found.iter().map(|(t, _)| t.team_id.clone()).collect()
}
