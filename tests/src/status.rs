//! What a test reads from a refused call: the `google.rpc` details every Relay error carries
//! (an `ErrorInfo` with its reason, a `BadRequest` naming the fields of an INVALID_ARGUMENT).

use tonic::Status;
use tonic_types::{ErrorInfo, StatusExt};

/// The `ErrorInfo` of `status`, if it has one.
#[must_use]
pub fn error_info(status: &Status) -> Option<ErrorInfo> {
    status.get_details_error_info()
}

/// The `ErrorInfo` reason of `status` (empty when it has none).
#[must_use]
pub fn reason(status: &Status) -> String {
    error_info(status)
        .map(|info| info.reason)
        .unwrap_or_default()
}

/// The fields the `BadRequest` of `status` names, in its order (empty when it has none).
#[must_use]
pub fn violated_fields(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// The fields an INVALID_ARGUMENT `status` names; panics when `status` is another code.
#[must_use]
pub fn bad_fields(status: &Status) -> Vec<String> {
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    violated_fields(status)
}
