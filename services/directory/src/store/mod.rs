//! Storage of the directory behind one trait, [`DirectoryStore`], with two backends:
//! PostgreSQL ([`PostgresStore`], schema `directory`) and SQLite ([`SqliteStore`], for
//! `relay dev`). Both are one [`SqlStore`] over the backend's [`Dialect`]: the statements
//! both databases read the same way are written once (`sql.rs`, `write.rs`, `dump.rs`), row
//! mapping once (`rows.rs`), and what differs per dialect in `postgres.rs` and `sqlite.rs`.
//! The domain logic (validation, ranking, opening hours, referral rules) never sees SQL; the
//! one conformance suite in `tests/conformance.rs` runs against both.

use std::{collections::HashMap, future::Future};

use relay_proto::directory::{
    Capacity, CreateReferralResponse, Referral, ReferralStatus, Schedule, Service,
    UpdateCapacityResponse, UpdateReferralResponse, UpsertServiceResponse,
};

use crate::error::DirectoryError;
pub use crate::search::{Candidate, CandidateFilter, LocationHours, RankKey};

mod bounded;
mod documents;
mod dump;
mod postgres;
mod query;
mod rows;
mod sql;
mod sqlite;
mod write;

pub use postgres::PostgresStore;
pub use query::{Columns, Dialect, Query, Value};
pub use relay_runtime::storage::Bounded;
pub use sql::SqlStore;
pub use sqlite::SqliteStore;
pub use write::SqlSession;

/// Result of the store.
pub type StoreResult<T> = Result<T, DirectoryError>;

/// The idempotency key of a mutation, recorded with its response in the same transaction.
#[derive(Debug, Clone)]
pub struct Idem {
    /// The caller's request_id.
    pub request_id: String,
    /// The RPC name.
    pub rpc: &'static str,
    /// The request's fingerprint ([`relay_runtime::idempotency::fingerprint`]: everything that
    /// must match on a retry).
    pub fingerprint: String,
    /// Microseconds since the epoch.
    pub now: i64,
    /// The audit record of the call, committed with the change.
    pub audit: Option<relay_runtime::audit::AuditRecord>,
}

/// A recorded mutation.
#[derive(Debug, Clone)]
pub struct StoredRequest {
    /// The RPC name.
    pub rpc: String,
    /// The original request's fingerprint: its text, or for a record written before the
    /// shared fingerprint, the request's encoding (see
    /// [`relay_runtime::idempotency::same_request`]).
    pub fingerprint: Vec<u8>,
    /// The original response's bytes.
    pub response: Vec<u8>,
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
