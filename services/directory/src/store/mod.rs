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

/// The SQL-side filters of a search. Distance, opening hours and ranking are computed by the
/// caller from the candidates.
#[derive(Debug, Clone, Default)]
pub struct CandidateFilter {
    /// Free text; `None` means no text filter.
    pub text: Option<String>,
    /// Latitude and longitude bounds, inclusive: `(min_lat, max_lat, min_lon, max_lon)`.
    /// Candidates without coordinates are excluded when set.
    pub bounding_box: Option<(f64, f64, f64, f64)>,
    /// Taxonomy codes (each matches its descendants); empty means any.
    pub taxonomy_codes: Vec<String>,
    /// Lowercase language tags; empty means any.
    pub languages: Vec<String>,
    /// Only locations whose live capacity has units available.
    pub accepting_only: bool,
    /// Name-ordered keyset paging, used when neither text nor a point orders the results:
    /// candidates strictly after `(name, service_id, location_id)`, at most `limit`.
    pub keyset: Option<Keyset>,
}

/// A position in name order.
#[derive(Debug, Clone, Default)]
pub struct Keyset {
    /// Start strictly after this `(name, service_id, location_id)`.
    pub after: Option<(String, String, String)>,
    /// At most this many candidates.
    pub limit: i64,
}

/// One (service, location) pair that passed the SQL-side filters.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The service.
    pub service_id: String,
    /// The location; empty for a service without locations.
    pub location_id: String,
    /// The service's name.
    pub name: String,
    /// The location's coordinates, when known.
    pub point: Option<(f64, f64)>,
    /// Raw text score, >= 0 (higher is better); 0 without a text filter.
    pub score: f64,
}

/// The opening hours of one service at one location.
#[derive(Debug, Clone, Default)]
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
}

/// A write transaction: everything in it commits together or not at all.
pub trait WriteSession: Send {
    /// Writes one row (insert or update by its id).
    fn apply(&mut self, row: &Row) -> impl Future<Output = StoreResult<Applied>> + Send;
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

    /// ACTIVE (service, location) pairs passing `filter`.
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
