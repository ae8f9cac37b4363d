//! The schedule parser and open-at evaluator (`relay_directory::schedule`): any schedule a
//! service can be given is parsed without panicking; for one that parses, `is_open` and
//! `next_open` answer for every instant a request may carry (0001-01-01..9999-12-31, the
//! range the handlers accept) in any time zone, and `next_open` is within the look-ahead and,
//! in UTC (no daylight-saving gaps), an instant at which the place is open.

use arbitrary::{Arbitrary, Unstructured};
use chrono::{DateTime, Duration, TimeZone, Utc};
use relay_directory::schedule::{self, Hours, LOOK_AHEAD_DAYS};
use relay_proto::directory::Schedule;
use relay_runtime::validate::{MAX_TIMESTAMP_SECONDS, MIN_TIMESTAMP_SECONDS};

#[derive(Debug, Arbitrary)]
struct Rule {
    freq: i32,
    interval: i32,
    byday: String,
    bymonthday: String,
    opens_at: String,
    closes_at: String,
    valid_from: String,
    valid_to: String,
    dtstart: String,
}

#[derive(Debug, Arbitrary)]
struct Input {
    rules: Vec<Rule>,
    time_zone: String,
    zone_index: u16,
    seconds: i64,
    time_text: String,
}

/// Runs the target on one input, as libFuzzer would (see the module documentation).
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    // The free-text times an import normalizes: what comes out parses as HH:MM.
    if let Some(time) = schedule::normalize_time(&input.time_text) {
        assert!(schedule::parse_hhmm(&time, true).is_some(), "{time}");
    }
    let mut hours = Vec::new();
    for rule in input.rules.iter().take(8) {
        let parsed = Hours::parse(&Schedule {
            freq: rule.freq,
            interval: rule.interval,
            byday: rule.byday.clone(),
            bymonthday: rule.bymonthday.clone(),
            opens_at: rule.opens_at.clone(),
            closes_at: rule.closes_at.clone(),
            valid_from: rule.valid_from.clone(),
            valid_to: rule.valid_to.clone(),
            dtstart: rule.dtstart.clone(),
            description: String::new(),
        });
        match parsed {
            Ok(h) => hours.push(h),
            Err(problems) => assert!(!problems.is_empty()),
        }
    }
    let tz = schedule::parse_time_zone(&input.time_zone).unwrap_or_else(|| {
        chrono_tz::TZ_VARIANTS[usize::from(input.zone_index) % chrono_tz::TZ_VARIANTS.len()]
    });
    let span = MAX_TIMESTAMP_SECONDS - MIN_TIMESTAMP_SECONDS + 1;
    let seconds = MIN_TIMESTAMP_SECONDS + input.seconds.rem_euclid(span);
    let instant: DateTime<Utc> = Utc.timestamp_opt(seconds, 0).single().expect("in range");
    let _ = schedule::is_open(tz, &hours, instant);
    if let Some(next) = schedule::next_open(tz, &hours, instant) {
        assert!(next > instant, "next_open {next} is not after {instant}");
        assert!(next <= instant + Duration::days(LOOK_AHEAD_DAYS));
    }
    if let Some(next) = schedule::next_open(chrono_tz::UTC, &hours, instant) {
        assert!(
            schedule::is_open(chrono_tz::UTC, &hours, next),
            "closed at its own next_open {next}"
        );
    }
}
