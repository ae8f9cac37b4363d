//! The tower layer that runs [`Authenticator`] in front of every service of a server.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tonic::Status;
use tower::{Layer, Service};

use super::Authenticator;
use crate::security::limits::RateLimits;

/// The layer installing [`Authenticator`] in front of every service of a server.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
    limits: Option<Arc<RateLimits>>,
}

impl AuthLayer {
    /// A layer deciding calls with `authenticator`.
    #[must_use]
    pub fn new(authenticator: Arc<Authenticator>) -> Self {
        Self {
            authenticator,
            limits: None,
        }
    }

    /// The same, with the refusals of credentials limited per peer address by `limits`
    /// ([`RateLimits::limit_refusal`]); `None`: not limited.
    #[must_use]
    pub fn with_refusal_limits(self, limits: Option<Arc<RateLimits>>) -> Self {
        Self { limits, ..self }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            authenticator: Arc::clone(&self.authenticator),
            limits: self.limits.clone(),
        }
    }
}

/// The service made by [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
    limits: Option<Arc<RateLimits>>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Auth<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        if let Some(remote) = self.authenticator.wants_fresh_keys(request.headers())
            && !request.uri().path().starts_with("/grpc.health.v1.Health/")
        {
            // The token names a key the cached JWKS does not hold: the provider may have
            // rotated. Fetch again (rate-limited), then decide against the new set. The
            // ready inner service goes with the future; a clone stays for the next call.
            let authenticator = Arc::clone(&self.authenticator);
            let limits = self.limits.clone();
            let clone = self.inner.clone();
            let mut inner = std::mem::replace(&mut self.inner, clone);
            return Box::pin(async move {
                remote.refetch_for_unknown_kid().await;
                match decide(&authenticator, limits.as_deref(), &mut request) {
                    Ok(()) => inner.call(request).await,
                    Err(status) => Ok(status.into_http()),
                }
            });
        }
        match decide(&self.authenticator, self.limits.as_deref(), &mut request) {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

/// Authorizes `request`, putting its principal in its extensions, or logs the refusal.
fn decide<B>(
    authenticator: &Authenticator,
    limits: Option<&RateLimits>,
    request: &mut Request<B>,
) -> Result<(), Status> {
    let peer = crate::security::tls::peer_identity(request.extensions());
    let peer_ip = crate::security::limits::peer_ip(request.extensions());
    let principal = authenticator.admit(
        limits,
        request.uri().path(),
        request.headers(),
        peer.as_ref(),
        peer_ip,
    )?;
    if let Some(principal) = principal {
        request.extensions_mut().insert(principal);
    }
    Ok(())
}
