//! Storage of the directory behind one trait, [`DirectoryStore`], with two backends:
//! PostgreSQL ([`PgStore`], schema `directory`) and SQLite ([`SqliteStore`], for `relay dev`).
//! The domain logic (validation, ranking, opening hours) never sees SQL; the one conformance
//! suite in `tests/conformance.rs` runs against both.

use std::{collections::HashMap, future::Future};

use relay_proto::directory::{
    Capacity, CreateReferralResponse, Referral, ReferralStatus, Schedule, Service,
    UpdateCapacityResponse, UpdateReferralResponse, UpsertServiceResponse,
};

use crate::error::DirectoryError;

mod sql;

pub use sql::{PgStore, SqliteStore};

/// Result of the store.
pub type StoreResult<T> = Result<T, DirectoryError>;

/// The idempotency key of a mutation, recorded with its response in the same transaction.
#[derive(Debug, Clone)]
pub struct Idem {
    /// The caller's request_id.
    pub request_id: String,
    /// The RPC name.
    pub rpc: &'static str,
    /// The request's bytes (everything that must match on a retry).
    pub fingerprint: Vec<u8>,
    /// Microseconds since the epoch.
    pub now: i64,
}

/// A recorded mutation.
#[derive(Debug, Clone)]
pub struct StoredRequest {
    /// The RPC name.
    pub rpc: String,
    /// The original request's bytes.
    pub fingerprint: Vec<u8>,
    /// The original response's bytes.
    pub response: Vec<u8>,
}

/// The filters and order of a search. The store returns the matching ACTIVE (service,
/// location) pairs in [`RankKey`] order, strictly after `after`, at most `limit`; opening
/// hours are checked by the caller.
#[derive(Debug, Clone, Default)]
pub struct CandidateFilter {
    /// Free text; `None` means no text filter.
    pub text: Option<String>,
    /// The point distances are measured from (latitude, longitude), if any.
    pub point: Option<(f64, f64)>,
    /// Radius in meters around `point`; 0 means no radius. Candidates without coordinates
    /// are excluded when set.
    pub radius: f64,
    /// Latitude and longitude bounds that contain the radius, inclusive:
    /// `(min_lat, max_lat, min_lon, max_lon)`; set with `radius`.
    pub bounding_box: Option<(f64, f64, f64, f64)>,
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
        to: Option<(f64, f64)>,
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
                (Some(from), Some(to)) => crate::handler::distance_meters(from, to),
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
    /// (`None`: ask [`DirectoryStore::hours`]).
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

/// A referral filter for listing.
#[derive(Debug, Clone, Default)]
pub struct ReferralFilter {
    /// Only this incident (empty: any).
    pub incident_id: String,
    /// Only this service (empty: any).
    pub service_id: String,
    /// Only this status (0: any).
    pub status: i32,
    /// Start strictly after `(create_time micros, referral_id)`.
    pub after: Option<(i64, String)>,
    /// At most this many.
    pub limit: i64,
}

/// What a write of one imported row did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Stored (created or updated).
    Stored,
    /// Not stored: a row it refers to does not exist (the reason says which).
    Missing(String),
}

/// One HSDS row, normalized, as the importer and UpsertService write it.
#[derive(Debug, Clone)]
pub enum Row {
    /// An organization.
    Organization {
        /// Id.
        id: String,
        /// Name.
        name: String,
        /// Description.
        description: String,
        /// Website.
        url: String,
        /// Email.
        email: String,
    },
    /// A service (its organization must exist). `update_time` in micros.
    Service(Box<Service>, i64),
    /// A taxonomy term.
    TaxonomyTerm(relay_proto::directory::TaxonomyTerm),
    /// A service's taxonomy term.
    ServiceTaxonomy {
        /// Service id.
        service_id: String,
        /// Term id.
        term_id: String,
    },
    /// A language of a service.
    Language {
        /// Service id.
        service_id: String,
        /// Lowercase tag.
        code: String,
        /// Order within the service.
        position: i64,
    },
    /// A phone of a service.
    Phone {
        /// Phone id.
        id: String,
        /// Service id.
        service_id: String,
        /// The number.
        phone: relay_proto::directory::Phone,
    },
    /// A location (without its address), with its time zone.
    Location {
        /// Id.
        id: String,
        /// Name.
        name: String,
        /// Coordinates, when valid.
        point: Option<(f64, f64)>,
        /// IANA time zone.
        time_zone: String,
    },
    /// The address of a location.
    Address {
        /// Location id.
        location_id: String,
        /// The address.
        address: relay_proto::directory::Address,
    },
    /// A location's time zone learnt later (for example from a schedule's UTC offset).
    LocationTimeZone {
        /// Location id.
        location_id: String,
        /// IANA time zone.
        time_zone: String,
    },
    /// A service offered at a location.
    ServiceAtLocation {
        /// HSDS service_at_location id.
        id: String,
        /// Service id.
        service_id: String,
        /// Location id.
        location_id: String,
        /// Order within the service.
        position: i64,
    },
    /// A schedule.
    Schedule {
        /// Schedule id.
        id: String,
        /// The service it applies to, if any.
        service_id: Option<String>,
        /// The location it applies to, if any.
        location_id: Option<String>,
        /// The HSDS service_at_location it applies to, if any (resolved to both ids).
        service_at_location_id: Option<String>,
        /// Order.
        position: i64,
        /// The rule, normalized ("HH:MM" times).
        schedule: Schedule,
    },
    /// The latest capacity report of a service at a location (the importer keeps the newer
    /// of the stored and the imported report).
    Capacity {
        /// Service id.
        service_id: String,
        /// Location id.
        location_id: String,
        /// The report.
        capacity: Capacity,
    },
}

/// A stored table, read whole by [`DirectoryStore::dump`] for an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dump {
    /// [`Row::Organization`] rows, by id.
    Organizations,
    /// [`Row::TaxonomyTerm`] rows, by id.
    TaxonomyTerms,
    /// [`Row::Service`] rows (organization id only, `update_time`), by id.
    Services,
    /// [`Row::ServiceTaxonomy`] rows, by service and term.
    ServiceTaxonomy,
    /// [`Row::Language`] rows, in position order.
    Languages,
    /// [`Row::Phone`] rows, by id.
    Phones,
    /// [`Row::Location`] rows, each followed by its [`Row::Address`] when it has one, by id.
    Locations,
    /// [`Row::ServiceAtLocation`] rows, in position order.
    ServiceAtLocation,
    /// [`Row::Schedule`] rows (service and/or location ids as stored), in position order.
    Schedules,
    /// [`Row::Capacity`] rows, by service and location.
    Capacity,
}

/// A write transaction: everything in it commits together or not at all.
pub trait WriteSession: Send {
    /// Writes one row (insert or update by its id).
    fn apply(&mut self, row: &Row) -> impl Future<Output = StoreResult<Applied>> + Send;
    /// Writes rows in order, as many `apply` calls would, in fewer statements; the result of
    /// each row. Rows of different kinds must not depend on each other (rows of one HSDS
    /// file do not).
    fn apply_all(&mut self, rows: &[Row])
    -> impl Future<Output = StoreResult<Vec<Applied>>> + Send;
    /// Deletes the stored schedules of these services, and those of these locations that
    /// name no service: an imported package's schedules replace them whole.
    fn forget_schedules(
        &mut self,
        services: &[String],
        locations: &[String],
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Rebuilds the full-text index of every service.
    fn refresh_all_search(&mut self) -> impl Future<Output = StoreResult<()>> + Send;
    /// Commits.
    fn commit(self) -> impl Future<Output = StoreResult<()>> + Send;
}

/// The directory's storage.
pub trait DirectoryStore: Clone + Send + Sync + 'static {
    /// The write transaction of this backend.
    type Session: WriteSession;

    /// Starts a write transaction (the importer's).
    fn begin(&self) -> impl Future<Output = StoreResult<Self::Session>> + Send;

    /// Checks the database answers.
    fn ping(&self) -> impl Future<Output = StoreResult<()>> + Send;

    /// The recorded mutation with this request_id, if any.
    fn lookup_request(
        &self,
        request_id: &str,
    ) -> impl Future<Output = StoreResult<Option<StoredRequest>>> + Send;

    /// Creates or replaces a service whole (validated), and records `idem`.
    fn upsert_service(
        &self,
        service: &Service,
        idem: &Idem,
    ) -> impl Future<Output = StoreResult<UpsertServiceResponse>> + Send;

    /// The services with these ids, in the order given (unknown ids are left out), with
    /// their capacity.
    fn get_services(
        &self,
        ids: &[String],
    ) -> impl Future<Output = StoreResult<Vec<Service>>> + Send;

    /// ACTIVE (service, location) pairs passing `filter`, best first (see [`CandidateFilter`]).
    fn search_candidates(
        &self,
        filter: &CandidateFilter,
    ) -> impl Future<Output = StoreResult<Vec<Candidate>>> + Send;

    /// The opening hours of each (service_id, location_id) pair.
    fn hours(
        &self,
        pairs: &[(String, String)],
    ) -> impl Future<Output = StoreResult<HashMap<(String, String), LocationHours>>> + Send;

    /// Records a capacity report unless it is stale.
    fn update_capacity(
        &self,
        service_id: &str,
        location_id: &str,
        capacity: &Capacity,
        idem: &Idem,
    ) -> impl Future<Output = StoreResult<UpdateCapacityResponse>> + Send;

    /// Creates a referral (checked against the service and its open referrals).
    fn create_referral(
        &self,
        referral: &Referral,
        idem: &Idem,
    ) -> impl Future<Output = StoreResult<CreateReferralResponse>> + Send;

    /// Changes a referral's status and/or notes.
    fn update_referral(
        &self,
        referral_id: &str,
        status: ReferralStatus,
        notes: Option<&str>,
        idem: &Idem,
    ) -> impl Future<Output = StoreResult<UpdateReferralResponse>> + Send;

    /// Every stored row of one table, in an order that keeps each service's lists in the
    /// order GetService returns them when the rows are imported again in that order.
    fn dump(&self, table: Dump) -> impl Future<Output = StoreResult<Vec<Row>>> + Send;

    /// Erases the notes of referrals created before `created_before` (keeping everything
    /// else of them), and deletes the idempotency records of CreateReferral and
    /// UpdateReferral (which carry notes) made before `requests_before`; how many of each.
    fn erase_referral_notes(
        &self,
        created_before: i64,
        requests_before: i64,
    ) -> impl Future<Output = StoreResult<(u64, u64)>> + Send;

    /// Lists referrals oldest first.
    fn list_referrals(
        &self,
        filter: &ReferralFilter,
    ) -> impl Future<Output = StoreResult<Vec<Referral>>> + Send;
}

/// Whether a referral status is final.
#[must_use]
pub fn is_final(status: ReferralStatus) -> bool {
    matches!(
        status,
        ReferralStatus::Connected | ReferralStatus::Declined | ReferralStatus::Cancelled
    )
}

/// The referral after applying `status` and `notes` to `current`, or why it may not change.
///
/// # Errors
/// [`DirectoryError::ReferralClosed`] or [`DirectoryError::BackToPending`].
pub fn transition(
    current: &Referral,
    status: ReferralStatus,
    notes: Option<&str>,
    now: i64,
) -> StoreResult<Referral> {
    let from = ReferralStatus::try_from(current.status).unwrap_or(ReferralStatus::Pending);
    let mut next = current.clone();
    if status != ReferralStatus::Unspecified && status != from {
        if is_final(from) {
            return Err(DirectoryError::ReferralClosed(current.referral_id.clone()));
        }
        if status == ReferralStatus::Pending {
            return Err(DirectoryError::BackToPending(current.referral_id.clone()));
        }
        next.status = status as i32;
    }
    if let Some(notes) = notes {
        next.notes = notes.to_owned();
    }
    if next != *current {
        next.update_time = Some(crate::micros_to_timestamp(now));
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::RankKey;

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
