//! The error every handler returns, and the one place it becomes a `tonic::Status`.
//!
//! Each service crate has its own `thiserror` enum for its domain and converts it into
//! [`ApiError`]; [`ApiError::into_status`] then adds the standard details: a
//! `google.rpc.BadRequest` with field violations for `INVALID_ARGUMENT`, and a
//! `google.rpc.ErrorInfo` (UPPER_SNAKE `reason`, `domain` = the proto package) on every error.
//! Internal errors are logged with their whole cause chain and reach the caller as a clean
//! message.

use std::{collections::HashMap, fmt};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::BoxError;

/// One invalid field of a request: its path (`incident.location.latitude`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's path in the request, dotted, as in `google.rpc.BadRequest`.
    pub field: String,
    /// Why the value is refused, in words a caller can act on.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

impl fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}

/// An error as a caller sees it. `reason` values are UPPER_SNAKE and stable; they are listed in
/// each service's `.proto`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed; nothing was changed. `reason` is `INVALID_FIELD` unless the
    /// RPC names a more specific one (`INVALID_PAGE_TOKEN`, `REQUEST_ID_REUSED`).
    #[error("invalid argument: {}", join(.violations))]
    InvalidArgument {
        /// Stable UPPER_SNAKE reason.
        reason: &'static str,
        /// Every bad field of the request.
        violations: Vec<FieldViolation>,
    },
    /// The named resource does not exist.
    #[error("{message}")]
    NotFound {
        /// Stable UPPER_SNAKE reason.
        reason: &'static str,
        /// What was not found.
        message: String,
    },
    /// A resource with that identity already exists.
    #[error("{message}")]
    AlreadyExists {
        /// Stable UPPER_SNAKE reason.
        reason: &'static str,
        /// What exists already.
        message: String,
    },
    /// The system is not in a state where the call can succeed (an illegal transition).
    #[error("{message}")]
    FailedPrecondition {
        /// Stable UPPER_SNAKE reason.
        reason: &'static str,
        /// What state prevented it.
        message: String,
    },
    /// A concurrency conflict, such as a stale `expected_revision`; re-read and retry.
    #[error("{message}")]
    Aborted {
        /// Stable UPPER_SNAKE reason.
        reason: &'static str,
        /// What conflicted.
        message: String,
    },
    /// A dependency is unreachable; the call may be retried.
    #[error("{message}")]
    Unavailable {
        /// Stable UPPER_SNAKE reason.
        reason: &'static str,
        /// What is unavailable.
        message: String,
    },
    /// Something failed that the caller cannot fix. Logged in full, answered briefly.
    #[error("internal error")]
    Internal(#[source] BoxError),
}

fn join(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl ApiError {
    /// The reason of an ordinary field violation.
    pub const INVALID_FIELD: &'static str = "INVALID_FIELD";

    /// One invalid field (reason `INVALID_FIELD`).
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::invalid_fields(vec![FieldViolation::new(field, description)])
    }

    /// Several invalid fields (reason `INVALID_FIELD`).
    #[must_use]
    pub fn invalid_fields(violations: Vec<FieldViolation>) -> Self {
        Self::InvalidArgument {
            reason: Self::INVALID_FIELD,
            violations,
        }
    }

    /// One invalid field with a specific reason, such as `INVALID_PAGE_TOKEN`.
    pub fn invalid_with_reason(
        reason: &'static str,
        field: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        Self::InvalidArgument {
            reason,
            violations: vec![FieldViolation::new(field, description)],
        }
    }

    /// A missing resource.
    pub fn not_found(reason: &'static str, message: impl Into<String>) -> Self {
        Self::NotFound {
            reason,
            message: message.into(),
        }
    }

    /// An illegal state for the call.
    pub fn failed_precondition(reason: &'static str, message: impl Into<String>) -> Self {
        Self::FailedPrecondition {
            reason,
            message: message.into(),
        }
    }

    /// A concurrency conflict.
    pub fn aborted(reason: &'static str, message: impl Into<String>) -> Self {
        Self::Aborted {
            reason,
            message: message.into(),
        }
    }

    /// An unreachable dependency.
    pub fn unavailable(reason: &'static str, message: impl Into<String>) -> Self {
        Self::Unavailable {
            reason,
            message: message.into(),
        }
    }

    /// An internal failure with its cause.
    pub fn internal(error: impl Into<BoxError>) -> Self {
        Self::Internal(error.into())
    }

    /// The gRPC code of this error.
    #[must_use]
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::NotFound { .. } => Code::NotFound,
            Self::AlreadyExists { .. } => Code::AlreadyExists,
            Self::FailedPrecondition { .. } => Code::FailedPrecondition,
            Self::Aborted { .. } => Code::Aborted,
            Self::Unavailable { .. } => Code::Unavailable,
            Self::Internal(_) => Code::Internal,
        }
    }

    /// Converts the error into the `Status` a caller receives. `domain` is the service's proto
    /// package, e.g. `relay.availability.v1`. This is the one place errors meet the wire.
    #[must_use]
    pub fn into_status(self, domain: &'static str) -> Status {
        let code = self.code();
        let mut details = ErrorDetails::new();
        let (reason, message) = match self {
            Self::InvalidArgument { reason, violations } => {
                let message = format!("invalid argument: {}", join(&violations));
                for violation in violations {
                    details.add_bad_request_violation(violation.field, violation.description);
                }
                (reason, message)
            }
            Self::NotFound { reason, message }
            | Self::AlreadyExists { reason, message }
            | Self::FailedPrecondition { reason, message }
            | Self::Aborted { reason, message }
            | Self::Unavailable { reason, message } => (reason, message),
            Self::Internal(error) => {
                tracing::error!(error.cause_chain = %cause_chain(error.as_ref()), "internal error");
                ("INTERNAL", String::from("internal error"))
            }
        };
        details.set_error_info(reason, domain, HashMap::<String, String>::new());
        Status::with_error_details(code, message, details)
    }
}

/// A `Status` with a `google.rpc.ErrorInfo` (`reason`, `domain`, `metadata`), for the errors
/// whose metadata names the resources involved (an `ErrorInfo` with `assignment_id`, say) or
/// whose code [`ApiError`] does not cover. Every Relay error that is not [`ApiError`] goes
/// through here, so all of them carry the same details.
#[must_use]
pub fn status(
    code: Code,
    domain: &'static str,
    reason: &str,
    message: impl Into<String>,
    metadata: HashMap<String, String>,
) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, domain, metadata);
    Status::with_error_details(code, message.into(), details)
}

/// Formats an error and its sources as `outer: inner: innermost`.
#[must_use]
pub fn cause_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_field_violations_and_error_info() {
        let status = ApiError::invalid_fields(vec![
            FieldViolation::new("team_id", "must not be empty"),
            FieldViolation::new("location.latitude", "must be between -90 and 90"),
        ])
        .into_status("relay.availability.v1");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("team_id: must not be empty"));
        let details = status.get_error_details();
        let bad_request = details.bad_request().expect("bad request details");
        let fields: Vec<&str> = bad_request
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["team_id", "location.latitude"]);
        let info = details.error_info().expect("error info");
        assert_eq!(info.reason, "INVALID_FIELD");
        assert_eq!(info.domain, "relay.availability.v1");
    }

    #[test]
    fn each_kind_maps_to_its_code_and_reason() {
        let cases = [
            (
                ApiError::not_found("TEAM_NOT_FOUND", "no team t1"),
                Code::NotFound,
                "TEAM_NOT_FOUND",
            ),
            (
                ApiError::failed_precondition("ILLEGAL_TRANSITION", "x"),
                Code::FailedPrecondition,
                "ILLEGAL_TRANSITION",
            ),
            (
                ApiError::aborted("STALE_REVISION", "x"),
                Code::Aborted,
                "STALE_REVISION",
            ),
            (
                ApiError::unavailable("REDIS_UNAVAILABLE", "x"),
                Code::Unavailable,
                "REDIS_UNAVAILABLE",
            ),
        ];
        for (error, code, reason) in cases {
            let status = error.into_status("relay.routing.v1");
            assert_eq!(status.code(), code);
            let details = status.get_error_details();
            assert_eq!(details.error_info().expect("error info").reason, reason);
        }
    }

    #[test]
    fn status_carries_error_info_metadata() {
        let status = super::status(
            Code::AlreadyExists,
            "relay.routing.v1",
            "INCIDENT_ALREADY_ASSIGNED",
            "already assigned",
            HashMap::from([(String::from("team_id"), String::from("t1"))]),
        );
        assert_eq!(status.code(), Code::AlreadyExists);
        let details = status.get_error_details();
        let info = details.error_info().expect("error info");
        assert_eq!(info.reason, "INCIDENT_ALREADY_ASSIGNED");
        assert_eq!(info.domain, "relay.routing.v1");
        assert_eq!(info.metadata.get("team_id").map(String::as_str), Some("t1"));
    }

    #[test]
    fn internal_errors_hide_their_cause_from_the_caller() {
        let cause = std::io::Error::other("password=hunter2 in connection string");
        let status = ApiError::internal(cause).into_status("relay.intake.v1");
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
        assert!(!format!("{status:?}").contains("hunter2"));
    }
}
