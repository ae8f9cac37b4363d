//! Checks shared by every service's request validation. A handler collects every problem of a
//! request into [`Violations`] and refuses it as a whole, before anything is written.

use chrono::{DateTime, TimeZone, Utc};
use relay_proto::common::GeoPoint;

use crate::error::{ApiError, FieldViolation};

/// Longest identifier Relay accepts (team ids, incident ids, CAD ids...).
pub const MAX_ID_LEN: usize = 64;
/// Longest capability tag.
pub const MAX_CAPABILITY_LEN: usize = 32;
/// Default page size of list RPCs.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest page size of list RPCs; larger requests are clamped to it.
pub const MAX_PAGE_SIZE: usize = 500;

/// The problems found in one request.
#[derive(Debug, Default)]
#[must_use]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// No problems yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a problem with `field`.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Whether nothing was found.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok` when nothing was found, else `INVALID_ARGUMENT` listing every violation.
    ///
    /// # Errors
    /// [`ApiError::InvalidArgument`] with every violation recorded.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid_fields(self.0))
        }
    }

    /// Checks a required identifier: 1 to 64 characters of `[A-Za-z0-9._:-]`.
    pub fn id(&mut self, field: &str, value: &str) {
        if value.is_empty() {
            self.add(field, "is required");
        } else if value.len() > MAX_ID_LEN {
            self.add(field, format!("must be at most {MAX_ID_LEN} characters"));
        } else if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            self.add(
                field,
                "may contain only letters, digits, '.', '_', ':' and '-'",
            );
        }
    }

    /// Checks an optional identifier: empty is accepted, anything else as [`Self::id`].
    pub fn optional_id(&mut self, field: &str, value: &str) {
        if !value.is_empty() {
            self.id(field, value);
        }
    }

    /// Checks capability tags: each matches `[a-z0-9:_-]{1,32}`.
    pub fn capabilities(&mut self, field: &str, tags: &[String]) {
        for (index, tag) in tags.iter().enumerate() {
            if !is_capability(tag) {
                self.add(
                    format!("{field}[{index}]"),
                    "capability tags match [a-z0-9:_-]{1,32}",
                );
            }
        }
    }

    /// Checks a required point and returns it when valid.
    pub fn geo_point(&mut self, field: &str, point: Option<&GeoPoint>) -> Option<GeoPoint> {
        let Some(point) = point else {
            self.add(field, "is required");
            return None;
        };
        let before = self.0.len();
        if !point.latitude.is_finite() || !(-90.0..=90.0).contains(&point.latitude) {
            self.add(
                format!("{field}.latitude"),
                "must be a number from -90 to 90",
            );
        }
        if !point.longitude.is_finite() || !(-180.0..=180.0).contains(&point.longitude) {
            self.add(
                format!("{field}.longitude"),
                "must be a number from -180 to 180",
            );
        }
        (self.0.len() == before).then_some(*point)
    }

    /// Checks an optional timestamp and converts it.
    pub fn timestamp(
        &mut self,
        field: &str,
        value: Option<&prost_types::Timestamp>,
    ) -> Option<DateTime<Utc>> {
        let value = value?;
        // google.protobuf.Timestamp's own range: 0001-01-01T00:00:00Z to
        // 9999-12-31T23:59:59.999999999Z. chrono accepts far more, which no JSON mapping can
        // render afterwards.
        let in_range = (MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&value.seconds);
        let converted = u32::try_from(value.nanos)
            .ok()
            .filter(|nanos| *nanos < 1_000_000_000 && in_range)
            .and_then(|nanos| Utc.timestamp_opt(value.seconds, nanos).single());
        if converted.is_none() {
            self.add(
                field,
                "is not a valid timestamp (0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z, nanos 0 to 999999999)",
            );
        }
        converted
    }

    /// Checks an enum value sent as `i32`: it must be known and not `_UNSPECIFIED` (0).
    pub fn enum_value<E: TryFrom<i32>>(&mut self, field: &str, value: i32) -> Option<E> {
        if value == 0 {
            self.add(field, "is required");
            return None;
        }
        let converted = E::try_from(value).ok();
        if converted.is_none() {
            self.add(field, format!("{value} is not a known value"));
        }
        converted
    }

    /// Checks a page size and returns the effective one (0 means the default; larger than the
    /// maximum is clamped).
    pub fn page_size(&mut self, field: &str, value: i32) -> usize {
        match usize::try_from(value) {
            Err(_) => {
                self.add(field, "must not be negative");
                DEFAULT_PAGE_SIZE
            }
            Ok(0) => DEFAULT_PAGE_SIZE,
            Ok(size) => size.min(MAX_PAGE_SIZE),
        }
    }
}

/// The first second google.protobuf.Timestamp can hold (0001-01-01T00:00:00Z).
pub const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
/// The last second google.protobuf.Timestamp can hold (9999-12-31T23:59:59Z).
pub const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// Whether `tag` is a valid capability tag (`[a-z0-9:_-]{1,32}`).
#[must_use]
pub fn is_capability(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= MAX_CAPABILITY_LEN
        && tag.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b':' | b'_' | b'-')
        })
}

/// Converts a time to a protobuf timestamp.
#[must_use]
pub fn to_timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(violations: Violations) -> Vec<String> {
        match violations.finish() {
            Ok(()) => Vec::new(),
            Err(ApiError::InvalidArgument { violations, .. }) => {
                violations.into_iter().map(|v| v.field).collect()
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn ids_are_checked() {
        let mut v = Violations::new();
        v.id("a", "team-7:north_1.x");
        assert!(fields(v).is_empty());
        let mut v = Violations::new();
        v.id("empty", "");
        v.id("long", &"x".repeat(65));
        v.id("spaces", "team 7");
        v.optional_id("optional", "");
        assert_eq!(fields(v), ["empty", "long", "spaces"]);
    }

    #[test]
    fn capabilities_are_checked() {
        assert!(is_capability("lang:es"));
        assert!(is_capability("clinician"));
        assert!(!is_capability("Clinician"));
        assert!(!is_capability(""));
        assert!(!is_capability(&"a".repeat(33)));
        let mut v = Violations::new();
        v.capabilities("caps", &["emt".into(), "bad tag".into()]);
        assert_eq!(fields(v), ["caps[1]"]);
    }

    #[test]
    fn points_must_be_finite_and_in_range() {
        let mut v = Violations::new();
        let ok = v.geo_point(
            "p",
            Some(&GeoPoint {
                latitude: 44.05,
                longitude: -123.09,
            }),
        );
        assert!(ok.is_some());
        let none = v.geo_point(
            "q",
            Some(&GeoPoint {
                latitude: f64::NAN,
                longitude: 181.0,
            }),
        );
        assert!(none.is_none());
        v.geo_point("r", None);
        assert_eq!(fields(v), ["q.latitude", "q.longitude", "r"]);
    }

    #[test]
    fn enums_refuse_unspecified_and_unknown() {
        #[derive(Debug)]
        struct Small;
        impl TryFrom<i32> for Small {
            type Error = ();
            fn try_from(value: i32) -> Result<Self, ()> {
                if value == 1 { Ok(Small) } else { Err(()) }
            }
        }
        let mut v = Violations::new();
        assert!(v.enum_value::<Small>("a", 1).is_some());
        assert!(v.enum_value::<Small>("b", 0).is_none());
        assert!(v.enum_value::<Small>("c", 99).is_none());
        assert_eq!(fields(v), ["b", "c"]);
    }

    #[test]
    fn page_sizes_default_and_clamp() {
        let mut v = Violations::new();
        assert_eq!(v.page_size("page_size", 0), DEFAULT_PAGE_SIZE);
        assert_eq!(v.page_size("page_size", 10_000), MAX_PAGE_SIZE);
        assert_eq!(v.page_size("page_size", 7), 7);
        assert!(v.is_empty());
        v.page_size("page_size", -1);
        assert_eq!(fields(v), ["page_size"]);
    }

    #[test]
    fn timestamps_round_trip() {
        let mut v = Violations::new();
        let now = Utc.timestamp_opt(1_700_000_000, 5).single().expect("valid");
        assert_eq!(v.timestamp("t", Some(&to_timestamp(now))), Some(now));
        v.timestamp(
            "bad",
            Some(&prost_types::Timestamp {
                seconds: 0,
                nanos: -1,
            }),
        );
        for (name, seconds, nanos) in [
            ("before_year_1", MIN_TIMESTAMP_SECONDS - 1, 0),
            ("after_year_9999", MAX_TIMESTAMP_SECONDS + 1, 0),
            ("too_many_nanos", 0, 1_000_000_000),
        ] {
            v.timestamp(name, Some(&prost_types::Timestamp { seconds, nanos }));
        }
        for (seconds, nanos) in [
            (MIN_TIMESTAMP_SECONDS, 0),
            (MAX_TIMESTAMP_SECONDS, 999_999_999),
        ] {
            assert!(
                v.timestamp("edge", Some(&prost_types::Timestamp { seconds, nanos }))
                    .is_some()
            );
        }
        assert_eq!(
            fields(v),
            ["bad", "before_year_1", "after_year_9999", "too_many_nanos"]
        );
    }
}
