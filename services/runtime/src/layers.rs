//! The tower layer every gRPC request passes through: it gives the request an id, continues the
//! caller's W3C trace, and opens the request span the handler runs in.
//!
//! - `x-request-id`: taken from the request when it is a sane value (at most 128 visible ASCII
//!   characters), otherwise a new UUID; echoed on the response and recorded on the span.
//! - `traceparent`/`tracestate`: extracted with the global propagator and made the parent of the
//!   request span, so the server's spans join the caller's trace.
//! - `traceresponse`: the server span's context, in `traceparent` format (W3C Trace Context
//!   Level 2), so a caller can find the server side of its call.

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
