//! Program reports: the figures a program manager shows the mayor, computed from intake's own
//! record (each incident and its timeline), for a period and a region or all.
//!
//! Every figure is defined once, with its formula and the fields it uses, in
//! docs/program-metrics.md; this module is that document in code, and the names of the
//! figures here are the `metric` names there. The same [`Report`] feeds the gRPC read
//! (`relay.reports.v1.ReportService`), `relay report --format csv|json` and the HTML report.
//!
//! The report reads incidents through [`IncidentStore::scan_received`], which hands over the
//! stored body alone: narrative, caller contact and notes live in other columns and never
//! reach this module.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Duration, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use relay_proto::{
    common::UnservedReason,
    intake::{CloseOutcome, Disposition, Incident, IncidentTimeline, StepTime},
    reports::{ProgramReport, ReportFigure},
};

use crate::store::{IncidentStore, StoreError, timestamp_of};

mod builder;

/// Longest period a report covers.
pub const MAX_PERIOD_DAYS: i64 = 366;

/// Periods up to this many days are bucketed by day, longer ones by week.
pub const DAILY_UP_TO_DAYS: i64 = 31;

/// Weekday names as keys, Monday first (chrono's `num_days_from_monday`).
pub const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// What to report on.
#[derive(Debug, Clone)]
pub struct ReportRequest {
    /// Start of the period, inclusive (by the CAD's received_at).
    pub from: DateTime<Utc>,
    /// End of the period, exclusive.
    pub to: DateTime<Utc>,
    /// One region, or empty for all.
    pub region: String,
    /// The zone of hour-of-day, weekday and calendar buckets.
    pub time_zone: Tz,
}

/// The response-time segments, in report order: (metric prefix, from step, to step).
pub const SEGMENTS: [(&str, Step, Step); 6] = [
    ("received_to_triaged", Step::Received, Step::Triaged),
    ("received_to_assigned", Step::Received, Step::Assigned),
    ("received_to_dispatched", Step::Received, Step::Dispatched),
    ("received_to_en_route", Step::Received, Step::EnRoute),
    ("received_to_on_scene", Step::Received, Step::OnScene),
    ("on_scene_to_cleared", Step::OnScene, Step::Cleared),
];

/// A timeline step a segment starts or ends at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The CAD received the call.
    Received,
    /// The first triage decision.
    Triaged,
    /// A team was assigned.
    Assigned,
    /// The team's status became DISPATCHED.
    Dispatched,
    /// The team's status became EN_ROUTE.
    EnRoute,
    /// The team's status became ON_SCENE.
    OnScene,
    /// The team cleared.
    Cleared,
}

/// Where a step's time comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Basis {
    Source,
    Record,
}

/// A step's time in micros: the source's own time where present, Relay's record time
/// otherwise.
fn step_time(step: Option<&StepTime>) -> Option<(i64, Basis)> {
    let step = step?;
    if let Some(source) = step.source_time.as_ref() {
        return Some((crate::store::micros_of(Some(source)), Basis::Source));
    }
    step.record_time
        .as_ref()
        .map(|record| (crate::store::micros_of(Some(record)), Basis::Record))
}

fn step_of(incident: &Incident, step: Step) -> Option<(i64, Basis)> {
    let timeline = incident.timeline.as_ref()?;
    match step {
        // The CAD's received_at is the incident's own field; the timeline repeats it.
        Step::Received => step_time(timeline.received.as_ref()).or_else(|| {
            incident
                .received_at
                .as_ref()
                .map(|t| (crate::store::micros_of(Some(t)), Basis::Source))
        }),
        Step::Triaged => step_time(timeline.triaged.as_ref()),
        Step::Assigned => step_time(timeline.assigned.as_ref()),
        Step::Dispatched => step_time(timeline.dispatched.as_ref()),
        Step::EnRoute => step_time(timeline.en_route.as_ref()),
        Step::OnScene => step_time(timeline.on_scene.as_ref()),
        Step::Cleared => step_time(timeline.cleared.as_ref()),
    }
}

/// Durations of one segment, in seconds, and which clocks they came from.
#[derive(Debug, Clone, Default)]
pub struct Durations {
    /// Every duration, in seconds (unsorted until [`ReportBuilder::finish`]).
    pub seconds: Vec<f64>,
    sources: u64,
    records: u64,
    /// Segments dropped because the end came before the start (clocks that disagree).
    pub negative: u64,
}

impl Durations {
    fn add(&mut self, start: (i64, Basis), end: (i64, Basis)) {
        let micros = end.0 - start.0;
        if micros < 0 {
            self.negative += 1;
            return;
        }
        #[allow(clippy::cast_precision_loss)] // micros of a call segment fit f64 exactly
        self.seconds.push(micros as f64 / 1e6);
        for basis in [start.1, end.1] {
            match basis {
                Basis::Source => self.sources += 1,
                Basis::Record => self.records += 1,
            }
        }
    }

    fn basis(&self) -> &'static str {
        match (self.sources, self.records) {
            (0, 0) => "",
            (_, 0) => "source",
            (0, _) => "record",
            _ => "mixed",
        }
    }
}

/// The `p`-th percentile (0 < p <= 1) of sorted values, nearest-rank: the smallest value
/// with at least `p` of the values at or below it. `None` when empty.
#[must_use]
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Why an eligible call went unserved, as the report names it: the timeline's first
/// unserved reason, or, when it has none, what happened to the call.
fn unserved_key(timeline: &IncidentTimeline) -> String {
    match UnservedReason::try_from(timeline.first_unserved_reason) {
        Ok(UnservedReason::Unspecified) | Err(_) => {
            if timeline.cancelled.is_some() {
                "CANCELLED_BEFORE_ASSIGNMENT".to_owned()
            } else if timeline.escalated.is_some() {
                "ESCALATED".to_owned()
            } else if timeline.closed.is_some() {
                "CLOSED_WITHOUT_ASSIGNMENT".to_owned()
            } else {
                "NOT_YET_ROUTED".to_owned()
            }
        }
        Ok(reason) => reason
            .as_str_name()
            .trim_start_matches("UNSERVED_REASON_")
            .to_owned(),
    }
}

/// A bucket of the calls-and-diversion trend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrendBucket {
    /// Calls received.
    pub received: u64,
    /// Eligible calls.
    pub eligible: u64,
    /// Eligible calls a community team was assigned to.
    pub served: u64,
}

/// Everything the report counts, as it goes through the incidents.
#[derive(Debug)]
pub struct ReportBuilder {
    request: ReportRequest,
    bucket_days: i64,
    buckets: Vec<DateTime<Utc>>,
    trend: Vec<TrendBucket>,
    received: u64,
    by_disposition: BTreeMap<String, u64>,
    by_type: BTreeMap<String, u64>,
    eligible: u64,
    co_response: u64,
    safety_alert_calls: u64,
    safety_alerts: u64,
    served_with_safety_alert: u64,
    served: u64,
    served_after_waiting: u64,
    served_wait: Durations,
    unserved_by_reason: BTreeMap<String, u64>,
    unserved_wait_by_reason: BTreeMap<String, Durations>,
    unserved_wait: Durations,
    escalated: u64,
    review_timeouts: u64,
    segments: Vec<Durations>,
    segments_by_priority: BTreeMap<i32, Vec<Durations>>,
    closed: u64,
    by_outcome: BTreeMap<String, u64>,
    served_closed: u64,
    referrals: u64,
    referral_calls: u64,
    by_hour: [u64; 24],
    by_weekday: [u64; 7],
    unserved_heat: [[u64; 24]; 7],
}

/// Adds one to `key`, allocating the key only the first time it is seen.
fn count_key(counts: &mut BTreeMap<String, u64>, key: &str) {
    match counts.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            counts.insert(key.to_owned(), 1);
        }
    }
}

fn disposition_name(value: i32) -> &'static str {
    Disposition::try_from(value)
        .unwrap_or(Disposition::Unspecified)
        .as_str_name()
        .trim_start_matches("DISPOSITION_")
}

/// The unserved keys that always appear (zero when no call had them), in funnel order.
pub const UNSERVED_KEYS: &[&str] = &[
    "NO_TEAMS_IN_REGION",
    "NO_TEAM_IN_RANGE",
    "ALL_BUSY",
    "MISSING_CAPABILITY",
    "ALL_POSITIONS_STALE",
    "SHIFT_ENDING",
    "OUTSIDE_PROGRAM_HOURS",
    "ROUTING_REFUSED",
    "REVIEW_TIMEOUT",
    "RECOMMENDATION_EXPIRED",
    "CANCELLED_BEFORE_ASSIGNMENT",
    "ESCALATED",
    "CLOSED_WITHOUT_ASSIGNMENT",
    "NOT_YET_ROUTED",
];

/// The start (local midnight, or Monday's for weeks) of the bucket holding `at`.
fn bucket_start(at: DateTime<Utc>, zone: Tz, days: i64) -> DateTime<Utc> {
    let local = at.with_timezone(&zone).date_naive();
    let date = if days == 7 {
        local - Duration::days(i64::from(local.weekday().num_days_from_monday()))
    } else {
        local
    };
    local_midnight(date, zone)
}

fn next_bucket(start: DateTime<Utc>, zone: Tz, days: i64) -> DateTime<Utc> {
    let date = start.with_timezone(&zone).date_naive() + Duration::days(days);
    local_midnight(date, zone)
}

/// The first instant of a local date (a day that starts in a daylight-saving gap starts at
/// the gap's end).
fn local_midnight(date: chrono::NaiveDate, zone: Tz) -> DateTime<Utc> {
    let mut time = date.and_time(NaiveTime::MIN);
    for _ in 0..4 {
        if let Some(at) = zone.from_local_datetime(&time).earliest() {
            return at.with_timezone(&Utc);
        }
        time += Duration::minutes(30);
    }
    Utc.from_utc_datetime(&date.and_time(NaiveTime::MIN))
}

/// A computed report: the figures, and the same data shaped for charts.
#[derive(Debug, Clone)]
pub struct Report {
    /// What was reported on.
    pub request: ReportRequest,
    /// "day" or "week".
    pub bucket: &'static str,
    /// The trend, bucket by bucket.
    pub buckets: Vec<(DateTime<Utc>, TrendBucket)>,
    /// Sorted durations (seconds) of each segment of [`SEGMENTS`].
    pub segments: Vec<(&'static str, Durations)>,
    /// Eligible calls not served, by reason key.
    pub unserved_by_reason: BTreeMap<String, u64>,
    /// Eligible calls not served, by local weekday (Monday first) and hour.
    pub unserved_heat: [[u64; 24]; 7],
    /// Every figure, in the order of docs/program-metrics.md.
    pub figures: Vec<ReportFigure>,
    /// When the report was computed.
    pub create_time: DateTime<Utc>,
}

impl Report {
    /// The figure for `metric` over the whole period without breakdown.
    #[must_use]
    pub fn headline(&self, metric: &str) -> Option<&ReportFigure> {
        self.figure(metric, "", "")
    }

    /// The whole-period figure for `metric`, `breakdown` and `key`.
    #[must_use]
    pub fn figure(&self, metric: &str, breakdown: &str, key: &str) -> Option<&ReportFigure> {
        self.figures.iter().find(|f| {
            f.metric == metric
                && f.breakdown == breakdown
                && f.key == key
                && f.bucket_start_time.is_none()
        })
    }

    /// The report as the API returns it.
    #[must_use]
    pub fn to_proto(&self) -> ProgramReport {
        ProgramReport {
            from_time: Some(timestamp_of(self.request.from.timestamp_micros())),
            to_time: Some(timestamp_of(self.request.to.timestamp_micros())),
            region: self.request.region.clone(),
            time_zone: self.request.time_zone.name().to_owned(),
            bucket: self.bucket.to_owned(),
            figures: self.figures.clone(),
            create_time: Some(timestamp_of(self.create_time.timestamp_micros())),
        }
    }
}

/// The time zone of a region's report: `[intake.programs.<region>] time_zone` when
/// configured, UTC otherwise (and for all regions together).
#[must_use]
pub fn report_time_zone(
    programs: &std::collections::HashMap<String, crate::program::ProgramSettings>,
    region: &str,
) -> Tz {
    programs
        .get(region)
        .and_then(|p| p.time_zone.as_deref())
        .and_then(|zone| zone.parse::<Tz>().ok())
        .unwrap_or(Tz::UTC)
}

/// Computes the report of `request` from `store`.
///
/// # Errors
/// When the store fails or a stored incident cannot be decoded.
pub async fn compute(
    store: &dyn IncidentStore,
    request: ReportRequest,
    now: DateTime<Utc>,
) -> Result<Report, StoreError> {
    let mut builder = ReportBuilder::new(request);
    let (from, to) = (
        builder.request.from.timestamp_micros(),
        builder.request.to.timestamp_micros(),
    );
    let region = builder.request.region.clone();
    store
        .scan_received(from, to, &region, &mut |incident| builder.add(&incident))
        .await?;
    Ok(builder.finish(now))
}
