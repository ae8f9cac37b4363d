//! Channels from one Relay service to another (or from a tool to Relay): a deadline on every
//! call, and the caller's trace context in `traceparent` so the callee joins the trace.
//!
//! ```text
//! let channel = relay_runtime::client::channel(&settings.routing_endpoint, Duration::from_secs(5))?;
//! let client = RoutingServiceClient::with_interceptor(channel, TracePropagation);
//! ```

use std::time::Duration;

use opentelemetry::global;
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{BoxError, config::Config, layers::HeaderInjector};

/// How long connecting may take before a call fails with `UNAVAILABLE`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A lazily connected channel to `endpoint` (`http://host:port`) whose calls time out after
/// `timeout` unless the request sets a shorter deadline.
///
/// # Errors
/// When `endpoint` is not a valid URI.
pub fn channel(endpoint: &str, timeout: Duration) -> Result<Channel, tonic::transport::Error> {
    Ok(lazy(Endpoint::from_shared(endpoint.to_owned())?, timeout))
}

/// The deadlines and keep-alives every Relay channel has, connected lazily.
fn lazy(endpoint: Endpoint, timeout: Duration) -> Channel {
    endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_lazy()
}

/// As [`channel`], for a Relay service calling another: over TLS, trusting
/// `security.tls_ca` and presenting the service's own client certificate
/// (`security.tls_client_cert`, whose identity the callee maps to scopes), when `tls_ca` is
/// set; plaintext otherwise (a development setup). An `http://` endpoint is called as
/// `https://` when TLS is on, so the operator's endpoint variables need not change.
///
/// # Errors
/// When `endpoint` is not a valid URI or a TLS file cannot be read.
pub fn channel_for(
    config: &Config,
    endpoint: &str,
    timeout: Duration,
) -> Result<Channel, BoxError> {
    let Some(tls) = crate::security::tls::client_tls(&config.settings.security)? else {
        return Ok(channel(endpoint, timeout)?);
    };
    let endpoint = match endpoint.strip_prefix("http://") {
        Some(rest) => format!("https://{rest}"),
        None => endpoint.to_owned(),
    };
    Ok(lazy(
        Endpoint::from_shared(endpoint)?.tls_config(tls)?,
        timeout,
    ))
}

/// An interceptor that writes the current span's trace context into each outgoing request.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracePropagation;

impl Interceptor for TracePropagation {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let context = tracing::Span::current().context();
        let mut headers = std::mem::take(request.metadata_mut()).into_headers();
        global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut HeaderInjector(&mut headers));
        });
        *request.metadata_mut() = tonic::metadata::MetadataMap::from_headers(headers);
        Ok(request)
    }
}

/// How a tool or an integrator's client proves who it is to Relay: TLS trusting a CA, and a
/// bearer token on every call (`relay simulate`, the benchmarks).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    ca_pem: Option<Vec<u8>>,
    authorization: Option<MetadataValue<Ascii>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Credentials")
            .field("tls", &self.ca_pem.is_some())
            .field("token", &self.authorization.is_some())
            .finish()
    }
}

impl Credentials {
    /// TLS trusting `ca_pem` (PEM) when given, and `token` as `authorization: Bearer` when
    /// given.
    ///
    /// # Errors
    /// When the token cannot be a header value.
    pub fn new(ca_pem: Option<Vec<u8>>, token: Option<String>) -> Result<Self, String> {
        let authorization = match token.as_deref().map(str::trim) {
            Some(token) if !token.is_empty() => Some(
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| String::from("the token is not a header value (RELAY_TOKEN)"))?,
            ),
            _ => None,
        };
        Ok(Self {
            ca_pem,
            authorization,
        })
    }

    /// `endpoint` as these credentials call it: an `http://` endpoint becomes `https://`
    /// when TLS is on, so the default endpoints need not change.
    #[must_use]
    pub fn uri(&self, endpoint: &str) -> String {
        match (&self.ca_pem, endpoint.strip_prefix("http://")) {
            (Some(_), Some(rest)) => format!("https://{rest}"),
            _ => endpoint.to_owned(),
        }
    }

    /// The TLS configuration, when TLS is on.
    #[must_use]
    pub fn tls(&self) -> Option<ClientTlsConfig> {
        self.ca_pem
            .as_ref()
            .map(|ca| ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
    }

    /// `channel` with the token added to every call.
    #[must_use]
    pub fn intercept(&self, channel: Channel) -> AuthChannel {
        InterceptedService::new(channel, Bearer(self.authorization.clone()))
    }
}

/// Adds the bearer token to every call.
#[derive(Clone, Debug)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel that carries [`Credentials`].
pub type AuthChannel = InterceptedService<Channel, Bearer>;
