//! Intake's domain metrics (see `relay_runtime::metrics` for the RPC ones). Events are counted
//! where they are sequenced, so each is counted once across replicas; the backlogs are sampled
//! by [`run_sampler`]. Labels are regions and enumerations only, never ids or caller data.
//!
//! - `relay_incident_events_total{region, kind}`: every event on the CAD streams (RECEIVED,
//!   TRIAGED, ASSIGNED, DISPATCHED, ..., ESCALATED, CLOSED), by kind.
//! - `relay_incidents_triaged_total{region, disposition}`: triage decisions.
//! - `relay_incidents_unserved_total{region, kind, reason}`: QUEUED and ESCALATED events by
//!   unserved reason (ALL_BUSY, OUTSIDE_PROGRAM_HOURS, REVIEW_TIMEOUT, ...).
//! - `relay_outbox_backlog` and `relay_outbox_oldest_age_seconds`: routing requests not yet
//!   delivered.
//! - `relay_sequencer_pending_events` and `relay_sequencer_oldest_age_seconds`: events
//!   committed but not yet on the CAD streams (sequencer lag).

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use opentelemetry::{
    KeyValue,
    metrics::{Counter, ObservableGauge},
};
use relay_proto::{
    common::UnservedReason,
    intake::{Disposition, IncidentEvent, IncidentEventKind},
};
use relay_runtime::metrics::meter;
use tokio_util::sync::CancellationToken;

use crate::core::Intake;

struct Counters {
    events: Counter<u64>,
    triaged: Counter<u64>,
    unserved: Counter<u64>,
}

fn counters() -> &'static Counters {
    static COUNTERS: OnceLock<Counters> = OnceLock::new();
    COUNTERS.get_or_init(|| {
        let meter = meter();
        Counters {
            events: meter
                .u64_counter("relay_incident_events")
                .with_description("Events on the CAD streams, by region and kind")
                .build(),
            triaged: meter
                .u64_counter("relay_incidents_triaged")
                .with_description("Triage decisions, by region and disposition")
                .build(),
            unserved: meter
                .u64_counter("relay_incidents_unserved")
                .with_description("Calls queued or escalated, by region, kind and unserved reason")
                .build(),
        }
    })
}

fn short(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_owned()
}

/// Counts events just sequenced.
pub fn record(events: &[IncidentEvent]) {
    let counters = counters();
    for event in events {
        let kind = IncidentEventKind::try_from(event.kind).unwrap_or_default();
        let kind_name = short(kind.as_str_name(), "INCIDENT_EVENT_KIND_");
        let region = KeyValue::new("region", event.region.clone());
        counters.events.add(
            1,
            &[region.clone(), KeyValue::new("kind", kind_name.clone())],
        );
        match kind {
            IncidentEventKind::Triaged => {
                let disposition = event
                    .triage
                    .as_ref()
                    .and_then(|t| Disposition::try_from(t.disposition).ok())
                    .unwrap_or_default();
                counters.triaged.add(
                    1,
                    &[
                        region,
                        KeyValue::new(
                            "disposition",
                            short(disposition.as_str_name(), "DISPOSITION_"),
                        ),
                    ],
                );
            }
            IncidentEventKind::Queued | IncidentEventKind::Escalated => {
                let reason = event
                    .routing
                    .as_ref()
                    .and_then(|r| UnservedReason::try_from(r.unserved_reason).ok())
                    .unwrap_or_default();
                counters.unserved.add(
                    1,
                    &[
                        region,
                        KeyValue::new("kind", kind_name),
                        KeyValue::new("reason", short(reason.as_str_name(), "UNSERVED_REASON_")),
                    ],
                );
            }
            _ => {}
        }
    }
}

/// The sampled backlogs.
#[derive(Default)]
struct Backlogs {
    outbox: AtomicI64,
    outbox_oldest_micros: AtomicI64,
    pending: AtomicI64,
    pending_oldest_micros: AtomicI64,
    now_micros: AtomicI64,
}

fn age_seconds(now: i64, oldest: i64) -> f64 {
    if oldest == 0 {
        0.0
    } else {
        #[allow(clippy::cast_precision_loss)]
        let seconds = (now - oldest).max(0) as f64 / 1e6;
        seconds
    }
}

#[allow(clippy::cast_precision_loss)]
fn gauges(backlogs: &Arc<Backlogs>) -> Vec<ObservableGauge<f64>> {
    let meter = meter();
    let read = |pick: fn(&Backlogs) -> f64| {
        let backlogs = Arc::clone(backlogs);
        move |gauge: &dyn opentelemetry::metrics::AsyncInstrument<f64>| {
            gauge.observe(pick(&backlogs), &[]);
        }
    };
    vec![
        meter
            .f64_observable_gauge("relay_outbox_backlog")
            .with_description("Routing requests accepted and not yet delivered")
            .with_callback(read(|b| b.outbox.load(Ordering::Relaxed) as f64))
            .build(),
        meter
            .f64_observable_gauge("relay_outbox_oldest_age_seconds")
            .with_description("Age of the oldest undelivered routing request")
            .with_callback(read(|b| {
                age_seconds(
                    b.now_micros.load(Ordering::Relaxed),
                    b.outbox_oldest_micros.load(Ordering::Relaxed),
                )
            }))
            .build(),
        meter
            .f64_observable_gauge("relay_sequencer_pending_events")
            .with_description("Events committed and not yet on the CAD streams")
            .with_callback(read(|b| b.pending.load(Ordering::Relaxed) as f64))
            .build(),
        meter
            .f64_observable_gauge("relay_sequencer_oldest_age_seconds")
            .with_description("Age of the oldest event waiting for the sequencer")
            .with_callback(read(|b| {
                age_seconds(
                    b.now_micros.load(Ordering::Relaxed),
                    b.pending_oldest_micros.load(Ordering::Relaxed),
                )
            }))
            .build(),
    ]
}

/// Samples the backlogs every `every` until `shutdown`.
pub async fn run_sampler(intake: Arc<Intake>, every: Duration, shutdown: CancellationToken) {
    let backlogs = Arc::new(Backlogs::default());
    let _gauges = gauges(&backlogs);
    loop {
        let store = intake.store();
        match (store.outbox_backlog().await, store.pending_events().await) {
            (Ok((outbox, outbox_oldest)), Ok((pending, pending_oldest))) => {
                backlogs.outbox.store(outbox, Ordering::Relaxed);
                backlogs
                    .outbox_oldest_micros
                    .store(outbox_oldest.unwrap_or(0), Ordering::Relaxed);
                backlogs.pending.store(pending, Ordering::Relaxed);
                backlogs
                    .pending_oldest_micros
                    .store(pending_oldest.unwrap_or(0), Ordering::Relaxed);
                backlogs
                    .now_micros
                    .store(intake.clock().now_micros(), Ordering::Relaxed);
            }
            (Err(error), _) | (_, Err(error)) => {
                tracing::debug!(%error, "backlog sample failed");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
