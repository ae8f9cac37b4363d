//! Per-principal rate limits: one tower layer, after authentication, so the caller is known.
//!
//! Each caller has a token bucket (GCRA, from the `governor` crate): `requests_per_second`
//! refill it and `burst` is its size. A caller is keyed by who it is: a token's `sub`, a
//! client certificate's identity; a call without a principal (authentication off in a
//! development setup) by its peer's IP address (an IPv6 address by its /64, what one host
//! usually holds). Service identities (client certificates, and the token subjects listed in
//! `service_subjects`) get a higher class of their own: intake calling routing carries every
//! CAD's calls. Health is never limited (probes).
//!
//! A refused call gets RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo` whose `retry_delay`
//! is when the caller's next request will be let through, and a `google.rpc.ErrorInfo` with
//! reason `RATE_LIMITED` (metadata `class`), and is counted in `relay_rate_limited_total`.
//!
//! Refused credentials have a limit of their own, keyed by peer address (there is no
//! principal to key by): past `refusals_burst` UNAUTHENTICATED answers to one address, at
//! `refusals_per_second` sustained, its further refusals become RESOURCE_EXHAUSTED
//! (`RATE_LIMITED`, metadata `class` = `refused`) with the `retry_delay` until its next
//! credential is looked at. A flood of bad or expired tokens thus gets told to back off,
//! and its log lines and refusals stay bounded; calls with a valid credential from the same
//! address are not affected.
//!
//! The defaults are far above what a CAD integration or a responder's device sends (a CAD
//! submits a few calls a minute and reads and watches a few more; a device reports its
//! position every few seconds): the limit is there against a runaway client or a leaked
//! token, not to shape normal load. Keyed state is pruned: every few seconds, the buckets
//! that are full again (indistinguishable from a new one) are dropped, and at once when
//! more than `max_tracked` keys are held, so memory follows the callers active in the last
//! seconds, not every caller ever seen.

use std::{
    net::IpAddr,
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    middleware::NoOpMiddleware,
    state::keyed::DefaultKeyedStateStore,
};
use http::{Request, Response};
use serde::Deserialize;
use tonic::{
    Code, Status,
    transport::server::{TcpConnectInfo, TlsConnectInfo},
};
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

use super::auth::{CredentialKind, Principal};
use crate::config::ConfigError;

/// Reason of a refused call: the caller sent more than its rate allows.
pub const RATE_LIMITED: &str = "RATE_LIMITED";

/// The `class` metadata (and metric label) of a refusal of credentials over its limit.
pub const REFUSED_CLASS: &str = "refused";

/// How often the keyed state is pruned by [`RateLimits::prune_task`].
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(10);

/// The `[security.limits]` block (`RELAY_SECURITY__LIMITS__*`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Whether calls are limited at all. Unset: on, except in a development setup that asks
    /// no credential (there is no principal to key by, and every caller is this machine).
    pub enabled: Option<bool>,
    /// Sustained requests per second of one principal.
    pub requests_per_second: u32,
    /// How many requests one principal may send at once above that rate.
    pub burst: u32,
    /// Sustained requests per second of a service identity.
    pub service_requests_per_second: u32,
    /// The burst of a service identity.
    pub service_burst: u32,
    /// Token subjects (`sub`) that get the service class, as client certificates do.
    pub service_subjects: Vec<String>,
    /// Above this many keys held, the idle ones are pruned at once rather than on the next
    /// periodic pass.
    pub max_tracked: usize,
    /// Sustained refused credentials (UNAUTHENTICATED) per second from one peer address,
    /// before its further refusals become RESOURCE_EXHAUSTED (`RATE_LIMITED`, class
    /// `refused`): a flood of bad or expired tokens gets told to back off.
    pub refusals_per_second: u32,
    /// How many refusals one peer address may collect at once above that rate.
    pub refusals_burst: u32,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            enabled: None,
            requests_per_second: 500,
            burst: 1_000,
            service_requests_per_second: 5_000,
            service_burst: 10_000,
            service_subjects: Vec::new(),
            max_tracked: 100_000,
            refusals_per_second: 5,
            refusals_burst: 50,
        }
    }
}

impl LimitSettings {
    /// Whether the limits apply, given whether authentication is off (`no_auth`).
    #[must_use]
    pub fn active(&self, no_auth: bool) -> bool {
        self.enabled.unwrap_or(!no_auth)
    }

    /// Checks the numbers.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key that is zero.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("requests_per_second", self.requests_per_second),
            ("burst", self.burst),
            (
                "service_requests_per_second",
                self.service_requests_per_second,
            ),
            ("service_burst", self.service_burst),
            ("refusals_per_second", self.refusals_per_second),
            ("refusals_burst", self.refusals_burst),
        ] {
            if value == 0 {
                return Err(ConfigError::new(format!(
                    "invalid value for `security.limits.{key}` (RELAY_SECURITY__LIMITS__{}): \
                     must be at least 1; to turn the limits off set \
                     `security.limits.enabled = false`",
                    key.to_uppercase()
                )));
            }
        }
        Ok(())
    }
}

/// The class a caller's limit comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A CAD integration, a dispatcher, a device, an analyst: `requests_per_second`.
    Principal,
    /// Another Relay service (or a listed subject): `service_requests_per_second`.
    Service,
    /// Refused credentials from one peer address: `refusals_per_second`.
    Refused,
}

impl Class {
    fn name(self) -> &'static str {
        match self {
            Self::Principal => "principal",
            Self::Service => "service",
            Self::Refused => REFUSED_CLASS,
        }
    }
}

type Keyed<C> =
    RateLimiter<String, DefaultKeyedStateStore<String>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The limiters of one server: one keyed bucket set per class.
pub struct RateLimits<C: Clock = DefaultClock> {
    principals: Keyed<C>,
    services: Keyed<C>,
    refused: Keyed<C>,
    clock: C,
    service_subjects: Vec<String>,
    max_tracked: usize,
    /// When an inline prune last ran, in milliseconds since `started`.
    last_prune: AtomicU64,
    started: std::time::Instant,
}

impl<C: Clock + Clone> std::fmt::Debug for RateLimits<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("tracked", &self.tracked())
            .finish_non_exhaustive()
    }
}

fn quota(per_second: u32, burst: u32) -> Quota {
    let per_second = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(per_second).allow_burst(burst)
}

impl RateLimits<DefaultClock> {
    /// The limiters of `settings` on the monotonic clock.
    #[must_use]
    pub fn new(settings: &LimitSettings) -> Self {
        Self::with_clock(settings, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimits<C> {
    /// The limiters of `settings` on `clock` (a fake one in tests).
    #[must_use]
    pub fn with_clock(settings: &LimitSettings, clock: C) -> Self {
        Self {
            principals: RateLimiter::dashmap_with_clock(
                quota(settings.requests_per_second, settings.burst),
                clock.clone(),
            ),
            services: RateLimiter::dashmap_with_clock(
                quota(settings.service_requests_per_second, settings.service_burst),
                clock.clone(),
            ),
            refused: RateLimiter::dashmap_with_clock(
                quota(settings.refusals_per_second, settings.refusals_burst),
                clock.clone(),
            ),
            clock,
            service_subjects: settings.service_subjects.clone(),
            max_tracked: settings.max_tracked.max(1),
            last_prune: AtomicU64::new(0),
            started: std::time::Instant::now(),
        }
    }

    /// The key and class of a caller: its principal, else its peer's address.
    #[must_use]
    pub fn key_of(&self, principal: Option<&Principal>, peer: Option<IpAddr>) -> (String, Class) {
        match principal {
            Some(principal) if principal.kind == CredentialKind::Certificate => {
                (format!("cert:{}", principal.subject), Class::Service)
            }
            Some(principal) if principal.kind == CredentialKind::Token => {
                let class = if self.service_subjects.contains(&principal.subject) {
                    Class::Service
                } else {
                    Class::Principal
                };
                (format!("sub:{}", principal.subject), class)
            }
            // No credential checked: who is calling is only where it calls from.
            _ => (peer_key(peer), Class::Principal),
        }
    }

    /// Takes one request from `key`'s bucket: `Ok`, or how long until the next request
    /// would be let through.
    ///
    /// # Errors
    /// The wait, when the bucket is empty.
    pub fn check(&self, key: &str, class: Class) -> Result<(), Duration> {
        let limiter = match class {
            Class::Principal => &self.principals,
            Class::Service => &self.services,
            Class::Refused => &self.refused,
        };
        if limiter.len() > self.max_tracked {
            self.prune_now();
        }
        limiter
            .check_key(&key.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// How many keys are held.
    #[must_use]
    pub fn tracked(&self) -> usize {
        self.principals.len() + self.services.len() + self.refused.len()
    }

    /// Decides a call to `path` by `principal` (from the auth layer) from `peer`: `Ok`, or
    /// RESOURCE_EXHAUSTED when its bucket is empty (counted and logged). Health always
    /// passes. What the gRPC layer and intake's HTTP port both run.
    ///
    /// # Errors
    /// The refusal the caller gets.
    pub fn admit(
        &self,
        path: &str,
        principal: Option<&Principal>,
        peer: Option<IpAddr>,
    ) -> Result<(), Status> {
        if path.starts_with("/grpc.health.v1.Health/") {
            return Ok(());
        }
        let (key, class) = self.key_of(principal, peer);
        self.check(&key, class)
            .map_err(|wait| refused_over_limit(path, class, wait))
    }

    /// What a caller from `peer` gets for a call to `path` that authentication refused with
    /// `refusal`: that refusal, or, once the peer's refusals exceed `refusals_per_second`
    /// and `refusals_burst`, RESOURCE_EXHAUSTED (`RATE_LIMITED`, class `refused`) with the
    /// wait until its next credential will be looked at. Only UNAUTHENTICATED refusals (a
    /// missing or invalid credential, the only ones without a principal to key by) count.
    #[must_use]
    pub fn limit_refusal(&self, path: &str, peer: Option<IpAddr>, refusal: Status) -> Status {
        if refusal.code() != Code::Unauthenticated {
            return refusal;
        }
        match self.check(&peer_key(peer), Class::Refused) {
            Ok(()) => refusal,
            Err(wait) => refused_over_limit(path, Class::Refused, wait),
        }
    }

    /// Drops the buckets that are full again (a caller idle long enough to have its whole
    /// burst back), at most once a second when called on the request path.
    fn prune_now(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_prune.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 1_000 && last != 0 {
            return;
        }
        if self
            .last_prune
            .compare_exchange(last, now.max(1), Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.prune();
        }
    }

    /// Drops the buckets that are full again.
    pub fn prune(&self) {
        for limiter in [&self.principals, &self.services, &self.refused] {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

impl<C: Clock + Clone + Send + Sync + 'static> RateLimits<C> {
    /// Prunes the keyed state every [`PRUNE_INTERVAL`] until `token` is cancelled.
    pub async fn prune_task(self: Arc<Self>, token: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(PRUNE_INTERVAL) => self.prune(),
            }
        }
    }
}

/// The key of a caller known only by its address.
fn peer_key(peer: Option<IpAddr>) -> String {
    peer.map_or_else(
        || String::from("ip:unknown"),
        |ip| format!("ip:{}", host_of(ip)),
    )
}

/// The part of an address that identifies a host: an IPv4 address whole, an IPv6 address by
/// its /64 (one host often holds a whole /64, so keying by the full address would let it
/// make fresh buckets at will).
fn host_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// The refusal of a call over its limit: RESOURCE_EXHAUSTED with RetryInfo and ErrorInfo.
#[must_use]
pub fn refusal(domain: &str, class: Class, wait: Duration) -> Status {
    // At least a millisecond, rounded up: a retry sooner than `retry_delay` is refused again.
    let millis = wait.as_nanos().div_ceil(1_000_000).max(1);
    let delay = Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX));
    let mut details = ErrorDetails::new();
    details.set_retry_info(Some(delay));
    details.set_error_info(
        RATE_LIMITED,
        domain,
        [(String::from("class"), class.name().to_owned())],
    );
    Status::with_error_details(
        Code::ResourceExhausted,
        format!(
            "this caller sends more requests than its rate limit allows; retry in {} ms",
            delay.as_millis()
        ),
        details,
    )
}

fn refusals() -> &'static opentelemetry::metrics::Counter<u64> {
    static COUNTER: std::sync::OnceLock<opentelemetry::metrics::Counter<u64>> =
        std::sync::OnceLock::new();
    COUNTER.get_or_init(|| {
        crate::metrics::meter()
            .u64_counter("relay_rate_limited")
            .with_description(
                "Calls refused with RESOURCE_EXHAUSTED by the per-principal rate limit",
            )
            .build()
    })
}

/// A call over its limit: counted, logged, and answered RESOURCE_EXHAUSTED.
fn refused_over_limit(path: &str, class: Class, wait: Duration) -> Status {
    let (service, method) = crate::layers::rpc_names(path);
    refusals().add(
        1,
        &[
            opentelemetry::KeyValue::new("rpc_service", service),
            opentelemetry::KeyValue::new("rpc_method", method),
            opentelemetry::KeyValue::new("class", class.name()),
        ],
    );
    tracing::info!(
        reason = RATE_LIMITED,
        class = class.name(),
        retry_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        "call refused"
    );
    refusal(super::auth::package_of(path), class, wait)
}

/// The address of a gRPC call's peer, from the connection's info.
pub(crate) fn peer_ip(extensions: &http::Extensions) -> Option<IpAddr> {
    extensions
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.get_ref().remote_addr())
        .or_else(|| {
            extensions
                .get::<TcpConnectInfo>()
                .and_then(TcpConnectInfo::remote_addr)
        })
        .map(|addr| addr.ip())
}

/// The layer installing [`RateLimits`] after the auth layer.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    limits: Option<Arc<RateLimits>>,
}

impl RateLimitLayer {
    /// A layer checking calls against `limits`; `None`: every call passes.
    #[must_use]
    pub fn new(limits: Option<Arc<RateLimits>>) -> Self {
        Self { limits }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limits: self.limits.clone(),
        }
    }
}

/// The service made by [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    limits: Option<Arc<RateLimits>>,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if let Some(limits) = &self.limits
            && let Err(status) = limits.admit(
                request.uri().path(),
                request.extensions().get::<Principal>(),
                peer_ip(request.extensions()),
            )
        {
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        Box::pin(self.inner.call(request))
    }
}

/// The limiter a server runs with, from its settings; `None` when the limits are off.
#[must_use]
pub fn from_settings(settings: &LimitSettings, no_auth: bool) -> Option<Arc<RateLimits>> {
    settings
        .active(no_auth)
        .then(|| Arc::new(RateLimits::new(settings)))
}

#[cfg(test)]
mod tests;
