//! Reading the values of HSDS columns as packages write them: ids, URLs, emails, statuses,
//! languages, weekdays, dates, time zones and times.

use relay_proto::directory::ServiceStatus;

use super::records::Record;
use crate::schedule::{normalize_time, parse_time_zone};

/// Why a row is rejected: the column at fault and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Problem {
    pub(super) column: String,
    pub(super) reason: String,
}

pub(super) fn problem(column: &str, reason: impl Into<String>) -> Problem {
    Problem {
        column: column.to_owned(),
        reason: reason.into(),
    }
}

pub(super) fn is_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

pub(super) fn require_id(record: &Record<'_>, column: &str) -> Result<String, Problem> {
    let value = record.get(column);
    if value.is_empty() {
        Err(problem(column, format!("{column} is missing")))
    } else if is_id(value) {
        Ok(value.to_owned())
    } else {
        Err(problem(
            column,
            format!("{column} `{value}` is not an id (1..64 of A-Z a-z 0-9 . _ : -)"),
        ))
    }
}

/// A row's `id`, or, when it has none, one derived from `parts` (what the row says), the same
/// on every import. Only for rows that nothing else in a package refers to by id (schedules,
/// phones), or that are referred to only by what derives the id (a service at a location).
pub(super) fn id_or_derived(record: &Record<'_>, parts: &[&str]) -> Result<String, Problem> {
    if record.get("id").is_empty() {
        Ok(format!("derived-{:016x}", stable_hash(parts)))
    } else {
        require_id(record, "id")
    }
}

pub(super) fn require(record: &Record<'_>, column: &str) -> Result<String, Problem> {
    let value = record.get(column);
    if value.is_empty() {
        Err(problem(column, format!("{column} is missing")))
    } else {
        Ok(value.to_owned())
    }
}

pub(super) fn keep_url(value: &str) -> String {
    if (value.starts_with("http://") || value.starts_with("https://"))
        && !value.contains(char::is_whitespace)
    {
        value.to_owned()
    } else {
        String::new()
    }
}

pub(super) fn keep_email(value: &str) -> String {
    if value
        .split_once('@')
        .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
        && !value.contains(char::is_whitespace)
    {
        value.to_owned()
    } else {
        String::new()
    }
}

pub(super) fn status_of(text: &str) -> Option<ServiceStatus> {
    Some(
        match text.to_ascii_lowercase().replace(['_', '-'], " ").as_str() {
            "" | "active" => ServiceStatus::Active,
            "inactive" => ServiceStatus::Inactive,
            "defunct" => ServiceStatus::Defunct,
            "temporarily closed" => ServiceStatus::TemporarilyClosed,
            _ => return None,
        },
    )
}

/// ISO 639-1 codes of the language names 211 packages use most.
pub(super) fn language_code(text: &str) -> Option<String> {
    let lower = text.trim().to_ascii_lowercase();
    let named = match lower.as_str() {
        "english" | "eng" => "en",
        "spanish" | "español" | "espanol" | "spa" => "es",
        "french" | "fra" | "fre" => "fr",
        "chinese" | "mandarin" | "zho" | "chi" => "zh",
        "cantonese" => "yue",
        "vietnamese" | "vie" => "vi",
        "korean" | "kor" => "ko",
        "russian" | "rus" => "ru",
        "arabic" | "ara" => "ar",
        "tagalog" | "filipino" | "tgl" => "tl",
        "portuguese" | "por" => "pt",
        "german" | "deu" | "ger" => "de",
        "somali" | "som" => "so",
        "haitian creole" | "hat" => "ht",
        "urdu" | "urd" => "ur",
        "polish" | "pol" => "pl",
        "american sign language" | "asl" => "ase",
        _ => "",
    };
    if !named.is_empty() {
        return Some(named.to_owned());
    }
    let mut parts = lower.split('-');
    let primary = parts.next().unwrap_or_default();
    ((2..=3).contains(&primary.len())
        && primary.bytes().all(|b| b.is_ascii_alphabetic())
        && parts
            .all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric())))
    .then_some(lower)
}

pub(super) fn weekday_code(text: &str) -> Option<&'static str> {
    let lower = text.trim().to_ascii_lowercase();
    Some(match lower.as_str() {
        "1" | "mo" | "mon" | "monday" => "MO",
        "2" | "tu" | "tue" | "tues" | "tuesday" => "TU",
        "3" | "we" | "wed" | "wednesday" => "WE",
        "4" | "th" | "thu" | "thur" | "thurs" | "thursday" => "TH",
        "5" | "fr" | "fri" | "friday" => "FR",
        "6" | "sa" | "sat" | "saturday" => "SA",
        "7" | "0" | "su" | "sun" | "sunday" => "SU",
        _ => return None,
    })
}

pub(super) fn date_of(record: &Record<'_>, column: &str) -> Result<String, Problem> {
    let text = record.get(column);
    if text.is_empty() {
        return Ok(String::new());
    }
    let day = text.get(..10).unwrap_or(text);
    chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d")
        .map(|d| d.format("%Y-%m-%d").to_string())
        .map_err(|_| {
            problem(
                column,
                format!("{column} `{text}` is not a date (YYYY-MM-DD)"),
            )
        })
}

/// A schedule's `timezone` as an IANA name: a name is kept; a UTC offset in hours (HSDS 3.0
/// says "expressed as a UTC offset") becomes the matching `Etc/GMT` zone.
pub(super) fn zone_of(text: &str) -> Option<String> {
    if text.is_empty() {
        return None;
    }
    if parse_time_zone(text).is_some() {
        return Some(text.to_owned());
    }
    let offset: f64 = text.parse().ok()?;
    if offset.fract() != 0.0 || !(-12.0..=14.0).contains(&offset) {
        return None;
    }
    #[allow(clippy::cast_possible_truncation)]
    let hours = offset as i32;
    // POSIX-style Etc zones have the sign inverted: UTC+3 is Etc/GMT-3.
    Some(match hours {
        0 => "Etc/UTC".to_owned(),
        h if h > 0 => format!("Etc/GMT-{h}"),
        h => format!("Etc/GMT+{}", -h),
    })
}

/// A schedule time as packages write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Time {
    /// Canonical "HH:MM" (`24:00` is the end of the day).
    At(String),
    /// The row says the service is closed.
    Closed,
}

/// Reads a schedule time: what [`normalize_time`] reads (`9:00am`, `17:30`, `09:00:00`,
/// `noon`), plus `0900` (four digits, as some exports write it), a trailing `Z` or UTC offset
/// (`09:00-05:00`, as the HSDS 1.x field description suggests; the time is read as the
/// location's wall clock, whose zone already says the offset), and `closed`.
pub(super) fn time_of(text: &str) -> Option<Time> {
    let lower = text.trim().to_ascii_lowercase();
    if lower == "closed" {
        return Some(Time::Closed);
    }
    let mut body = lower.as_str();
    if let Some(rest) = body.strip_suffix('z')
        && rest.ends_with(|c: char| c.is_ascii_digit())
    {
        body = rest;
    }
    if let Some(at) = body.rfind(['+', '-'])
        && at > 0
    {
        let offset = body[at + 1..].replace(':', "");
        if matches!(offset.len(), 2 | 4) && offset.bytes().all(|b| b.is_ascii_digit()) {
            body = &body[..at];
        }
    }
    if let Some(time) = normalize_time(body) {
        return Some(Time::At(time));
    }
    // Military time without a colon: 900, 0900, 1730, 2400.
    if matches!(body.len(), 3 | 4) && body.bytes().all(|b| b.is_ascii_digit()) {
        let (hours, minutes) = body.split_at(body.len() - 2);
        return normalize_time(&format!("{hours}:{minutes}")).map(Time::At);
    }
    None
}

/// A 64-bit FNV-1a hash of `parts` (each followed by a separator): stable across Rust
/// versions and platforms, unlike `std`'s hasher, so a derived id is the same on every
/// import.
pub(super) fn stable_hash(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain(std::iter::once(0x1f)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_weekdays_and_languages() {
        assert_eq!(zone_of("3").as_deref(), Some("Etc/GMT-3"));
        assert_eq!(zone_of("-8").as_deref(), Some("Etc/GMT+8"));
        assert_eq!(
            zone_of("America/Chicago").as_deref(),
            Some("America/Chicago")
        );
        assert_eq!(zone_of("Mars/Olympus"), None);
        assert_eq!(weekday_code("Monday"), Some("MO"));
        assert_eq!(weekday_code("7"), Some("SU"));
        assert_eq!(weekday_code("Funday"), None);
        assert_eq!(language_code("Spanish").as_deref(), Some("es"));
        assert_eq!(language_code("ur").as_deref(), Some("ur"));
        assert_eq!(language_code("Klingon spoken here"), None);
    }

    #[test]
    fn times_as_packages_write_them() {
        let at = |s: &str| Some(Time::At(s.to_owned()));
        for (text, want) in [
            ("9:00am", at("09:00")),
            ("9:00 AM", at("09:00")),
            ("0900", at("09:00")),
            ("900", at("09:00")),
            ("1730", at("17:30")),
            ("09:00:00", at("09:00")),
            ("24:00", at("24:00")),
            ("2400", at("24:00")),
            ("09:00Z", at("09:00")),
            ("09:00-05:00", at("09:00")),
            ("17:30+0100", at("17:30")),
            ("Closed", Some(Time::Closed)),
            ("2460", None),
            ("9:60", None),
            ("nine", None),
            ("-05:00", None),
        ] {
            assert_eq!(time_of(text), want, "{text}");
        }
    }

    #[test]
    fn derived_ids_are_stable() {
        // FNV-1a's published test vector, then separation of the parts.
        assert_eq!(stable_hash(&[]), 0xcbf2_9ce4_8422_2325);
        assert_ne!(stable_hash(&["ab", "c"]), stable_hash(&["a", "bc"]));
    }
}
