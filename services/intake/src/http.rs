//! Intake's HTTP/JSON port (`RELAY_HTTP_LISTEN`) for NENA EIDO: `POST /EIDO` submits an
//! incident as an EIDO, `GET /EIDO/{IncidentId}` (the dereference operation of NENA's EIDO
//! OpenAPI) returns one as an EIDO. They are the SubmitEido and GetEido RPCs: each route
//! calls the gRPC handler, so the port asks the same credential as the RPC (a bearer token
//! or a client certificate, with the RPC's scope), over the same TLS, under the same rate
//! limit ([`relay_runtime::security::http`]), and gets the same tenancy (a CAD-bound token
//! posts and reads only its CAD's incidents) and the same withholding of caller details.
//! Errors are JSON, shaped like the gRPC ones (code, reason, domain, message, and the field
//! violations naming JSON paths).

use std::sync::Arc;

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, State},
    http::{Extensions, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use relay_proto::intake::{
    GetEidoRequest, SubmitEidoRequest, intake_service_server::IntakeService,
};
use relay_runtime::{
    ApiError,
    security::http::{HttpSecurity, error_response},
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::{IntakeServiceHandler, eido};

/// The RPC whose credential, scope and rate limit `POST /EIDO` takes.
pub const SUBMIT_EIDO_RPC: &str = "/relay.intake.v1.IntakeService/SubmitEido";
/// The RPC whose credential, scope and rate limit `GET /EIDO/{IncidentId}` takes.
pub const GET_EIDO_RPC: &str = "/relay.intake.v1.IntakeService/GetEido";

/// The HTTP routes, over the gRPC handler, each behind its RPC's guard.
pub fn router(handler: Arc<IntakeServiceHandler>, security: &HttpSecurity) -> Router {
    Router::new()
        .route("/EIDO", security.guard(SUBMIT_EIDO_RPC, post(submit)))
        .route(
            "/EIDO/{incident_id}",
            security.guard(GET_EIDO_RPC, get(dereference)),
        )
        // A little over the EIDO limit, so that the handler answers with its own error.
        .layer(DefaultBodyLimit::max(eido::MAX_EIDO_BYTES + 1))
        .with_state(handler)
}

/// Serves the routes on `listener` until `token` is cancelled: over TLS unless the gRPC
/// listener is plaintext.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handler: Arc<IntakeServiceHandler>,
    security: HttpSecurity,
    token: CancellationToken,
) {
    let router = router(handler, &security);
    if let Err(error) = security.serve(listener, router, token).await {
        tracing::warn!(%error, "eido http endpoint stopped");
    }
}

/// A request to the gRPC handler, carrying what the guard put in the HTTP request's
/// extensions: the caller it established, the call's ids and its peer (for the audit trail).
fn call<T>(message: T, extensions: Extensions) -> tonic::Request<T> {
    let mut request = axum::http::Request::new(message);
    *request.extensions_mut() = extensions;
    tonic::Request::from_http(request)
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn submit(
    State(handler): State<Arc<IntakeServiceHandler>>,
    extensions: Extensions,
    body: Bytes,
) -> Response {
    let Ok(text) = std::str::from_utf8(&body) else {
        let error = ApiError::invalid("$", "the body must be UTF-8 JSON");
        return error_response(&error.into_status(crate::DOMAIN));
    };
    let request = SubmitEidoRequest {
        request_id: String::new(),
        eido_json: text.to_owned(),
    };
    let submitted = match handler.submit_eido(call(request, extensions)).await {
        Ok(response) => response.into_inner(),
        Err(status) => return error_response(&status),
    };
    let incident = submitted.incident.unwrap_or_default();
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

async fn dereference(
    State(handler): State<Arc<IntakeServiceHandler>>,
    extensions: Extensions,
    Path(incident_id): Path<String>,
) -> Response {
    let request = call(GetEidoRequest { incident_id }, extensions);
    match handler.get_eido(request).await {
        Ok(response) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            response.into_inner().eido_json,
        )
            .into_response(),
        Err(status) => error_response(&status),
    }
}
