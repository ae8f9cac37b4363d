//! SearchServices, decided here: what a search asks the store for ([`CandidateFilter`]), the
//! order of results ([`RankKey`]: relevance, distance, name, ids), the growing boxes of a near
//! search, the open-now filter and the results. The store filters, ranks and pages; the
//! handler validates, runs a [`Pager`] against the store and loads the services.

use std::{collections::HashMap, future::Future};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use relay_proto::directory::{Schedule, SearchResult, Service, ServiceLocation};
use relay_runtime::geo::{self, BoundingBox, Point};
use relay_runtime::validate::to_timestamp;

use crate::schedule::{self, Hours};

/// The filters and order of a search. The store returns the matching ACTIVE (service,
/// location) pairs in [`RankKey`] order, strictly after `after`, at most `limit`; opening
/// hours are checked by the caller.
#[derive(Debug, Clone, Default)]
pub struct CandidateFilter {
    /// Free text; `None` means no text filter.
    pub text: Option<String>,
    /// The point distances are measured from, if any.
    pub point: Option<Point>,
    /// Radius in meters around `point`; 0 means no radius. Candidates without coordinates
    /// are excluded when set.
    pub radius: f64,
    /// Bounds that contain the radius, inclusive; set with `radius`.
    pub bounding_box: Option<BoundingBox>,
    /// Taxonomy codes (each matches its descendants); empty means any.
    pub taxonomy_codes: Vec<String>,
    /// Lowercase language tags; empty means any.
    pub languages: Vec<String>,
    /// Only locations whose live capacity has units available.
    pub accepting_only: bool,
    /// Start strictly after this key.
    pub after: Option<RankKey>,
    /// At most this many candidates.
    pub limit: i64,
}

/// The ranking key of a candidate, ascending = best first: relevance (negated), distance,
/// name (only when ordering by name matters: no text), service id, location id. Strings
/// compare bytewise.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RankKey {
    /// Negated relevance in [-1, 0]: -score/(score+1) with text, -1 without.
    pub r: f64,
    /// Distance in meters from the search's point (0 without a point or coordinates).
    pub d: f64,
    /// The service's name without text, empty with text.
    pub n: String,
    /// Service id.
    pub s: String,
    /// Location id (empty for a service without locations).
    pub l: String,
}

impl RankKey {
    /// The key of a candidate with raw text score `score` (>= 0) at `to`.
    #[must_use]
    pub fn of(
        filter: &CandidateFilter,
        score: f64,
        to: Option<Point>,
        name: String,
        s: String,
        l: String,
    ) -> Self {
        let score = score.max(0.0);
        Self {
            r: if filter.text.is_some() {
                -(score / (score + 1.0))
            } else {
                -1.0
            },
            d: match (filter.point, to) {
                (Some(from), Some(to)) => geo::distance_meters(from, to),
                _ => 0.0,
            },
            n: if filter.text.is_some() {
                String::new()
            } else {
                name
            },
            s,
            l,
        }
    }

    /// Total order of keys.
    #[must_use]
    pub fn rank_cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.r
            .total_cmp(&other.r)
            .then(self.d.total_cmp(&other.d))
            .then_with(|| self.n.cmp(&other.n))
            .then_with(|| self.s.cmp(&other.s))
            .then_with(|| self.l.cmp(&other.l))
    }
}

/// One (service, location) pair that passed the filters.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Its ranking key (service and location ids included).
    pub key: RankKey,
    /// The location's opening hours, when the backend keeps them with the search data
    /// (`None`: ask the store's `hours`).
    pub hours: Option<LocationHours>,
}

/// The opening hours of one service at one location.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LocationHours {
    /// The location's IANA time zone.
    pub time_zone: String,
    /// The schedules that apply.
    pub schedules: Vec<Schedule>,
}

/// The candidates of `filter` for a backend that reads rows by bounding box (`scan`, which
/// returns the box's candidates ranked and after the cursor), best first, at least `limit`
/// of them when there are.
///
/// A search ordered by distance (a point and a radius, no text) reads growing boxes around
/// its point: the box of radius `r` holds every row within `r`, so once at least `limit` rows
/// within `r` follow the page's last key, no row outside can rank before them. A 5 km search
/// in a dense metro then ranks a few hundred rows instead of thousands. Any other search
/// reads the filter's own box (or none) once.
///
/// # Errors
/// The first error of `scan`.
pub async fn grow_near<F, Fut, E>(
    filter: &CandidateFilter,
    limit: usize,
    mut scan: F,
) -> Result<Vec<Candidate>, E>
where
    F: FnMut(Option<BoundingBox>) -> Fut,
    Fut: Future<Output = Result<Vec<Candidate>, E>>,
{
    let point = match filter.point {
        Some(point) if filter.text.is_none() && filter.radius > 0.0 => point,
        _ => return scan(filter.bounding_box).await,
    };
    // A quarter of the radius first (a sixteenth of the area), and not less than twice the
    // distance a next page starts from.
    let after = filter.after.as_ref().map_or(0.0, |after| after.d);
    let mut within = (filter.radius / 4.0).max(after * 2.0);
    loop {
        if within >= filter.radius {
            return scan(filter.bounding_box).await;
        }
        let mut found = scan(Some(geo::bounding_box(point, within))).await?;
        found.retain(|c| c.key.d <= within);
        if found.len() >= limit {
            return Ok(found);
        }
        within *= 2.0;
    }
}

/// A result before its service is loaded; the key is also the page token's cursor.
#[derive(Debug, Clone)]
pub struct Hit {
    /// Its ranking key.
    pub key: RankKey,
    relevance: f64,
    distance: f64,
}

impl From<RankKey> for Hit {
    fn from(key: RankKey) -> Self {
        Self {
            relevance: -key.r,
            distance: key.d,
            key,
        }
    }
}

/// One page of hits, read from the store in batches: the store ranks and pages, and only
/// opening hours are checked here, so with `open_at` it reads ahead in batches until a page
/// is full. The caller loops: [`Pager::next`] is the filter to ask the store for, and the
/// answer goes to [`Pager::take`] (with the hours [`Pager::missing_hours`] names, read).
#[derive(Debug)]
pub struct Pager {
    filter: CandidateFilter,
    open_at: Option<DateTime<Utc>>,
    page_size: usize,
    batch: usize,
    hits: Vec<Hit>,
    done: bool,
}

impl Pager {
    /// A page of `page_size` hits of `filter`, open at `open_at` when given.
    #[must_use]
    pub fn new(
        mut filter: CandidateFilter,
        open_at: Option<DateTime<Utc>>,
        page_size: usize,
    ) -> Self {
        let want = page_size + 1;
        let batch = if open_at.is_some() {
            (want * 2).max(100)
        } else {
            want
        };
        filter.limit = i64::try_from(batch).unwrap_or(500);
        Self {
            filter,
            open_at,
            page_size,
            batch,
            hits: Vec::new(),
            done: false,
        }
    }

    /// The filter of the next batch to read, or `None` when the page is complete.
    #[must_use]
    pub fn next(&self) -> Option<&CandidateFilter> {
        (!self.done).then_some(&self.filter)
    }

    /// The (service, location) pairs of `candidates` whose hours must be read for the
    /// open-now filter (none without `open_at`).
    #[must_use]
    pub fn missing_hours(&self, candidates: &[Candidate]) -> Vec<(String, String)> {
        if self.open_at.is_none() {
            return Vec::new();
        }
        candidates
            .iter()
            .filter(|c| c.hours.is_none() && !c.key.l.is_empty())
            .map(|c| (c.key.s.clone(), c.key.l.clone()))
            .collect()
    }

    /// Takes a batch the store returned for [`Pager::next`], with the hours read for
    /// [`Pager::missing_hours`].
    pub fn take(
        &mut self,
        candidates: Vec<Candidate>,
        read: &HashMap<(String, String), LocationHours>,
    ) {
        let exhausted = candidates.len() < self.batch;
        if let Some(last) = candidates.last() {
            self.filter.after = Some(last.key.clone());
        }
        match self.open_at {
            Some(at) => self.hits.extend(
                candidates
                    .into_iter()
                    .filter(|c| is_open(c, read, at))
                    .map(|c| Hit::from(c.key)),
            ),
            None => self
                .hits
                .extend(candidates.into_iter().map(|c| Hit::from(c.key))),
        }
        self.done = self.hits.len() > self.page_size || exhausted;
    }

    /// The page's hits, and whether more follow.
    #[must_use]
    pub fn finish(mut self) -> (Vec<Hit>, bool) {
        let more = self.hits.len() > self.page_size;
        self.hits.truncate(self.page_size);
        (self.hits, more)
    }
}

/// Whether a candidate's location is open at `at` (a service without locations never is).
fn is_open(
    candidate: &Candidate,
    read: &HashMap<(String, String), LocationHours>,
    at: DateTime<Utc>,
) -> bool {
    if candidate.key.l.is_empty() {
        return false;
    }
    let hours = match &candidate.hours {
        Some(hours) => Some(hours),
        None => read.get(&(candidate.key.s.clone(), candidate.key.l.clone())),
    };
    hours.is_some_and(|hours| {
        let (tz, parsed) = parse_hours(hours);
        schedule::is_open(tz, &parsed, at)
    })
}

/// Parsed opening hours of one location.
fn parse_hours(hours: &LocationHours) -> (Tz, Vec<Hours>) {
    let tz = schedule::parse_time_zone(&hours.time_zone).unwrap_or(Tz::UTC);
    (
        tz,
        hours
            .schedules
            .iter()
            .filter_map(|s| Hours::parse(s).ok())
            .collect(),
    )
}

fn location_hours(location: &ServiceLocation) -> (Tz, Vec<Hours>) {
    parse_hours(&LocationHours {
        time_zone: location.time_zone.clone(),
        schedules: location.schedules.clone(),
    })
}

/// The results of `hits`, with their services (hits of services not found are left out),
/// open now and the next opening at `at`, and live capacity.
#[must_use]
pub fn results(
    hits: Vec<Hit>,
    services: &HashMap<String, Service>,
    at: DateTime<Utc>,
) -> Vec<SearchResult> {
    hits.into_iter()
        .filter_map(|hit| {
            let service = services.get(&hit.key.s)?.clone();
            let location = service
                .locations
                .iter()
                .find(|l| l.location_id == hit.key.l);
            let (open_now, next_open_time, capacity) = match location {
                Some(location) => {
                    let (tz, hours) = location_hours(location);
                    let open = schedule::is_open(tz, &hours, at);
                    let next = if open {
                        None
                    } else {
                        schedule::next_open(tz, &hours, at).map(to_timestamp)
                    };
                    (open, next, location.capacity)
                }
                None => (false, None, None),
            };
            Some(SearchResult {
                service: Some(service),
                location_id: hit.key.l,
                distance_meters: hit.distance,
                open_now,
                next_open_time,
                capacity,
                relevance: hit.relevance,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_and_boxes_agree() {
        let portland = Point::new(45.5152, -122.6784);
        let eugene = Point::new(44.0521, -123.0868);
        let d = geo::distance_meters(portland, eugene);
        assert!((d - 165_000.0).abs() < 3_000.0, "{d}");
        let BoundingBox {
            min_latitude: min_lat,
            max_latitude: max_lat,
            min_longitude: min_lon,
            max_longitude: max_lon,
        } = geo::bounding_box(portland, d);
        assert!((min_lat..=max_lat).contains(&eugene.latitude));
        assert!((min_lon..=max_lon).contains(&eugene.longitude));
    }

    /// A page token carries the last key; it must come back bit for bit, or the next page
    /// repeats or skips the result at the boundary.
    #[test]
    fn rank_keys_round_trip_exactly() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut off = 0;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            #[allow(clippy::cast_precision_loss)]
            let d = (x >> 11) as f64 / (1u64 << 53) as f64 * 5000.0;
            let key = RankKey {
                r: -d / (d + 1.0),
                d,
                ..RankKey::default()
            };
            let json = serde_json::to_vec(&key).expect("a key serializes");
            let back: RankKey = serde_json::from_slice(&json).expect("a key parses");
            if back.d.to_bits() != d.to_bits() || back.r.to_bits() != key.r.to_bits() {
                off += 1;
            }
        }
        assert_eq!(off, 0);
    }
}
