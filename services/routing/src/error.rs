//! Routing's errors and their one mapping to `tonic::Status`.

use std::collections::HashMap;

use relay_runtime::error::{ApiError, cause_chain};
use tonic::{Code, Status};

use relay_fleet::StoreError as FleetError;

use crate::{DOMAIN, store::StoreError};

/// Everything an RPC of routing can fail with.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    /// Bad input (INVALID_FIELD, INVALID_PAGE_TOKEN, REGION_UNKNOWN).
    #[error(transparent)]
    Invalid(#[from] ApiError),
    /// The request_id was used for another request.
    #[error("request_id was already used for a different request")]
    RequestIdReused,
    /// Unknown incident.
    #[error("routing has no record of incident {0}")]
    IncidentNotFound(String),
    /// Unknown team.
    #[error("no team has id {0}")]
    TeamNotFound(String),
    /// Unknown assignment.
    #[error("no assignment has id {0}")]
    AssignmentNotFound(String),
    /// The incident already has an ACTIVE assignment.
    #[error("incident is already assigned to team {team_id} (assignment {assignment_id})")]
    IncidentAlreadyAssigned {
        /// The ACTIVE assignment.
        assignment_id: String,
        /// Its team.
        team_id: String,
    },
    /// The team is no longer AVAILABLE.
    #[error("team {0} is not available")]
    TeamNotAvailable(String),
    /// The team is in another region than the incident.
    #[error("team {team_id} is in region {team_region}, the incident in {incident_region}")]
    RegionMismatch {
        /// The team.
        team_id: String,
        /// Its region.
        team_region: String,
        /// The incident's region.
        incident_region: String,
    },
    /// The assignment already ended.
    #[error("assignment {0} is no longer active")]
    AssignmentNotActive(String),
    /// CancelRouting stopped the incident's routing.
    #[error("routing of incident {0} was cancelled; route it again with AssignTeam")]
    RoutingCancelled(String),
    /// RestoreAssignment found no call of this team to restore on the incident.
    #[error(
        "team {team_id} has no assignment to restore on incident {incident_id}: its latest assignment is another team's, or did not end because the live state was lost"
    )]
    NothingToRestore {
        /// The incident.
        incident_id: String,
        /// The team.
        team_id: String,
    },
    /// The record refused the claim.
    #[error("the assignment record refused the claim; retry with the same request_id")]
    ClaimConflict,
    /// The watch cannot resume from that event.
    #[error("events after {0} are no longer retained; resynchronise and watch from the next event")]
    EventHistoryExpired(String),
    /// Too many concurrent changes to one incident.
    #[error("the incident is changing concurrently; retry with the same request_id")]
    Contended,
    /// The record could not be reached.
    #[error("record unavailable")]
    Store(#[from] StoreError),
    /// The fleet could not be reached.
    #[error("fleet unavailable")]
    Fleet(#[from] FleetError),
}

fn status(code: Code, reason: &str, message: String, metadata: HashMap<String, String>) -> Status {
    relay_runtime::error::status(code, DOMAIN, reason, message, metadata)
}

impl RoutingError {
    /// The gRPC status for this error (ErrorInfo with domain `relay.routing.v1`).
    #[must_use]
    pub fn into_status(self) -> Status {
        let message = self.to_string();
        let (code, reason) = self.code_and_reason();
        let metadata = match self {
            Self::Invalid(error) => return error.into_status(DOMAIN),
            Self::RequestIdReused => {
                return ApiError::invalid_with_reason(
                    "REQUEST_ID_REUSED",
                    "request_id",
                    "was already used for a different request",
                )
                .into_status(DOMAIN);
            }
            Self::IncidentAlreadyAssigned {
                assignment_id,
                team_id,
            } => HashMap::from([
                (String::from("assignment_id"), assignment_id),
                (String::from("team_id"), team_id),
            ]),
            Self::Store(error) => {
                tracing::warn!(error.cause_chain = %cause_chain(&error), "record unavailable");
                HashMap::new()
            }
            Self::Fleet(error) => {
                tracing::warn!(error.cause_chain = %cause_chain(&error), "fleet unavailable");
                HashMap::new()
            }
            _ => HashMap::new(),
        };
        status(code, reason, message, metadata)
    }

    /// The ErrorInfo reason this error maps to (for tests and logs).
    #[must_use]
    pub fn reason(&self) -> String {
        match self {
            Self::Invalid(ApiError::InvalidArgument { reason, .. }) => (*reason).to_owned(),
            _ => self.code_and_reason().1.to_owned(),
        }
    }

    /// The one table of codes and reasons (`Invalid` maps through [`ApiError`]).
    fn code_and_reason(&self) -> (Code, &'static str) {
        match self {
            Self::Invalid(_) => (Code::InvalidArgument, "INVALID_FIELD"),
            Self::RequestIdReused => (Code::InvalidArgument, "REQUEST_ID_REUSED"),
            Self::IncidentNotFound(_) => (Code::NotFound, "INCIDENT_NOT_FOUND"),
            Self::TeamNotFound(_) => (Code::NotFound, "TEAM_NOT_FOUND"),
            Self::AssignmentNotFound(_) => (Code::NotFound, "ASSIGNMENT_NOT_FOUND"),
            Self::IncidentAlreadyAssigned { .. } => {
                (Code::AlreadyExists, "INCIDENT_ALREADY_ASSIGNED")
            }
            Self::TeamNotAvailable(_) => (Code::FailedPrecondition, "TEAM_NOT_AVAILABLE"),
            Self::RegionMismatch { .. } => (Code::FailedPrecondition, "REGION_MISMATCH"),
            Self::AssignmentNotActive(_) => (Code::FailedPrecondition, "ASSIGNMENT_NOT_ACTIVE"),
            Self::RoutingCancelled(_) => (Code::FailedPrecondition, "ROUTING_CANCELLED"),
            Self::NothingToRestore { .. } => (Code::FailedPrecondition, "NOTHING_TO_RESTORE"),
            Self::ClaimConflict => (Code::Aborted, "CLAIM_CONFLICT"),
            Self::EventHistoryExpired(_) => (Code::FailedPrecondition, "EVENT_HISTORY_EXPIRED"),
            Self::Contended => (Code::Unavailable, "CONTENDED"),
            Self::Store(_) => (Code::Unavailable, "RECORD_UNAVAILABLE"),
            Self::Fleet(_) => (Code::Unavailable, "FLEET_UNAVAILABLE"),
        }
    }
}

impl From<RoutingError> for Status {
    fn from(error: RoutingError) -> Self {
        error.into_status()
    }
}
