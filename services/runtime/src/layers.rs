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

pub(crate) fn request_id_of(headers: &HeaderMap) -> String {
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

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
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
            // The caller's subject, recorded by the auth layer (never its credential).
            principal = tracing::field::Empty,
        );
        // A request without a valid traceparent starts a new trace.
        let _ = span.set_parent(parent);
        let trace_response = traceparent_of(&span);
        // What the audit trail names the call by (`00-<trace id>-<span id>-<flags>`).
        let trace_id = trace_response
            .as_deref()
            .and_then(|value| value.split('-').nth(1))
            .unwrap_or_default()
            .to_owned();
        request.extensions_mut().insert(crate::audit::CallIds {
            request_id: request_id.clone(),
            trace_id,
        });
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

/// Counts every call by service, method and gRPC code, times it, and counts calls in flight
/// (see [`crate::metrics`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsLayer;

impl<S> Layer<S> for MetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner }
    }
}

/// The service made by [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
}

struct Instruments {
    requests: opentelemetry::metrics::Counter<u64>,
    duration: opentelemetry::metrics::Histogram<f64>,
    in_flight: opentelemetry::metrics::UpDownCounter<i64>,
}

fn instruments() -> &'static Instruments {
    static INSTRUMENTS: std::sync::OnceLock<Instruments> = std::sync::OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = crate::metrics::meter();
        Instruments {
            requests: meter
                .u64_counter("relay_rpc_requests")
                .with_description("gRPC calls answered, by service, method and status code")
                .build(),
            duration: meter
                .f64_histogram("relay_rpc_duration")
                .with_unit("s")
                .with_description(
                    "Time from request to response headers (the whole call for unary RPCs)",
                )
                .with_boundaries(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .build(),
            in_flight: meter
                .i64_up_down_counter("relay_rpc_in_flight")
                .with_description("gRPC calls being handled, until their response starts")
                .build(),
        }
    })
}

/// `rpc_service` and `rpc_method` of a gRPC path; a path that is not one (a probe of a
/// random URL) is one bounded label value, not the path.
pub(crate) fn rpc_names(path: &str) -> (String, String) {
    match path.trim_start_matches('/').split_once('/') {
        Some((service, method))
            if !method.contains('/')
                && service.len() <= 100
                && method.len() <= 100
                && service
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
                && method
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
        {
            (service.to_owned(), method.to_owned())
        }
        _ => ("unknown".to_owned(), "unknown".to_owned()),
    }
}

/// A gRPC code as its canonical UPPER_SNAKE name (`INVALID_ARGUMENT`).
fn code_name(code: tonic::Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// Decrements the in-flight count when the call ends, however it ends (dropped included).
struct InFlight(Vec<opentelemetry::KeyValue>);

impl Drop for InFlight {
    fn drop(&mut self) {
        instruments().in_flight.add(-1, &self.0);
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RpcMetrics<S>
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
        let (service, method) = rpc_names(request.uri().path());
        let labels = vec![
            opentelemetry::KeyValue::new("rpc_service", service),
            opentelemetry::KeyValue::new("rpc_method", method),
        ];
        let started = std::time::Instant::now();
        instruments().in_flight.add(1, &labels);
        let guard = InFlight(labels);
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            let code = match &result {
                // A status made before or instead of a message travels in the headers; a
                // response with messages carries its status in trailers, and is OK when the
                // call is unary (a stream's later end is not counted here).
                Ok(response) => tonic::Status::from_header_map(response.headers())
                    .map_or(tonic::Code::Ok, |s| s.code()),
                Err(_) => tonic::Code::Unknown,
            };
            let instruments = instruments();
            instruments
                .duration
                .record(started.elapsed().as_secs_f64(), &guard.0);
            let mut labels = guard.0.clone();
            labels.push(opentelemetry::KeyValue::new("grpc_code", code_name(code)));
            instruments.requests.add(1, &labels);
            drop(guard);
            result
        })
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
