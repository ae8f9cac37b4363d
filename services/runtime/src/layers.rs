//! The tower layer every gRPC request passes through: it gives the request an id, continues the
//! caller's W3C trace, and opens the request span the handler runs in.
//!
//! - `x-request-id`: taken from the request when it is a sane value (at most 128 visible ASCII
//!   characters), otherwise a new UUID; echoed on the response and recorded on the span.
//! - `traceparent`/`tracestate`: extracted with the global propagator and made the parent of the
//!   request span, so the server's spans join the caller's trace.
//! - `traceresponse`: the server span's context, in `traceparent` format (W3C Trace Context
//!   Level 2), so a caller can find the server side of its call.
//! - Codec errors are the caller's: tonic answers a request it cannot decode (bad varint,
//!   invalid UTF-8, wrong wire type, nesting too deep) with INTERNAL and one over the size
//!   limit with OUT_OF_RANGE. This layer, the one place every RPC passes, turns them into
//!   INVALID_ARGUMENT (reason `UNDECODABLE_REQUEST`, a `BadRequest` naming the request body)
//!   and RESOURCE_EXHAUSTED (reason `REQUEST_TOO_LARGE`), as the gRPC status code guide says.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use opentelemetry::{
    global,
    propagation::{Extractor, Injector},
    trace::TraceContextExt,
};
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The request id header.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The W3C trace response header.
pub const TRACE_RESPONSE: HeaderName = HeaderName::from_static("traceresponse");

/// Reads W3C headers from an `http::HeaderMap`.
pub struct HeaderExtractor<'a>(pub &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Writes W3C headers into an `http::HeaderMap`.
pub struct HeaderInjector<'a>(pub &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(key), HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
    }
}

/// The `traceparent` form of the current span's context, when it has one.
#[must_use]
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_ref = context.span();
    let span_context = span_ref.span_context();
    span_context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        )
    })
}

/// Adds request ids, trace context and the request span. See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestContextLayer;

impl<S> Layer<S> for RequestContextLayer {
    type Service = RequestContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestContext { inner }
    }
}

/// The service made by [`RequestContextLayer`].
#[derive(Debug, Clone)]
pub struct RequestContext<S> {
    inner: S,
}

fn request_id_of(headers: &HeaderMap) -> String {
    headers
        .get(&REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|value| {
            !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic())
        })
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestContext<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let request_id = request_id_of(request.headers());
        let path = request.uri().path().to_owned();
        let parent = global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(request.headers()))
        });
        let span = tracing::info_span!(
            "grpc request",
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.method = %request.uri().path(),
            request_id = %request_id,
        );
        // A request without a valid traceparent starts a new trace.
        let _ = span.set_parent(parent);
        let trace_response = traceparent_of(&span);
        let future = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let mut response = future.await?;
                let headers = response.headers_mut();
                remap_codec_error(&path, headers);
                if let Ok(value) = HeaderValue::try_from(request_id) {
                    headers.insert(REQUEST_ID, value);
                }
                if let Some(value) = trace_response.and_then(|v| HeaderValue::try_from(v).ok()) {
                    headers.insert(TRACE_RESPONSE, value);
                }
                tracing::debug!("request answered");
                Ok(response)
            }
            .instrument(span),
        )
    }
}

/// The proto package of a gRPC path (`/relay.intake.v1.IntakeService/SubmitIncident` gives
/// `relay.intake.v1`), the `domain` of the errors the service sends.
fn domain_of(path: &str) -> String {
    let service = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    service
        .rsplit_once('.')
        .map_or(service, |(package, _)| package)
        .to_owned()
}

/// See the module docs. A trailers-only response carries its status in the headers, which is
/// where tonic puts a status it made before the handler ran.
fn remap_codec_error(path: &str, headers: &mut HeaderMap) {
    let Some(status) = tonic::Status::from_header_map(headers) else {
        return;
    };
    let message = status.message();
    let (code, reason, text) = match status.code() {
        tonic::Code::Internal if message.starts_with("failed to decode Protobuf message") => (
            tonic::Code::InvalidArgument,
            "UNDECODABLE_REQUEST",
            format!("the request is not a valid protobuf message of its type: {message}"),
        ),
        tonic::Code::OutOfRange
            if message.starts_with("Error, decoded message length too large") =>
        {
            (
                tonic::Code::ResourceExhausted,
                "REQUEST_TOO_LARGE",
                format!("the request is larger than the server accepts: {message}"),
            )
        }
        _ => return,
    };
    let mut details = tonic_types::ErrorDetails::new();
    if code == tonic::Code::InvalidArgument {
        details.add_bad_request_violation("request", text.clone());
    }
    details.set_error_info(
        reason,
        domain_of(path),
        std::collections::HashMap::<String, String>::new(),
    );
    let remapped =
        <tonic::Status as tonic_types::StatusExt>::with_error_details(code, text, details);
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        headers.remove(name);
    }
    if remapped.add_header(headers).is_err() {
        tracing::warn!("could not write a remapped codec error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_when_sane_and_made_otherwise() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_static("cad-42"));
        assert_eq!(request_id_of(&headers), "cad-42");
        headers.insert(REQUEST_ID, HeaderValue::from_static("has space"));
        let made = request_id_of(&headers);
        assert_ne!(made, "has space");
        assert!(uuid::Uuid::parse_str(&made).is_ok());
        assert!(uuid::Uuid::parse_str(&request_id_of(&HeaderMap::new())).is_ok());
    }
}
