//! The directory's errors, and their one mapping to [`ApiError`].

use relay_runtime::error::ApiError;

/// Reason: no service has this id.
pub const SERVICE_NOT_FOUND: &str = "SERVICE_NOT_FOUND";
/// Reason: the service has no location with this id.
pub const LOCATION_NOT_FOUND: &str = "LOCATION_NOT_FOUND";
/// Reason: no referral has this id.
pub const REFERRAL_NOT_FOUND: &str = "REFERRAL_NOT_FOUND";
/// Reason: an open referral of the same incident to the same service and location exists.
pub const REFERRAL_ALREADY_EXISTS: &str = "REFERRAL_ALREADY_EXISTS";
/// Reason: a referral to a service that is not ACTIVE.
pub const SERVICE_NOT_ACTIVE: &str = "SERVICE_NOT_ACTIVE";
/// Reason: the referral's status is final.
pub const REFERRAL_CLOSED: &str = "REFERRAL_CLOSED";
/// Reason: a referral cannot go back to PENDING.
pub const INVALID_STATUS_TRANSITION: &str = "INVALID_STATUS_TRANSITION";
/// Reason: intake says the referral's incident does not exist.
pub const INCIDENT_NOT_FOUND: &str = "INCIDENT_NOT_FOUND";
/// Reason: the request_id was used for a different request.
pub const REQUEST_ID_REUSED: &str = "REQUEST_ID_REUSED";

/// What can go wrong in the directory, below the gRPC layer.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// No service has this id.
    #[error("no service has id {0}")]
    ServiceNotFound(String),
    /// The service has no location with this id.
    #[error("service {service_id} has no location {location_id}")]
    LocationNotFound {
        /// The service.
        service_id: String,
        /// The location asked for.
        location_id: String,
    },
    /// No referral has this id.
    #[error("no referral has id {0}")]
    ReferralNotFound(String),
    /// An open referral of the same incident to the same service and location exists.
    #[error("open referral {0} exists for this incident, service and location; update it instead")]
    ReferralExists(String),
    /// Referrals go only to ACTIVE services.
    #[error("service {0} is not active")]
    ServiceNotActive(String),
    /// The referral's status is final.
    #[error("referral {0} is closed: its status is final")]
    ReferralClosed(String),
    /// A referral cannot go back to PENDING.
    #[error("referral {0} has left PENDING and cannot go back")]
    BackToPending(String),
    /// Intake says no incident has this id.
    #[error("intake has no incident {0}")]
    IncidentNotFound(String),
    /// Another request with the same request_id committed first; look it up again.
    #[error("request {0} was recorded concurrently")]
    RequestRace(String),
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored record could not be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl DirectoryError {
    /// Whether a database error is a unique-constraint violation.
    #[must_use]
    pub fn is_unique_violation(error: &sqlx::Error) -> bool {
        matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
    }
}

impl From<DirectoryError> for ApiError {
    fn from(error: DirectoryError) -> Self {
        let message = error.to_string();
        match error {
            DirectoryError::ServiceNotFound(_) => ApiError::not_found(SERVICE_NOT_FOUND, message),
            DirectoryError::LocationNotFound { .. } => {
                ApiError::not_found(LOCATION_NOT_FOUND, message)
            }
            DirectoryError::ReferralNotFound(_) => ApiError::not_found(REFERRAL_NOT_FOUND, message),
            DirectoryError::ReferralExists(_) => ApiError::AlreadyExists {
                reason: REFERRAL_ALREADY_EXISTS,
                message,
            },
            DirectoryError::ServiceNotActive(_) => {
                ApiError::failed_precondition(SERVICE_NOT_ACTIVE, message)
            }
            DirectoryError::IncidentNotFound(_) => {
                ApiError::failed_precondition(INCIDENT_NOT_FOUND, message)
            }
            DirectoryError::ReferralClosed(_) => {
                ApiError::failed_precondition(REFERRAL_CLOSED, message)
            }
            DirectoryError::BackToPending(_) => {
                ApiError::failed_precondition(INVALID_STATUS_TRANSITION, message)
            }
            // With TLS compiled in, a connection dropped during the SSLRequest or the TLS
            // handshake fails as Tls or Protocol, not Io.
            DirectoryError::Database(
                sqlx::Error::PoolTimedOut
                | sqlx::Error::Io(_)
                | sqlx::Error::PoolClosed
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_),
            ) => ApiError::unavailable(
                "DATABASE_UNAVAILABLE",
                "the directory database is unreachable",
            ),
            other => ApiError::internal(other),
        }
    }
}
