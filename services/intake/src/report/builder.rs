//! [`ReportBuilder`]: a period's incidents folded, one at a time, into the report's figures.

use super::*;

impl ReportBuilder {
    /// A builder for `request`, with every bucket of the period at zero.
    #[must_use]
    pub fn new(request: ReportRequest) -> Self {
        let days = (request.to - request.from).num_days();
        let bucket_days = if days <= DAILY_UP_TO_DAYS { 1 } else { 7 };
        let mut buckets = Vec::new();
        let mut start = bucket_start(request.from, request.time_zone, bucket_days);
        while start < request.to {
            buckets.push(start);
            start = next_bucket(start, request.time_zone, bucket_days);
        }
        let mut by_disposition = BTreeMap::new();
        for d in [
            Disposition::CommunityResponse,
            Disposition::CoResponse,
            Disposition::TraditionalResponse,
            Disposition::NeedsReview,
        ] {
            by_disposition.insert(disposition_name(d as i32).to_owned(), 0);
        }
        let mut by_outcome = BTreeMap::new();
        for value in 1..=8 {
            if let Ok(outcome) = CloseOutcome::try_from(value) {
                by_outcome.insert(close_outcome_name(outcome), 0);
            }
        }
        let mut unserved_by_reason = BTreeMap::new();
        for key in UNSERVED_KEYS {
            unserved_by_reason.insert((*key).to_owned(), 0);
        }
        Self {
            trend: vec![TrendBucket::default(); buckets.len()],
            buckets,
            bucket_days,
            request,
            received: 0,
            by_disposition,
            by_type: BTreeMap::new(),
            eligible: 0,
            co_response: 0,
            safety_alert_calls: 0,
            safety_alerts: 0,
            served_with_safety_alert: 0,
            served: 0,
            served_after_waiting: 0,
            served_wait: Durations::default(),
            unserved_by_reason,
            unserved_wait_by_reason: BTreeMap::new(),
            unserved_wait: Durations::default(),
            escalated: 0,
            review_timeouts: 0,
            segments: vec![Durations::default(); SEGMENTS.len()],
            segments_by_priority: BTreeMap::new(),
            closed: 0,
            by_outcome,
            served_closed: 0,
            referrals: 0,
            referral_calls: 0,
            by_hour: [0; 24],
            by_weekday: [0; 7],
            unserved_heat: [[0; 24]; 7],
        }
    }

    /// Counts one incident received in the period.
    pub fn add(&mut self, incident: &Incident) {
        let none = IncidentTimeline::default();
        let timeline = incident.timeline.as_ref().unwrap_or(&none);
        let received_micros = crate::store::micros_of(incident.received_at.as_ref());
        let received = DateTime::<Utc>::from_timestamp_micros(received_micros).unwrap_or_default();
        let local = received.with_timezone(&self.request.time_zone);
        let hour = local.hour() as usize;
        let weekday = local.weekday().num_days_from_monday() as usize;
        let disposition = incident.triage.as_ref().map_or(0, |t| t.disposition);
        let eligible = disposition == Disposition::CommunityResponse as i32
            || disposition == Disposition::CoResponse as i32;
        let served = eligible && timeline.assigned.is_some();

        self.received += 1;
        self.by_hour[hour] += 1;
        self.by_weekday[weekday] += 1;
        count_key(&mut self.by_disposition, disposition_name(disposition));
        let kind = if incident.apco_incident_type.is_empty() {
            "UNKNOWN"
        } else {
            incident.apco_incident_type.as_str()
        };
        count_key(&mut self.by_type, kind);
        if let Some(index) = self.buckets.iter().rposition(|start| *start <= received) {
            let bucket = &mut self.trend[index];
            bucket.received += 1;
            bucket.eligible += u64::from(eligible);
            bucket.served += u64::from(served);
        }
        if timeline.safety_alerts > 0 {
            self.safety_alert_calls += 1;
            self.safety_alerts += u64::try_from(timeline.safety_alerts).unwrap_or(0);
            self.served_with_safety_alert += u64::from(served);
        }
        if timeline.first_unserved_reason == UnservedReason::ReviewTimeout as i32 {
            self.review_timeouts += 1;
        }
        let wait = timeline.unserved_wait.as_ref().map(|d| {
            #[allow(clippy::cast_precision_loss)]
            let seconds = d.seconds as f64 + f64::from(d.nanos) / 1e9;
            seconds
        });
        if eligible {
            self.eligible += 1;
            if disposition == Disposition::CoResponse as i32 {
                self.co_response += 1;
            }
            if served {
                self.served += 1;
                if let Some(wait) = wait {
                    self.served_after_waiting += 1;
                    self.served_wait.seconds.push(wait);
                }
            } else {
                let key = unserved_key(timeline);
                *self.unserved_by_reason.entry(key.clone()).or_default() += 1;
                if timeline.escalated.is_some() {
                    self.escalated += 1;
                }
                if let Some(wait) = wait {
                    self.unserved_wait.seconds.push(wait);
                    self.unserved_wait_by_reason
                        .entry(key)
                        .or_default()
                        .seconds
                        .push(wait);
                }
                self.unserved_heat[weekday][hour] += 1;
            }
        }
        let by_priority = self
            .segments_by_priority
            .entry(incident.priority)
            .or_insert_with(|| vec![Durations::default(); SEGMENTS.len()]);
        for (index, (_, from, to)) in SEGMENTS.iter().enumerate() {
            if let (Some(start), Some(end)) = (step_of(incident, *from), step_of(incident, *to)) {
                self.segments[index].add(start, end);
                by_priority[index].add(start, end);
            }
        }
        if timeline.closed.is_some() {
            if let Ok(outcome) = CloseOutcome::try_from(incident.close_outcome)
                && outcome != CloseOutcome::Unspecified
            {
                self.closed += 1;
                *self
                    .by_outcome
                    .entry(close_outcome_name(outcome))
                    .or_default() += 1;
            }
            if served {
                self.served_closed += 1;
                self.referrals += incident.referral_ids.len() as u64;
                self.referral_calls += u64::from(!incident.referral_ids.is_empty());
            }
        }
    }

    /// The report, with `now` as its creation time.
    #[must_use]
    pub fn finish(mut self, now: DateTime<Utc>) -> Report {
        for durations in self
            .segments
            .iter_mut()
            .chain(self.segments_by_priority.values_mut().flatten())
            .chain(self.unserved_wait_by_reason.values_mut())
            .chain([&mut self.unserved_wait, &mut self.served_wait])
        {
            durations.seconds.sort_by(f64::total_cmp);
        }
        let figures = self.figures();
        Report {
            request: self.request,
            bucket: if self.bucket_days == 1 { "day" } else { "week" },
            buckets: self.buckets.into_iter().zip(self.trend).collect(),
            segments: SEGMENTS
                .iter()
                .map(|(name, _, _)| *name)
                .zip(self.segments)
                .collect(),
            unserved_by_reason: self.unserved_by_reason,
            unserved_heat: self.unserved_heat,
            figures,
            create_time: now,
        }
    }

    #[allow(clippy::too_many_lines)] // one list of every figure, in the document's order
    pub(super) fn figures(&self) -> Vec<ReportFigure> {
        let mut out = Vec::new();
        self.volume(&mut out);
        self.reach(&mut out);
        self.speed(&mut out);
        self.outcomes(&mut out);
        self.connections(&mut out);
        self.when(&mut out);
        self.trend(&mut out);
        out
    }

    /// Volume: calls received, triaged, eligible, by type.
    fn volume(&self, out: &mut Vec<ReportFigure>) {
        count(out, "calls_received", "", "", self.received);
        for (key, n) in &self.by_disposition {
            count(out, "calls_triaged", "disposition", key, *n);
        }
        count(out, "eligible_calls", "", "", self.eligible);
        for (key, n) in &self.by_type {
            count(out, "calls_received", "incident_type", key, *n);
        }
    }

    /// Reach: eligible calls served or not, why, and how long they waited.
    fn reach(&self, out: &mut Vec<ReportFigure>) {
        count(out, "eligible_calls_served", "", "", self.served);
        out.push(share(
            "eligible_calls_served_share",
            "",
            "",
            self.served,
            self.eligible,
        ));
        count(
            out,
            "eligible_calls_unserved",
            "",
            "",
            self.eligible - self.served,
        );
        for (key, n) in &self.unserved_by_reason {
            count(out, "eligible_calls_unserved", "unserved_reason", key, *n);
        }
        count(out, "eligible_calls_escalated", "", "", self.escalated);
        count(out, "review_timeouts", "", "", self.review_timeouts);
        push_percentiles(out, "unserved_wait", "", "", &self.unserved_wait, "record");
        for (key, durations) in &self.unserved_wait_by_reason {
            push_percentiles(
                out,
                "unserved_wait",
                "unserved_reason",
                key,
                durations,
                "record",
            );
        }
        count(
            out,
            "eligible_calls_served_after_waiting",
            "",
            "",
            self.served_after_waiting,
        );
        push_percentiles(
            out,
            "served_after_waiting_wait",
            "",
            "",
            &self.served_wait,
            "record",
        );
    }

    /// Speed: each step's percentiles, overall and by priority.
    fn speed(&self, out: &mut Vec<ReportFigure>) {
        for ((name, _, _), durations) in SEGMENTS.iter().zip(&self.segments) {
            push_percentiles(out, name, "", "", durations, durations.basis());
        }
        for (priority, segments) in &self.segments_by_priority {
            for ((name, _, _), durations) in SEGMENTS.iter().zip(segments) {
                push_percentiles(
                    out,
                    name,
                    "priority",
                    &priority.to_string(),
                    durations,
                    durations.basis(),
                );
            }
        }
    }

    /// Outcomes: how calls closed, co-responses and safety alerts.
    fn outcomes(&self, out: &mut Vec<ReportFigure>) {
        count(out, "calls_closed", "", "", self.closed);
        for (key, n) in &self.by_outcome {
            count(out, "calls_closed", "close_outcome", key, *n);
        }
        out.push(share(
            "co_response_share",
            "",
            "",
            self.co_response,
            self.eligible,
        ));
        count(
            out,
            "calls_with_safety_alert",
            "",
            "",
            self.safety_alert_calls,
        );
        out.push(figure(
            "safety_alerts_raised",
            "",
            "",
            as_f64(self.safety_alerts),
            "alerts",
            self.safety_alert_calls,
            "",
        ));
        out.push(share(
            "served_calls_with_safety_alert_share",
            "",
            "",
            self.served_with_safety_alert,
            self.served,
        ));
    }

    /// Connections: referrals per served call.
    fn connections(&self, out: &mut Vec<ReportFigure>) {
        out.push(figure(
            "referrals_per_served_call",
            "",
            "",
            ratio(self.referrals, self.served_closed),
            "referrals_per_call",
            self.served_closed,
            "",
        ));
        out.push(share(
            "served_calls_with_referral_share",
            "",
            "",
            self.referral_calls,
            self.served_closed,
        ));
    }

    /// When: calls by hour and weekday, unserved calls by weekday and hour.
    fn when(&self, out: &mut Vec<ReportFigure>) {
        for (hour, n) in self.by_hour.iter().enumerate() {
            count(
                out,
                "calls_received",
                "hour_of_day",
                &format!("{hour:02}"),
                *n,
            );
        }
        for (day, n) in self.by_weekday.iter().enumerate() {
            count(out, "calls_received", "day_of_week", WEEKDAYS[day], *n);
        }
        for (day, hours) in self.unserved_heat.iter().enumerate() {
            for (hour, n) in hours.iter().enumerate() {
                count(
                    out,
                    "eligible_calls_unserved",
                    "weekday_hour",
                    &format!("{} {hour:02}", WEEKDAYS[day]),
                    *n,
                );
            }
        }
    }

    /// Trend: the headline counts per bucket of the period.
    fn trend(&self, out: &mut Vec<ReportFigure>) {
        for (start, bucket) in self.buckets.iter().zip(&self.trend) {
            for (metric, n) in [
                ("calls_received", bucket.received),
                ("eligible_calls", bucket.eligible),
                ("eligible_calls_served", bucket.served),
            ] {
                let mut f = figure(metric, "", "", as_f64(n), "calls", n, "");
                f.bucket_start_time = Some(timestamp_of(start.timestamp_micros()));
                out.push(f);
            }
            let mut f = share(
                "eligible_calls_served_share",
                "",
                "",
                bucket.served,
                bucket.eligible,
            );
            f.bucket_start_time = Some(timestamp_of(start.timestamp_micros()));
            out.push(f);
        }
    }
}

/// A count of calls.
fn count(out: &mut Vec<ReportFigure>, metric: &str, breakdown: &str, key: &str, n: u64) {
    out.push(figure(metric, breakdown, key, as_f64(n), "calls", n, ""));
}

pub(super) fn close_outcome_name(outcome: CloseOutcome) -> String {
    outcome
        .as_str_name()
        .trim_start_matches("CLOSE_OUTCOME_")
        .to_owned()
}

#[allow(clippy::cast_precision_loss)]
pub(super) fn as_f64(n: u64) -> f64 {
    n as f64
}

pub(super) fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        as_f64(numerator) / as_f64(denominator)
    }
}

pub(super) fn figure(
    metric: &str,
    breakdown: &str,
    key: &str,
    value: f64,
    unit: &str,
    sample_size: u64,
    time_basis: &str,
) -> ReportFigure {
    ReportFigure {
        metric: metric.to_owned(),
        breakdown: breakdown.to_owned(),
        key: key.to_owned(),
        bucket_start_time: None,
        value,
        unit: unit.to_owned(),
        sample_size: i64::try_from(sample_size).unwrap_or(i64::MAX),
        time_basis: time_basis.to_owned(),
    }
}

pub(super) fn share(
    metric: &str,
    breakdown: &str,
    key: &str,
    numerator: u64,
    denominator: u64,
) -> ReportFigure {
    figure(
        metric,
        breakdown,
        key,
        ratio(numerator, denominator),
        "share",
        denominator,
        "",
    )
}

pub(super) fn push_percentiles(
    out: &mut Vec<ReportFigure>,
    name: &str,
    breakdown: &str,
    key: &str,
    durations: &Durations,
    basis: &str,
) {
    let n = durations.seconds.len() as u64;
    for (suffix, p) in [("p50", 0.5), ("p90", 0.9)] {
        let value = percentile(&durations.seconds, p).unwrap_or(0.0);
        let basis = if n == 0 { "" } else { basis };
        out.push(figure(
            &format!("{name}_{suffix}"),
            breakdown,
            key,
            value,
            "seconds",
            n,
            basis,
        ));
    }
}
