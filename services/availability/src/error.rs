//! The errors of this crate and the one place they become an [`ApiError`] (and so a
//! `tonic::Status` with the reasons listed in `availability_service.proto`).

use relay_runtime::{ApiError, error::cause_chain};

use relay_fleet::{ChangeError, EventsError, StoreError, model::TeamStatus};

use crate::roster::RosterError;

/// `TEAM_NOT_FOUND` (NOT_FOUND).
pub const TEAM_NOT_FOUND: &str = "TEAM_NOT_FOUND";
/// `REVISION_MISMATCH` (ABORTED).
pub const REVISION_MISMATCH: &str = "REVISION_MISMATCH";
/// `INVALID_STATUS_TRANSITION` (FAILED_PRECONDITION).
pub const INVALID_STATUS_TRANSITION: &str = "INVALID_STATUS_TRANSITION";
/// `INCIDENT_MISMATCH` (FAILED_PRECONDITION).
pub const INCIDENT_MISMATCH: &str = "INCIDENT_MISMATCH";
/// `DISPATCH_REQUIRES_ROUTING` (FAILED_PRECONDITION).
pub const DISPATCH_REQUIRES_ROUTING: &str = "DISPATCH_REQUIRES_ROUTING";
/// `REGION_CHANGE_NOT_ALLOWED` (FAILED_PRECONDITION).
pub const REGION_CHANGE_NOT_ALLOWED: &str = "REGION_CHANGE_NOT_ALLOWED";
/// `EVENT_HISTORY_EXPIRED` (FAILED_PRECONDITION).
pub const EVENT_HISTORY_EXPIRED: &str = "EVENT_HISTORY_EXPIRED";
/// `REQUEST_ID_REUSED` (INVALID_ARGUMENT).
pub const REQUEST_ID_REUSED: &str = "REQUEST_ID_REUSED";
/// `STORE_UNAVAILABLE` (UNAVAILABLE): Redis or the roster database did not answer.
pub const STORE_UNAVAILABLE: &str = "STORE_UNAVAILABLE";
/// `SHUTTING_DOWN` (UNAVAILABLE): the server is stopping.
pub const SHUTTING_DOWN: &str = "SHUTTING_DOWN";

/// Everything that can go wrong in the availability service.
#[derive(Debug, thiserror::Error)]
pub enum AvailabilityError {
    /// No team has this id.
    #[error("no team has this team_id")]
    TeamNotFound,
    /// A change was refused by the store's rules.
    #[error(transparent)]
    Change(#[from] ChangeError),
    /// Events could not be read.
    #[error(transparent)]
    Events(#[from] EventsError),
    /// The live store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The roster database failed.
    #[error(transparent)]
    Roster(#[from] RosterError),
}

fn status_name(status: TeamStatus) -> &'static str {
    status.as_str_name().trim_start_matches("TEAM_STATUS_")
}

fn unavailable(error: &(dyn std::error::Error + 'static)) -> ApiError {
    tracing::warn!(error.cause_chain = %cause_chain(error), "storage unavailable");
    ApiError::unavailable(
        STORE_UNAVAILABLE,
        "team storage is unavailable; retry with backoff",
    )
}

fn store_error(error: StoreError) -> ApiError {
    match error {
        StoreError::Redis(ref redis)
            if redis.is_timeout()
                || redis.is_connection_dropped()
                || redis.is_io_error()
                || redis.is_connection_refusal() =>
        {
            unavailable(&error)
        }
        other => ApiError::internal(other),
    }
}

impl From<AvailabilityError> for ApiError {
    fn from(error: AvailabilityError) -> Self {
        match error {
            AvailabilityError::TeamNotFound | AvailabilityError::Change(ChangeError::NotFound) => {
                ApiError::not_found(TEAM_NOT_FOUND, "no team has this team_id")
            }
            AvailabilityError::Change(change) => match change {
                ChangeError::NotFound => {
                    ApiError::not_found(TEAM_NOT_FOUND, "no team has this team_id")
                }
                ChangeError::RevisionMismatch { current } => ApiError::aborted(
                    REVISION_MISMATCH,
                    format!("expected_revision is stale: the team's revision is {current}"),
                ),
                ChangeError::InvalidTransition { from, to } => ApiError::failed_precondition(
                    INVALID_STATUS_TRANSITION,
                    format!(
                        "a team cannot go from {} to {}",
                        status_name(from),
                        status_name(to)
                    ),
                ),
                ChangeError::IncidentMismatch { current_incident } => {
                    ApiError::failed_precondition(
                        INCIDENT_MISMATCH,
                        if current_incident.is_empty() {
                            String::from("the team is working no incident")
                        } else {
                            format!("the team is working incident {current_incident}")
                        },
                    )
                }
                ChangeError::DispatchRequiresRouting => ApiError::failed_precondition(
                    DISPATCH_REQUIRES_ROUTING,
                    "only RoutingService dispatches a team (AssignTeam or ConfirmAssignment)",
                ),
                ChangeError::RegionChangeNotAllowed { status } => ApiError::failed_precondition(
                    REGION_CHANGE_NOT_ALLOWED,
                    format!(
                        "the region can change only while the team is OFF_DUTY or OUT_OF_SERVICE; it is {}",
                        status_name(status)
                    ),
                ),
                ChangeError::Store(error) => store_error(error),
            },
            AvailabilityError::Events(EventsError::HistoryExpired) => {
                ApiError::failed_precondition(
                    EVENT_HISTORY_EXPIRED,
                    "after_event_id is older than the retained history; rebuild the view with ListTeams",
                )
            }
            AvailabilityError::Events(EventsError::Store(error))
            | AvailabilityError::Store(error) => store_error(error),
            AvailabilityError::Roster(error) => unavailable(&error),
        }
    }
}
