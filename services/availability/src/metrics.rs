//! Availability's domain metrics (the RPC ones come from `relay_runtime::metrics`). Labels are
//! regions, statuses and outcomes only, never team ids.
//!
//! - `relay_location_reports_total{outcome}`: position reports APPLIED, refused as STALE (an
//!   older report than the stored one), for an UNKNOWN_TEAM, or INVALID (a bad field).
//! - `relay_teams{region, status}`: teams by live status (sampled every 15 s).
//! - `relay_teams_stale_position{region}`: AVAILABLE teams whose last position is older than
//!   `[availability] stale_position_seconds` (default 300, routing's default staleness
//!   limit): routing cannot send them.
//! - `relay_live_state_losses_total`: times this replica found Redis had lost the live state
//!   (the epoch key gone) and rebuilt it; `relay_live_state_rebuilt_teams_total`: teams it
//!   recreated from the roster then.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use opentelemetry::{KeyValue, metrics::Counter};
use relay_proto::common::TeamStatus;
use relay_runtime::metrics::meter;
use tokio_util::sync::CancellationToken;

use relay_fleet::LocationOutcome;

use crate::service::Availability;

fn reports() -> &'static Counter<u64> {
    static REPORTS: OnceLock<Counter<u64>> = OnceLock::new();
    REPORTS.get_or_init(|| {
        meter()
            .u64_counter("relay_location_reports")
            .with_description(
                "Position reports, by outcome (APPLIED, STALE, UNKNOWN_TEAM, INVALID)",
            )
            .build()
    })
}

/// Counts the outcomes of applied reports.
pub fn record_reports(outcomes: &[LocationOutcome]) {
    for outcome in outcomes {
        let label = match outcome {
            LocationOutcome::Accepted { .. } => "APPLIED",
            LocationOutcome::Stale { .. } => "STALE",
            LocationOutcome::NotFound => "UNKNOWN_TEAM",
        };
        reports().add(1, &[KeyValue::new("outcome", label)]);
    }
}

fn live_state() -> &'static Counter<u64> {
    static LOSSES: OnceLock<Counter<u64>> = OnceLock::new();
    LOSSES.get_or_init(|| {
        meter()
            .u64_counter("relay_live_state_losses")
            .with_description(
                "Times this replica found that Redis lost the live state (its epoch key gone)",
            )
            .build()
    })
}

fn rebuilt_teams() -> &'static Counter<u64> {
    static REBUILT: OnceLock<Counter<u64>> = OnceLock::new();
    REBUILT.get_or_init(|| {
        meter()
            .u64_counter("relay_live_state_rebuilt_teams")
            .with_description("Teams recreated from the roster after a loss of the live state")
            .build()
    })
}

/// Counts a loss of the live state.
pub fn live_state_lost() {
    live_state().add(1, &[]);
}

/// Counts the teams recreated after a loss.
pub fn live_state_rebuilt(teams: usize) {
    rebuilt_teams().add(u64::try_from(teams).unwrap_or(u64::MAX), &[]);
}

/// Counts a report refused for a bad field.
pub fn record_invalid_report() {
    reports().add(1, &[KeyValue::new("outcome", "INVALID")]);
}

type Counts = HashMap<(String, &'static str), u64>;

/// Samples teams by region and status every `every` until `shutdown`.
pub async fn run_sampler(
    domain: Availability,
    every: Duration,
    stale_after: Duration,
    shutdown: CancellationToken,
) {
    let by_status: Arc<Mutex<Counts>> = Arc::default();
    let stale: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let observed = Arc::clone(&by_status);
    let _teams = meter()
        .u64_observable_gauge("relay_teams")
        .with_description("Teams by region and live status")
        .with_callback(move |gauge| {
            for ((region, status), count) in
                observed.lock().unwrap_or_else(|e| e.into_inner()).iter()
            {
                gauge.observe(
                    *count,
                    &[
                        KeyValue::new("region", region.clone()),
                        KeyValue::new("status", *status),
                    ],
                );
            }
        })
        .build();
    let observed = Arc::clone(&stale);
    let _stale = meter()
        .u64_observable_gauge("relay_teams_stale_position")
        .with_description("AVAILABLE teams whose last position is too old for routing to send them")
        .with_callback(move |gauge| {
            for (region, count) in observed.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                gauge.observe(*count, &[KeyValue::new("region", region.clone())]);
            }
        })
        .build();
    loop {
        if let Some((counts, stale_counts)) = sample(&domain, stale_after).await {
            *by_status.lock().unwrap_or_else(|e| e.into_inner()) = counts;
            *stale.lock().unwrap_or_else(|e| e.into_inner()) = stale_counts;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

async fn sample(
    domain: &Availability,
    stale_after: Duration,
) -> Option<(Counts, HashMap<String, u64>)> {
    let now = domain.now();
    let stale_after = chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::MAX);
    let mut counts = Counts::new();
    let mut stale = HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let page = match domain.list(None, None, after.as_deref(), 500).await {
            Ok(page) => page,
            Err(error) => {
                tracing::debug!(%error, "team sample failed");
                return None;
            }
        };
        for team in &page.teams {
            let status = team.status;
            let name = status
                .as_str_name()
                .strip_prefix("TEAM_STATUS_")
                .unwrap_or("UNSPECIFIED");
            *counts.entry((team.region.clone(), name)).or_default() += 1;
            if status == TeamStatus::Available {
                let updated = team.location_updated_at;
                let is_stale = updated.is_none_or(|at| now.signed_duration_since(at) > stale_after);
                *stale.entry(team.region.clone()).or_default() += u64::from(is_stale);
            }
        }
        match (page.more, page.teams.last()) {
            (true, Some(last)) => after = Some(last.team_id.clone()),
            _ => return Some((counts, stale)),
        }
    }
}
