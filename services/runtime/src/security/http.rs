//! The security boundary of an HTTP/JSON port (intake's EIDO port): the same as the gRPC
//! listener's, shared with it rather than built again.
//!
//! - **TLS** with the gRPC listener's certificate, key and client CA, reloaded with them
//!   (one [`ServerTls`]), offering `http/1.1`; plaintext only when the gRPC listener is
//!   (`security.insecure_plaintext`, development).
//! - **Who is calling**: each route borrows the credential check of one RPC (its path), so
//!   it takes the same bearer token or client certificate, and requires the same scope,
//!   declared once in the proto (`POST /EIDO` is `SubmitEido`'s `incidents.submit`).
//! - **Rate limits**: the same per-principal buckets as gRPC calls (a caller has one budget
//!   across both ports), and the same limit on refused credentials per peer address.
//! - **Refusals** are JSON, shaped like intake's other HTTP errors (`code`, `reason`,
//!   `domain`, `message`, `fieldViolations`): 401 for `CREDENTIALS_MISSING` and
//!   `CREDENTIALS_INVALID` (with `WWW-Authenticate: Bearer`), 403 for `SCOPE_MISSING` and
//!   the tenancy reasons, 429 for `RATE_LIMITED` and 503 for `KEYS_UNAVAILABLE`, both with
//!   `Retry-After` (whole seconds, rounded up).
//!
//! The handler behind a guarded route finds the caller's [`super::auth::Principal`] in the
//! request's extensions, as a gRPC handler does.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    body::Body,
    extract::{ConnectInfo, Request, State, connect_info::Connected},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::MethodRouter,
    serve::{IncomingStream, Listener},
};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use crate::audit::{CallIds, layer::AuditLayer};
use tonic_types::StatusExt;

use tonic::transport::server::TcpConnectInfo;

use super::{
    auth::Authenticator,
    limits::RateLimits,
    tls::{Alpn, PeerIdentity, ServerTls, identity_of},
};

/// The security of a server's HTTP port, taken from its bound gRPC server
/// ([`crate::server::BoundServer::http_security`]).
#[derive(Debug, Clone)]
pub struct HttpSecurity {
    tls: Option<Arc<ServerTls>>,
    authenticator: Arc<Authenticator>,
    limits: Option<Arc<RateLimits>>,
    audit: AuditLayer,
}

/// Who is at the other end of an HTTP connection: its address, and its client
/// certificate's identity when it presented one.
#[derive(Debug, Clone)]
pub struct HttpPeer {
    /// The peer's address.
    pub addr: SocketAddr,
    /// A client certificate's identity (a SPIFFE URI SAN, else the subject CN).
    pub identity: Option<PeerIdentity>,
}

impl Connected<IncomingStream<'_, TcpListener>> for HttpPeer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Self {
            addr: *stream.remote_addr(),
            identity: None,
        }
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for HttpPeer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        let identity = stream
            .io()
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|cert| identity_of(cert.as_ref()))
            .map(PeerIdentity);
        Self {
            addr: *stream.remote_addr(),
            identity,
        }
    }
}

/// TLS connections accepted by [`ServerTls::incoming_with_alpn`], as an axum listener.
pub struct TlsListener {
    incoming: ReceiverStream<std::io::Result<TlsStream<TcpStream>>>,
    local: SocketAddr,
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.incoming.next().await {
                Some(Ok(stream)) => {
                    // A connection whose address is gone has closed already: skip it.
                    if let Ok(addr) = stream.get_ref().0.peer_addr() {
                        return (stream, addr);
                    }
                }
                Some(Err(_)) => {}
                // The accept loop stopped (shutdown): no more connections.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The route's guard: the security and the RPC whose credential check it borrows.
#[derive(Clone)]
struct Guard {
    security: HttpSecurity,
    rpc_path: &'static str,
}

impl HttpSecurity {
    /// The security of a server whose gRPC listener has `tls` (`None`: plaintext),
    /// `authenticator`, `limits` and audit trail (`audit`: refusals and failed writes are
    /// recorded there, as the gRPC layer records them).
    #[must_use]
    pub fn new(
        tls: Option<Arc<ServerTls>>,
        authenticator: Arc<Authenticator>,
        limits: Option<Arc<RateLimits>>,
        audit: AuditLayer,
    ) -> Self {
        Self {
            tls,
            authenticator,
            limits,
            audit,
        }
    }

    /// Whether the port serves TLS.
    #[must_use]
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// `route` behind the credential check, scope and rate limit of the RPC at `rpc_path`
    /// (`/relay.intake.v1.IntakeService/SubmitEido`).
    pub fn guard<S>(&self, rpc_path: &'static str, route: MethodRouter<S>) -> MethodRouter<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let guard = Guard {
            security: self.clone(),
            rpc_path,
        };
        route.route_layer(axum::middleware::from_fn_with_state(guard, check))
    }

    /// Serves `router` on `listener`, over TLS unless the gRPC listener is plaintext, until
    /// `token` is cancelled.
    ///
    /// # Errors
    /// When the server fails.
    pub async fn serve(
        self,
        listener: TcpListener,
        router: Router,
        token: CancellationToken,
    ) -> std::io::Result<()> {
        let app = router.into_make_service_with_connect_info::<HttpPeer>();
        let shutdown = token.clone().cancelled_owned();
        match self.tls {
            Some(tls) => {
                let local = listener.local_addr()?;
                let incoming = tls.incoming_with_alpn(listener, token, Alpn::Http1);
                let listener = TlsListener { incoming, local };
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
            None => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
        }
    }
}

/// The guard of one route: the principal in the request's extensions, or the refusal.
async fn check(State(guard): State<Guard>, mut request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<HttpPeer>>()
        .map(|info| info.0.clone());
    let security = &guard.security;
    if let Some(remote) = security.authenticator.wants_fresh_keys(request.headers()) {
        // A token naming a key the cached JWKS lacks: fetch again (rate-limited), as the
        // gRPC layer does.
        remote.refetch_for_unknown_kid().await;
    }
    // What the audit trail names the call by, as the gRPC layers put them in a call's
    // extensions: its ids and its peer's address.
    let ids = call_ids(request.headers());
    request.extensions_mut().insert(ids.clone());
    if let Some(peer) = &peer {
        request.extensions_mut().insert(TcpConnectInfo {
            local_addr: None,
            remote_addr: Some(peer.addr),
        });
    }
    let limits = security.limits.as_deref();
    let peer_ip = peer.as_ref().map(|peer| peer.addr.ip());
    let admitted = security
        .authenticator
        .admit(
            limits,
            guard.rpc_path,
            request.headers(),
            peer.as_ref().and_then(|peer| peer.identity.as_ref()),
            peer_ip,
        )
        .and_then(|principal| {
            if let Some(limits) = limits {
                limits.admit(guard.rpc_path, principal.as_ref(), peer_ip)?;
            }
            Ok(principal)
        });
    let (extensions, headers) = (request.extensions().clone(), request.headers().clone());
    let mut response = match admitted {
        Ok(principal) => {
            if let Some(principal) = principal {
                request.extensions_mut().insert(principal);
            }
            next.run(request).await
        }
        Err(status) => error_response(&status),
    };
    if let Some(Answered(status)) = response.extensions().get::<Answered>() {
        security
            .audit
            .record_answer(guard.rpc_path, &extensions, &headers, status);
    }
    if let Ok(value) = HeaderValue::try_from(ids.request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// The ids of an HTTP call: its `x-request-id` (or a new one) and the trace id of its W3C
/// `traceparent`, when it sent a valid one.
fn call_ids(headers: &http::HeaderMap) -> CallIds {
    let trace_id = headers
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split('-').nth(1))
        .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_default()
        .to_owned();
    CallIds {
        request_id: crate::layers::request_id_of(headers),
        trace_id,
    }
}

/// The gRPC status an error response stands for, kept in the response's extensions for the
/// audit trail.
#[derive(Debug, Clone)]
struct Answered(Status);

/// The HTTP status of a gRPC code.
#[must_use]
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A refused call as a JSON error, from its `Status`: `{"error": {"code", "reason",
/// "domain", "message", "fieldViolations"}}`, the reason and domain from its
/// `google.rpc.ErrorInfo`, the violations from its `google.rpc.BadRequest`; `Retry-After`
/// from its `google.rpc.RetryInfo` (or 1 s for UNAVAILABLE), and `WWW-Authenticate` on 401.
#[must_use]
pub fn error_response(status: &Status) -> Response {
    let details = status.get_error_details();
    let (reason, domain) = details
        .error_info()
        .map(|info| (info.reason.clone(), info.domain.clone()))
        .unwrap_or_default();
    let violations: Vec<_> = details
        .bad_request()
        .map(|bad| {
            bad.field_violations
                .iter()
                .map(|v| json!({"field": v.field, "description": v.description}))
                .collect()
        })
        .unwrap_or_default();
    let body = json!({"error": {
        "code": format!("{:?}", status.code()),
        "reason": reason,
        "domain": domain,
        "message": status.message(),
        "fieldViolations": violations,
    }});
    let mut response = (
        http_status(status.code()),
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(body.to_string()),
    )
        .into_response();
    let retry = details
        .retry_info()
        .and_then(|info| info.retry_delay)
        .map(|delay| delay.as_millis().div_ceil(1_000).max(1))
        .or((status.code() == Code::Unavailable).then_some(1));
    let headers = response.headers_mut();
    if let Some(seconds) = retry
        && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
    {
        headers.insert(header::RETRY_AFTER, value);
    }
    if status.code() == Code::Unauthenticated {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response.extensions_mut().insert(Answered(status.clone()));
    response
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic_types::ErrorDetails;

    use super::*;

    #[test]
    fn refusals_become_json_with_their_http_status_and_headers() {
        let status = super::super::limits::refusal(
            "relay.intake.v1",
            super::super::limits::Class::Principal,
            Duration::from_millis(1_200),
        );
        let response = error_response(&status);
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            response.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from_static("2"))
        );
        let mut details = ErrorDetails::new();
        details.set_error_info("CREDENTIALS_MISSING", "relay.intake.v1", []);
        let status = Status::with_error_details(Code::Unauthenticated, "no", details);
        let response = error_response(&status);
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
        assert!(!response.headers().contains_key(header::RETRY_AFTER));
    }
}
