//! A region's program rules: the hours its community response operates (in the region's time
//! zone, with overnight spans and closed dates), how long a call may wait for a dispatcher's
//! review, and how long a recommendation may wait for a dispatcher's confirmation.
//!
//! Hours are written as `"<days> <HH:MM>-<HH:MM>"`: days are a name (`mon`), a range
//! (`mon-fri`, `fri-mon` wraps), a list (`mon,wed,fri`) or `daily`; a span whose end is not
//! after its start runs overnight into the next day (`fri 22:00-02:00` is Friday 22:00 to
//! Saturday 02:00), and `00:00-24:00` is the whole day. A closed date closes the spans that
//! start on it (a holiday), by the region's local calendar.

use std::collections::HashMap;

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use chrono_tz::Tz;
use serde::Deserialize;

/// The `[intake.programs.<region>]` section.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProgramSettings {
    /// IANA time zone of the hours and closed dates, e.g. `America/Los_Angeles`.
    pub time_zone: Option<String>,
    /// When the program operates; empty means always.
    pub hours: Vec<String>,
    /// Local dates (`YYYY-MM-DD`) on which no span starts (holidays).
    pub closed_dates: Vec<String>,
    /// How long a NEEDS_REVIEW call may wait for a dispatcher before it is escalated, seconds
    /// (overrides `[intake] review_wait_seconds`).
    pub review_wait_seconds: Option<u64>,
    /// How long a recommendation may wait for ConfirmAssignment before it expires, seconds
    /// (overrides `[intake] recommendation_expiry_seconds`).
    pub recommendation_expiry_seconds: Option<u64>,
}

/// One span of operating hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    /// Days (Monday = 0) on which the span starts.
    days: [bool; 7],
    /// Start, minutes after local midnight.
    start: u32,
    /// End, minutes after local midnight of the start day; more than 1440 runs overnight.
    end: u32,
}

/// A region's operating hours, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgramHours {
    zone: Tz,
    spans: Vec<Span>,
    closed: Vec<NaiveDate>,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn day(text: &str) -> Result<usize, String> {
    let lower = text.trim().to_ascii_lowercase();
    DAYS.iter()
        .position(|d| lower.starts_with(d) && lower.len() >= 3)
        .ok_or_else(|| format!("`{text}` is not a day (mon, tue, ... sun)"))
}

fn days(text: &str) -> Result<[bool; 7], String> {
    let mut set = [false; 7];
    if text.eq_ignore_ascii_case("daily") {
        return Ok([true; 7]);
    }
    for part in text.split(',') {
        match part.split_once('-') {
            Some((from, to)) => {
                let (from, to) = (day(from)?, day(to)?);
                let mut d = from;
                loop {
                    set[d] = true;
                    if d == to {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => set[day(part)?] = true,
        }
    }
    Ok(set)
}

fn minutes(text: &str) -> Result<u32, String> {
    let (h, m) = text
        .split_once(':')
        .ok_or_else(|| format!("`{text}` is not a time (HH:MM)"))?;
    let (h, m): (u32, u32) = (
        h.parse()
            .map_err(|_| format!("`{text}` is not a time (HH:MM)"))?,
        m.parse()
            .map_err(|_| format!("`{text}` is not a time (HH:MM)"))?,
    );
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return Err(format!("`{text}` is not a time between 00:00 and 24:00"));
    }
    Ok(h * 60 + m)
}

fn span(text: &str) -> Result<Span, String> {
    let (days_text, times) = text
        .trim()
        .split_once(' ')
        .ok_or_else(|| format!("`{text}` is not `<days> <HH:MM>-<HH:MM>`"))?;
    let (start, end) = times
        .trim()
        .split_once('-')
        .ok_or_else(|| format!("`{text}` is not `<days> <HH:MM>-<HH:MM>`"))?;
    let (start, end) = (minutes(start)?, minutes(end)?);
    if start == 1440 {
        return Err(format!(
            "`{text}` starts at 24:00; write 00:00 of the next day"
        ));
    }
    Ok(Span {
        days: days(days_text)?,
        start,
        end: if end > start { end } else { end + 1440 },
    })
}

impl ProgramHours {
    /// Parses a region's hours; None when it has none (always operating).
    ///
    /// # Errors
    /// A message naming what is wrong (the caller adds the region and key).
    pub fn parse(settings: &ProgramSettings) -> Result<Option<Self>, String> {
        if settings.hours.is_empty() {
            if settings.time_zone.is_some() || !settings.closed_dates.is_empty() {
                return Err("hours is empty: a time zone or closed dates need hours".into());
            }
            return Ok(None);
        }
        let zone: Tz = settings
            .time_zone
            .as_deref()
            .ok_or("time_zone is required with hours")?
            .parse()
            .map_err(|_| "time_zone is not an IANA time zone".to_owned())?;
        let spans = settings
            .hours
            .iter()
            .map(|h| span(h))
            .collect::<Result<Vec<_>, _>>()?;
        let closed = settings
            .closed_dates
            .iter()
            .map(|d| {
                NaiveDate::parse_from_str(d, "%Y-%m-%d")
                    .map_err(|_| format!("closed date `{d}` is not YYYY-MM-DD"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Self {
            zone,
            spans,
            closed,
        }))
    }

    /// Whether the program operates at `at`.
    #[must_use]
    pub fn is_open(&self, at: DateTime<Utc>) -> bool {
        let local = at.with_timezone(&self.zone);
        let minute = local.hour() * 60 + local.minute();
        let today = local.date_naive();
        // A span that started today, or one that started yesterday and runs overnight.
        [
            (today, minute),
            (today.pred_opt().unwrap_or(today), minute + 1440),
        ]
        .into_iter()
        .any(|(date, minute)| {
            let weekday = date.weekday().num_days_from_monday() as usize;
            !self.closed.contains(&date)
                && self
                    .spans
                    .iter()
                    .any(|s| s.days[weekday] && s.start <= minute && minute < s.end)
        })
    }
}

/// Every region's program rules, checked at start.
#[derive(Debug, Clone, Default)]
pub struct Programs {
    hours: HashMap<String, ProgramHours>,
    settings: HashMap<String, ProgramSettings>,
}

impl Programs {
    /// Parses every region's settings.
    ///
    /// # Errors
    /// `programs.<region>.<key>: reason` for the first bad value.
    pub fn new(settings: &HashMap<String, ProgramSettings>) -> Result<Self, String> {
        let mut hours = HashMap::new();
        for (region, program) in settings {
            if let Some(parsed) =
                ProgramHours::parse(program).map_err(|e| format!("programs.{region}: {e}"))?
            {
                hours.insert(region.clone(), parsed);
            }
        }
        Ok(Self {
            hours,
            settings: settings.clone(),
        })
    }

    /// Whether `region`'s program operates at `at` (a region without hours always does).
    #[must_use]
    pub fn is_open(&self, region: &str, at: DateTime<Utc>) -> bool {
        self.hours.get(region).is_none_or(|h| h.is_open(at))
    }

    /// The region's review wait, or `default`.
    #[must_use]
    pub fn review_wait_seconds(&self, region: &str, default: u64) -> u64 {
        self.settings
            .get(region)
            .and_then(|s| s.review_wait_seconds)
            .unwrap_or(default)
    }

    /// The region's recommendation expiry, or `default`.
    #[must_use]
    pub fn recommendation_expiry_seconds(&self, region: &str, default: u64) -> u64 {
        self.settings
            .get(region)
            .and_then(|s| s.recommendation_expiry_seconds)
            .unwrap_or(default)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    fn hours(spans: &[&str], closed: &[&str]) -> ProgramHours {
        ProgramHours::parse(&ProgramSettings {
            time_zone: Some("America/New_York".into()),
            hours: spans.iter().map(|s| (*s).to_owned()).collect(),
            closed_dates: closed.iter().map(|s| (*s).to_owned()).collect(),
            ..ProgramSettings::default()
        })
        .unwrap()
        .unwrap()
    }

    fn local(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        chrono_tz::America::New_York
            .with_ymd_and_hms(y, mo, d, h, mi, 0)
            .single()
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn weekday_hours_overnight_spans_and_holidays() {
        // 2026-12-04 is a Friday.
        let h = hours(
            &["mon-fri 07:00-19:00", "fri-sat 22:00-02:00"],
            &["2026-12-25"],
        );
        assert!(h.is_open(local(2026, 12, 4, 7, 0)));
        assert!(
            !h.is_open(local(2026, 12, 4, 19, 0)),
            "the end is exclusive"
        );
        assert!(h.is_open(local(2026, 12, 4, 23, 30)));
        assert!(
            h.is_open(local(2026, 12, 5, 1, 59)),
            "overnight into Saturday"
        );
        assert!(!h.is_open(local(2026, 12, 5, 2, 0)));
        assert!(!h.is_open(local(2026, 12, 6, 12, 0)), "Sunday");
        assert!(h.is_open(local(2026, 12, 5, 23, 0)), "Saturday's own span");
        assert!(
            h.is_open(local(2026, 12, 6, 1, 0)),
            "Saturday's span runs into Sunday"
        );
        assert!(
            !h.is_open(local(2026, 12, 7, 1, 0)),
            "no span starts on Sunday"
        );
        assert!(!h.is_open(local(2026, 12, 25, 9, 0)), "a closed date");
        assert!(h.is_open(local(2026, 12, 24, 9, 0)));
    }

    #[test]
    fn the_region_time_zone_and_daylight_saving_decide() {
        let h = hours(&["daily 00:00-24:00"], &[]);
        assert!(
            h.is_open(local(2026, 3, 8, 3, 30)),
            "the spring-forward day"
        );
        let h = hours(&["sun 01:00-02:00"], &[]);
        // 2026-11-01: 01:30 happens twice in New York; both are inside.
        let first = Utc.with_ymd_and_hms(2026, 11, 1, 5, 30, 0).unwrap();
        let second = Utc.with_ymd_and_hms(2026, 11, 1, 6, 30, 0).unwrap();
        assert!(h.is_open(first) && h.is_open(second));
    }

    #[test]
    fn bad_hours_are_refused_with_a_reason() {
        for (spans, zone, want) in [
            (vec!["mon 7:00"], Some("UTC"), "is not `<days>"),
            (vec!["funday 07:00-08:00"], Some("UTC"), "is not a day"),
            (
                vec!["mon 07:00-25:00"],
                Some("UTC"),
                "between 00:00 and 24:00",
            ),
            (vec!["mon 07:00-08:00"], Some("Mars/Olympus"), "IANA"),
            (vec!["mon 07:00-08:00"], None, "time_zone is required"),
        ] {
            let error = ProgramHours::parse(&ProgramSettings {
                time_zone: zone.map(str::to_owned),
                hours: spans.iter().map(|s| (*s).to_owned()).collect(),
                ..ProgramSettings::default()
            })
            .unwrap_err();
            assert!(error.contains(want), "{error}");
        }
    }

    proptest! {
        /// Checked against a brute-force week of open minutes built from the same spans.
        #[test]
        fn is_open_matches_a_minute_by_minute_model(
            spans in prop::collection::vec((0usize..7, 0u32..1440, 1u32..1440), 1..4),
            minute_of_week in 0u32..(7 * 1440),
        ) {
            let text: Vec<String> = spans
                .iter()
                .map(|(d, start, len)| {
                    let end = (start + len) % 1440;
                    format!("{} {:02}:{:02}-{:02}:{:02}", DAYS[*d], start / 60, start % 60, end / 60, end % 60)
                })
                .collect();
            let h = ProgramHours::parse(&ProgramSettings {
                time_zone: Some("UTC".into()),
                hours: text,
                ..ProgramSettings::default()
            })
            .unwrap()
            .unwrap();
            let mut open = vec![false; 7 * 1440];
            for (d, start, len) in &spans {
                let end = (start + len) % 1440;
                let len = if end > *start { end - start } else { end + 1440 - start };
                for m in 0..len {
                    open[((*d as u32 * 1440 + start + m) % (7 * 1440)) as usize] = true;
                }
            }
            // 2026-11-30 00:00 UTC is a Monday.
            let at = Utc.with_ymd_and_hms(2026, 11, 30, 0, 0, 0).unwrap()
                + chrono::Duration::minutes(i64::from(minute_of_week));
            prop_assert_eq!(h.is_open(at), open[minute_of_week as usize]);
        }
    }
}
