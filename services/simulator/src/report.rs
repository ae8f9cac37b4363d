//! What a simulation observed, and the report printed at its end.

use std::{collections::BTreeMap, fmt::Write as _};

/// Counts and samples gathered while a simulation runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observations {
    /// Calls submitted to intake.
    pub submitted: u64,
    /// Submissions intake answered as already known (duplicates).
    pub duplicates: u64,
    /// Calls by triage disposition (`COMMUNITY_RESPONSE`, `CO_RESPONSE`, ...).
    pub dispositions: BTreeMap<String, u64>,
    /// Calls a community team was assigned to.
    pub assigned: u64,
    /// Calls that waited in the queue (whether or not later assigned).
    pub queued: u64,
    /// Calls escalated to a traditional response after waiting too long.
    pub escalated: u64,
    /// Calls closed by the simulated team.
    pub closed: u64,
    /// Referrals made at the close of a call.
    pub referrals: u64,
    /// Teams whose shift ended on a call: they finished it, then went off duty.
    pub off_duty_after_call: u64,
    /// Escalated calls by unserved reason.
    pub unserved: BTreeMap<String, u64>,
    /// Queued calls by the reason no team could take them.
    pub queued_reasons: BTreeMap<String, u64>,
    /// Seconds from a call's arrival to its assignment (simulated time).
    pub time_to_assign: Vec<f64>,
    /// Seconds from a call's arrival to the team arriving on scene (simulated time).
    pub response_time: Vec<f64>,
    /// Per team: calls taken and seconds busy.
    pub teams: BTreeMap<String, TeamUse>,
    /// Simulated seconds covered.
    pub duration_seconds: f64,
}

/// One team's share of the work.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TeamUse {
    /// Calls the team was assigned.
    pub calls: u64,
    /// Seconds spent between dispatch and clearing.
    pub busy_seconds: f64,
}

/// The `q`-quantile (0..=1) of `samples` by the nearest-rank method, `None` when empty.
#[must_use]
pub fn percentile(samples: &[f64], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn minutes(seconds: Option<f64>) -> String {
    seconds.map_or_else(|| String::from("-"), |s| format!("{:.1} min", s / 60.0))
}

impl Observations {
    /// The end-of-run report: counts, percentiles, and the per-team table.
    #[must_use]
    pub fn report(&self) -> String {
        let mut out = String::new();
        let community = self
            .dispositions
            .get("COMMUNITY_RESPONSE")
            .copied()
            .unwrap_or(0)
            + self.dispositions.get("CO_RESPONSE").copied().unwrap_or(0);
        #[allow(clippy::cast_precision_loss)]
        let share = if self.submitted == 0 {
            0.0
        } else {
            100.0 * community as f64 / self.submitted as f64
        };
        let _ = writeln!(out, "calls submitted      {}", self.submitted);
        for (disposition, count) in &self.dispositions {
            let _ = writeln!(out, "  {:<20} {count}", disposition.to_lowercase());
        }
        let _ = writeln!(out, "diverted to teams    {community} ({share:.0}%)");
        let _ = writeln!(out, "assigned             {}", self.assigned);
        let _ = writeln!(out, "queued               {}", self.queued);
        for (reason, count) in &self.queued_reasons {
            let _ = writeln!(out, "  {:<20} {count}", reason.to_lowercase());
        }
        let _ = writeln!(out, "escalated            {}", self.escalated);
        for (reason, count) in &self.unserved {
            let _ = writeln!(out, "  {:<20} {count}", reason.to_lowercase());
        }
        let _ = writeln!(out, "closed               {}", self.closed);
        let _ = writeln!(out, "referrals            {}", self.referrals);
        let _ = writeln!(out, "off duty after call  {}", self.off_duty_after_call);
        let _ = writeln!(out);
        let _ = writeln!(out, "                     p50        p90        p99");
        for (name, samples) in [
            ("time to assign", &self.time_to_assign),
            ("response time", &self.response_time),
        ] {
            let _ = writeln!(
                out,
                "{name:<21}{:<11}{:<11}{}",
                minutes(percentile(samples, 0.5)),
                minutes(percentile(samples, 0.9)),
                minutes(percentile(samples, 0.99)),
            );
        }
        let _ = writeln!(out);
        let width = self.teams.keys().map(String::len).max().unwrap_or(4).max(4) + 2;
        let _ = writeln!(out, "{:<width$}calls   busy      utilisation", "team");
        for (team, usage) in &self.teams {
            let utilisation = if self.duration_seconds > 0.0 {
                100.0 * usage.busy_seconds / self.duration_seconds
            } else {
                0.0
            };
            let _ = writeln!(
                out,
                "{team:<width$}{:<8}{:<10}{utilisation:.0}%",
                usage.calls,
                format!("{:.0} min", usage.busy_seconds / 60.0),
            );
        }
        out
    }

    /// The counts alone, one `name=value` per line: what must be identical between two runs
    /// with the same seed.
    #[must_use]
    pub fn counts(&self) -> String {
        let mut out = format!(
            "submitted={} duplicates={} assigned={} queued={} escalated={} closed={} referrals={} off_duty_after_call={}",
            self.submitted,
            self.duplicates,
            self.assigned,
            self.queued,
            self.escalated,
            self.closed,
            self.referrals,
            self.off_duty_after_call
        );
        for (disposition, count) in &self.dispositions {
            let _ = write!(out, " {}={count}", disposition.to_lowercase());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&samples, 0.5), Some(50.0));
        assert_eq!(percentile(&samples, 0.9), Some(90.0));
        assert_eq!(percentile(&samples, 0.99), Some(99.0));
        assert_eq!(percentile(&samples, 1.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 0.99), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 0.5), Some(2.0));
    }

    #[test]
    fn the_report_shows_counts_percentiles_and_teams() {
        let mut observations = Observations {
            submitted: 10,
            assigned: 6,
            queued: 2,
            closed: 5,
            referrals: 3,
            duration_seconds: 3_600.0,
            time_to_assign: vec![30.0, 60.0, 90.0],
            ..Observations::default()
        };
        observations
            .dispositions
            .insert("COMMUNITY_RESPONSE".into(), 7);
        observations
            .dispositions
            .insert("TRADITIONAL_RESPONSE".into(), 3);
        observations.teams.insert(
            "team-01".into(),
            TeamUse {
                calls: 3,
                busy_seconds: 1_800.0,
            },
        );
        let report = observations.report();
        assert!(report.contains("diverted to teams    7 (70%)"), "{report}");
        assert!(
            report.contains("time to assign       1.0 min    1.5 min    1.5 min"),
            "{report}"
        );
        assert!(
            report.contains("team-01  3       30 min    50%"),
            "{report}"
        );
        assert_eq!(
            observations.counts(),
            "submitted=10 duplicates=0 assigned=6 queued=2 escalated=0 closed=5 referrals=3 off_duty_after_call=0 community_response=7 traditional_response=3"
        );
    }
}
