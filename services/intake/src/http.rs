//! Intake's HTTP/JSON port (`RELAY_HTTP_LISTEN`) for NENA EIDO: `POST /EIDO` submits an
//! incident as an EIDO, `GET /EIDO/{IncidentId}` (the dereference operation of NENA's EIDO
//! OpenAPI) returns one as an EIDO. The same operations as the SubmitEido and GetEido RPCs,
//! through the same code; errors are JSON, shaped like the gRPC ones (code, reason, message,
//! and the field violations naming JSON paths).

use std::sync::Arc;

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use relay_runtime::error::ApiError;
use serde_json::json;
use tonic::Code;

use crate::{core::Intake, eido};

/// The HTTP routes, over the shared intake state.
pub fn router(intake: Arc<Intake>) -> Router {
    Router::new()
        .route("/EIDO", post(submit))
        .route("/EIDO/{incident_id}", get(dereference))
        // A little over the EIDO limit, so that the handler answers with its own error.
        .layer(DefaultBodyLimit::max(eido::MAX_EIDO_BYTES + 1))
        .with_state(intake)
}

/// Serves the routes on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    intake: Arc<Intake>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    if let Err(error) = axum::serve(listener, router(intake))
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::warn!(%error, "eido http endpoint stopped");
    }
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error_response(error: ApiError) -> Response {
    let (status, reason) = match error.code() {
        Code::InvalidArgument => (StatusCode::BAD_REQUEST, "INVALID_FIELD"),
        Code::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
        Code::AlreadyExists => (StatusCode::CONFLICT, "ALREADY_EXISTS"),
        Code::FailedPrecondition | Code::Aborted => (StatusCode::CONFLICT, "CONFLICT"),
        Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
    };
    let code = format!("{:?}", error.code());
    let (reason, message, violations) = match error {
        ApiError::InvalidArgument { reason, violations } => {
            let message = format!(
                "invalid argument: {}",
                violations
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            let list: Vec<_> = violations
                .into_iter()
                .map(|v| json!({"field": v.field, "description": v.description}))
                .collect();
            (reason, message, list)
        }
        ApiError::NotFound { reason, message }
        | ApiError::AlreadyExists { reason, message }
        | ApiError::FailedPrecondition { reason, message }
        | ApiError::Aborted { reason, message }
        | ApiError::Unavailable { reason, message } => (reason, message, Vec::new()),
        ApiError::Internal(cause) => {
            tracing::error!(
                error.cause_chain = %relay_runtime::error::cause_chain(cause.as_ref()),
                "internal error"
            );
            (reason, "internal error".to_owned(), Vec::new())
        }
    };
    json_response(
        status,
        &json!({"error": {
            "code": code,
            "reason": reason,
            "domain": crate::DOMAIN,
            "message": message,
            "fieldViolations": violations,
        }}),
    )
}

async fn submit(State(intake): State<Arc<Intake>>, body: Bytes) -> Response {
    let Ok(text) = std::str::from_utf8(&body) else {
        return error_response(ApiError::invalid("$", "the body must be UTF-8 JSON"));
    };
    match eido::submit(&intake, text).await {
        Ok(submitted) => {
            let incident = &submitted.incident;
            let location = format!("/EIDO/{}", incident.incident_id);
            let status = if submitted.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let triage = incident.triage.clone().unwrap_or_default();
            let routing = incident.routing.clone().unwrap_or_default();
            let mut response = json_response(
                status,
                &json!({
                    "incidentId": incident.incident_id,
                    "created": submitted.created,
                    "cadSystem": incident.cad_system,
                    "cadIncidentId": incident.cad_incident_id,
                    "disposition": relay_proto::intake::Disposition::try_from(triage.disposition)
                        .unwrap_or_default()
                        .as_str_name(),
                    "routingState": relay_proto::intake::RoutingState::try_from(routing.state)
                        .unwrap_or_default()
                        .as_str_name(),
                    "teamId": routing.team_id,
                    "location": location,
                }),
            );
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            response
        }
        Err(error) => error_response(error),
    }
}

async fn dereference(
    State(intake): State<Arc<Intake>>,
    Path(incident_id): Path<String>,
) -> Response {
    match eido::get(&intake, &incident_id).await {
        Ok(document) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            document,
        )
            .into_response(),
        Err(error) => error_response(error),
    }
}
