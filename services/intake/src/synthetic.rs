//! Synthetic incidents with realistic timelines, for the program report's benchmark and its
//! browser check: a seeded, deterministic mix of community, co-response, traditional and
//! review calls over a period, busier by day, with night calls outside program hours, queued
//! calls, escalations, cancellations, team times, outcomes and referrals.
//!
//! They carry a narrative and a caller, so that a report built from them proves that neither
//! reaches it. Nothing here runs in the service.

use relay_proto::{
    common::UnservedReason,
    intake::{
        CallerContact, CloseOutcome, Disposition, Incident, IncidentTimeline, StepTime,
        TriageDecision,
    },
};

use crate::store::{StoredIncident, timestamp_of};

/// A small, fast, seeded generator (splitmix64): the same seed gives the same incidents.
#[derive(Debug, Clone)]
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let value = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        value
    }

    /// Uniform in [low, high) (micros or seconds).
    fn between(&mut self, low: i64, high: i64) -> i64 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
        let offset = (self.unit() * (high - low) as f64) as i64;
        low + offset
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let index = (self.unit() * items.len() as f64) as usize;
        &items[index.min(items.len() - 1)]
    }
}

const S: i64 = 1_000_000;

/// A step at `micros` by the source's own clock, recorded by Relay 0.4 s later.
#[must_use]
pub fn source(micros: i64) -> Option<StepTime> {
    Some(StepTime {
        source_time: Some(timestamp_of(micros)),
        record_time: Some(timestamp_of(micros + 400_000)),
    })
}

/// A step Relay is the source of, recorded at `micros`.
#[must_use]
pub fn record(micros: i64) -> Option<StepTime> {
    Some(StepTime {
        source_time: None,
        record_time: Some(timestamp_of(micros)),
    })
}

/// An unserved wait of `seconds`.
#[must_use]
pub fn wait(seconds: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos: 0 })
}

/// `count` incidents received in `[from, to)` (micros), spread over `regions`, numbered from
/// `first` (ids `syn-<n>`), from `seed`. Program hours are 07:00 to 23:00 UTC.
pub fn incidents(
    count: u64,
    first: u64,
    from: i64,
    to: i64,
    regions: &[&str],
    seed: u64,
) -> impl Iterator<Item = StoredIncident> {
    let regions: Vec<String> = regions.iter().map(|r| (*r).to_owned()).collect();
    (first..first + count).map(move |n| one(n, from, to, &regions, seed))
}

fn one(n: u64, from: i64, to: i64, regions: &[String], seed: u64) -> StoredIncident {
    let mut mix = Mix(seed ^ n.wrapping_mul(0xD1B5_4A32_D192_ED03));
    // Busier by day: draw twice and keep a daytime hour when either draw gives one.
    let mut received = mix.between(from, to);
    let hour = |t: i64| (t / S / 3600).rem_euclid(24);
    if !(8..22).contains(&hour(received)) {
        received = mix.between(from, to);
    }
    let open = (7..23).contains(&hour(received));
    let roll = mix.unit();
    let disposition = if roll < 0.30 {
        Disposition::CommunityResponse
    } else if roll < 0.38 {
        Disposition::CoResponse
    } else if roll < 0.96 {
        Disposition::TraditionalResponse
    } else {
        Disposition::NeedsReview
    };
    let apco = match disposition {
        Disposition::CommunityResponse => {
            *mix.pick(&["WELFARE", "WELFARE", "EDP", "INTOX", "MNTL"])
        }
        Disposition::CoResponse => *mix.pick(&["SUICTHRT", "EDP", "MTLV"]),
        Disposition::TraditionalResponse => {
            *mix.pick(&["ASSAULT", "MVA", "BURGLARY", "CHESTPAIN", "FIRE", "THEFT"])
        }
        _ => "",
    };
    let priority = *mix.pick(&[1, 2, 2, 3, 3, 3, 4, 4, 5]);
    let mut timeline = IncidentTimeline {
        received: source(received),
        triaged: record(received + mix.between(S / 2, 3 * S)),
        ..IncidentTimeline::default()
    };
    let mut outcome = CloseOutcome::Unspecified;
    let mut referral_ids = Vec::new();
    let eligible = matches!(
        disposition,
        Disposition::CommunityResponse | Disposition::CoResponse
    );
    let queued_at = received + 3 * S;
    if eligible && !open {
        timeline.queued = record(queued_at);
        timeline.escalated = record(queued_at + 60 * S);
        timeline.first_unserved_reason = UnservedReason::OutsideProgramHours as i32;
        timeline.unserved_wait = wait(60);
        outcome = CloseOutcome::HandedToPolice;
        timeline.closed = record(received + 3600 * S);
    } else if eligible {
        let roll = mix.unit();
        if roll < 0.78 {
            (outcome, referral_ids) = served(&mut mix, n, received, queued_at, &mut timeline);
        } else if roll < 0.90 {
            let waited = mix.between(600, 1800);
            timeline.queued = record(queued_at);
            timeline.escalated = record(queued_at + waited * S);
            timeline.first_unserved_reason = UnservedReason::AllBusy as i32;
            timeline.unserved_wait = wait(waited);
            outcome = CloseOutcome::HandedToPolice;
            timeline.closed = record(received + 3600 * S);
        } else if roll < 0.94 {
            timeline.escalated = record(queued_at);
            timeline.first_unserved_reason = UnservedReason::NoTeamsInRegion as i32;
        } else {
            timeline.cancelled = record(received + mix.between(30 * S, 600 * S));
        }
    } else if disposition == Disposition::NeedsReview && mix.unit() < 0.5 {
        timeline.escalated = record(received + 300 * S);
        timeline.first_unserved_reason = UnservedReason::ReviewTimeout as i32;
    }
    let region = mix.pick(regions).clone();
    Story {
        apco,
        priority,
        region,
        received,
        disposition,
        outcome,
        referral_ids,
        timeline,
    }
    .stored(n)
}

/// What [`one`] drew of a call, to store.
struct Story {
    apco: &'static str,
    priority: i32,
    region: String,
    received: i64,
    disposition: Disposition,
    outcome: CloseOutcome,
    referral_ids: Vec<String>,
    timeline: IncidentTimeline,
}

impl Story {
    /// The `n`th synthetic incident as stored.
    fn stored(self, n: u64) -> StoredIncident {
        let Self {
            apco,
            priority,
            region,
            received,
            disposition,
            outcome,
            referral_ids,
            timeline,
        } = self;
        StoredIncident {
            incident: Incident {
                incident_id: format!("syn-{n}"),
                cad_system: "synthetic-cad".into(),
                cad_incident_id: format!("SYN-{n}"),
                incident_type: if apco.is_empty() {
                    "XYZ".into()
                } else {
                    apco.into()
                },
                apco_incident_type: apco.into(),
                priority,
                region,
                narrative: "NARRATIVE-SECRET synthetic narrative".into(),
                caller: Some(CallerContact {
                    name: "CALLERNAME-SECRET".into(),
                    phone: "+15415550199".into(),
                    callback_number: None,
                }),
                received_at: Some(timestamp_of(received)),
                state: if timeline.closed.is_some() {
                    2
                } else if timeline.cancelled.is_some() {
                    3
                } else {
                    1
                },
                triage: Some(TriageDecision {
                    disposition: disposition as i32,
                    protocol_version: "synthetic".into(),
                    ..TriageDecision::default()
                }),
                close_outcome: outcome as i32,
                referral_ids,
                timeline: Some(timeline),
                revision: 1,
                ..Incident::default()
            },
            override_disposition: 0,
            team_status: 0,
        }
    }
}

/// An eligible call a team served, some after waiting for a busy team: its steps, how it
/// closed and its referrals.
fn served(
    mix: &mut Mix,
    n: u64,
    received: i64,
    queued_at: i64,
    timeline: &mut IncidentTimeline,
) -> (CloseOutcome, Vec<String>) {
    // Served, some after waiting for a busy team.
    let mut assigned = received + mix.between(20 * S, 90 * S);
    if mix.unit() < 0.2 {
        let waited = mix.between(120, 1200);
        timeline.queued = record(queued_at);
        timeline.first_unserved_reason = UnservedReason::AllBusy as i32;
        timeline.unserved_wait = wait(waited);
        assigned += waited * S;
    }
    let dispatched = assigned + mix.between(5 * S, 60 * S);
    let en_route = dispatched + mix.between(10 * S, 120 * S);
    let on_scene = en_route + mix.between(4 * 60 * S, 25 * 60 * S);
    let cleared = on_scene + mix.between(10 * 60 * S, 70 * 60 * S);
    timeline.assigned = source(assigned);
    timeline.dispatched = source(dispatched);
    timeline.en_route = source(en_route);
    timeline.on_scene = source(on_scene);
    timeline.cleared = source(cleared);
    timeline.closed = record(cleared + 5 * 60 * S);
    let outcome = *mix.pick(&[
        CloseOutcome::ResolvedOnScene,
        CloseOutcome::ResolvedOnScene,
        CloseOutcome::Referred,
        CloseOutcome::Referred,
        CloseOutcome::TransportedToService,
        CloseOutcome::RefusedServices,
        CloseOutcome::HandedToEms,
        CloseOutcome::UnableToLocate,
    ]);
    let referrals = match outcome {
        CloseOutcome::Referred => mix.between(1, 4),
        CloseOutcome::TransportedToService => 1,
        _ => 0,
    };
    let referral_ids = (0..referrals).map(|i| format!("ref-{n}-{i}")).collect();
    (outcome, referral_ids)
}
