//! A JWKS fetched from a URL (an OIDC provider's `jwks_uri`) and cached with rotation.
//!
//! - **At start** the set is fetched once before the listener serves; if that fails the
//!   service starts anyway, health stays NOT_SERVING (the `jwks` readiness check) and a
//!   bearer token is answered UNAVAILABLE (reason `KEYS_UNAVAILABLE`: retry, the credential
//!   may be fine) until a fetch succeeds. Fetching is retried with a backoff from 1 s up to
//!   the refresh interval. An identity provider that is down when a pod starts so keeps the
//!   pod out of its Service instead of restarting it in a loop.
//! - **Periodically** (`auth_jwks_refresh_seconds`, 5 minutes by default) the set is fetched
//!   again, so a key the provider retires stops verifying tokens within that time.
//! - **On a token whose `kid` the set does not hold** (the provider rotated to a new key),
//!   the set is fetched again at once, then the token is checked against the new set; such
//!   fetches happen at most once per `auth_jwks_refetch_min_seconds` (30 s), so a stream of
//!   made-up `kid`s cannot make the service hammer its provider.
//! - **A fetch that fails** (unreachable, not 200, not a JWK set, no usable key) keeps the last
//!   good set, with a warning; only a successful fetch replaces it.
//!
//! The client is HTTP/1.1 (hyper) over TLS (rustls) trusting `auth_jwks_ca` when set, else
//! the system's roots; plain `http://` only in a development setup. Redirects are not
//! followed: configure the final URL. Keys the service cannot verify with (encryption keys,
//! shared secrets, unknown algorithms) are skipped, as providers publish such keys beside the
//! signing ones.

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use http::Uri;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::JwkSet;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::{SecuritySettings, auth::JwtVerifier};

/// The largest JWKS document accepted.
const MAX_BYTES: usize = 1 << 20;
/// How long one fetch may take, connection and TLS included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the set comes from, checked at start.
#[derive(Debug, Clone)]
struct Target {
    https: bool,
    host: String,
    port: u16,
    /// `host[:port]` as the `Host` header says it.
    authority: String,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|error| format!("RELAY_AUTH_JWKS_URL is not a URL: {error}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(String::from(
                    "RELAY_AUTH_JWKS_URL must be an https:// (or, in development, http://) URL",
                ));
            }
        };
        let authority = uri
            .authority()
            .ok_or_else(|| String::from("RELAY_AUTH_JWKS_URL names no host"))?;
        if authority.as_str().contains('@') {
            return Err(String::from(
                "RELAY_AUTH_JWKS_URL must not carry credentials: a JWKS is public",
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(Self {
            https,
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            authority: authority.as_str().to_owned(),
            path: uri
                .path_and_query()
                .map_or_else(|| String::from("/"), |p| p.as_str().to_owned()),
            host,
        })
    }

    /// For logs: where, without the query (which might carry a tenant id).
    fn describe(&self) -> String {
        let path = self.path.split('?').next().unwrap_or_default();
        format!(
            "{}://{}{path}",
            if self.https { "https" } else { "http" },
            self.authority
        )
    }
}

/// What the verifier checks in each token beside the signature.
#[derive(Debug, Clone)]
struct Expect {
    issuer: String,
    audience: String,
    leeway_seconds: u64,
}

#[derive(Debug, Default)]
struct State {
    /// When the last fetch was started, successful or not.
    last_attempt: Option<Instant>,
    /// Why the last fetch failed, while no set is loaded (for the readiness check).
    last_error: Option<String>,
}

/// A JWKS fetched from a URL and kept fresh; see the module docs.
pub struct RemoteJwks {
    target: Target,
    expect: Expect,
    tls: Option<tokio_rustls::TlsConnector>,
    refresh: Duration,
    refetch_min: Duration,
    current: RwLock<Option<Arc<JwtVerifier>>>,
    /// Serializes fetches: callers with an unknown `kid` wait for one fetch, not each their own.
    fetch: tokio::sync::Mutex<State>,
}

impl std::fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteJwks")
            .field("url", &self.target.describe())
            .field("loaded", &self.loaded())
            .finish_non_exhaustive()
    }
}

impl RemoteJwks {
    /// The source of `settings.auth_jwks_url`, nothing fetched yet.
    ///
    /// # Errors
    /// When the URL is not an http(s) URL, or the CA cannot be read.
    pub fn new(settings: &SecuritySettings, url: &str) -> Result<Self, String> {
        let target = Target::parse(url)?;
        let tls = if target.https {
            Some(connector(settings.auth_jwks_ca.as_ref())?)
        } else {
            None
        };
        Ok(Self {
            target,
            expect: Expect {
                issuer: settings.auth_issuer.clone().unwrap_or_default(),
                audience: settings.auth_audience.clone().unwrap_or_default(),
                leeway_seconds: settings.auth_leeway_seconds,
            },
            tls,
            refresh: Duration::from_secs(settings.auth_jwks_refresh_seconds.max(1)),
            refetch_min: Duration::from_secs(settings.auth_jwks_refetch_min_seconds),
            current: RwLock::new(None),
            fetch: tokio::sync::Mutex::new(State::default()),
        })
    }

    /// The verifier of the last good set, once one was fetched.
    #[must_use]
    pub fn current(&self) -> Option<Arc<JwtVerifier>> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether a set has been fetched.
    #[must_use]
    pub fn loaded(&self) -> bool {
        self.current().is_some()
    }

    /// The readiness check's answer: `Ok` once a set is loaded.
    ///
    /// # Errors
    /// Why no set is loaded yet.
    pub async fn ready(&self) -> Result<(), String> {
        if self.loaded() {
            return Ok(());
        }
        let state = self.fetch.lock().await;
        Err(format!(
            "no JWKS fetched yet from {}: {}",
            self.target.describe(),
            state.last_error.as_deref().unwrap_or("not tried yet")
        ))
    }

    /// Fetches the set now and, when it is good, puts it in place.
    ///
    /// # Errors
    /// Why the fetch failed (the previous set stays).
    pub async fn refresh(&self) -> Result<(), String> {
        let mut state = self.fetch.lock().await;
        self.fetch_locked(&mut state).await
    }

    /// For a token whose `kid` the current set does not hold: fetches the set again unless
    /// a fetch started less than `auth_jwks_refetch_min_seconds` ago. Returns whether a
    /// fetch was made and succeeded (then the token is worth checking again).
    pub async fn refetch_for_unknown_kid(&self) -> bool {
        let mut state = self.fetch.lock().await;
        if state
            .last_attempt
            .is_some_and(|at| at.elapsed() < self.refetch_min)
        {
            // Another caller may have just fetched: the token is worth checking again.
            return self.loaded();
        }
        tracing::info!(
            url = %self.target.describe(),
            "a token names a key the JWKS does not hold: fetching the JWKS again"
        );
        self.fetch_locked(&mut state).await.is_ok()
    }

    /// Whether the current set holds a key with this `kid` (`None`: the token names none).
    #[must_use]
    pub fn knows(&self, kid: Option<&str>) -> bool {
        self.current()
            .is_some_and(|verifier| kid.is_none_or(|kid| verifier.has_kid(kid)))
    }

    async fn fetch_locked(&self, state: &mut State) -> Result<(), String> {
        state.last_attempt = Some(Instant::now());
        let result = match tokio::time::timeout(FETCH_TIMEOUT, self.fetch_once()).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {}s", FETCH_TIMEOUT.as_secs())),
        };
        match result {
            Ok(verifier) => {
                let kids = verifier.kids();
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(verifier));
                state.last_error = None;
                tracing::debug!(url = %self.target.describe(), ?kids, "jwks loaded");
                Ok(())
            }
            Err(error) => {
                let keeping = if self.loaded() {
                    "keeping the last good set"
                } else {
                    "no set loaded yet: bearer tokens are refused until one is"
                };
                tracing::warn!(url = %self.target.describe(), %error, "jwks fetch failed, {keeping}");
                state.last_error = Some(error.clone());
                Err(error)
            }
        }
    }

    async fn fetch_once(&self) -> Result<JwtVerifier, String> {
        let target = &self.target;
        let stream = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|error| format!("cannot connect: {error}"))?;
        let request = http::Request::get(&target.path)
            .header(http::header::HOST, &target.authority)
            .header(
                http::header::ACCEPT,
                "application/json, application/jwk-set+json",
            )
            .header(
                http::header::USER_AGENT,
                concat!("relay/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|error| error.to_string())?;
        let (status, body) = match &self.tls {
            Some(connector) => {
                let name = ServerName::try_from(target.host.clone())
                    .map_err(|error| format!("host {}: {error}", target.host))?;
                let tls = connector
                    .connect(name, stream)
                    .await
                    .map_err(|error| format!("tls: {error}"))?;
                exchange(tls, request).await?
            }
            None => exchange(stream, request).await?,
        };
        if status != http::StatusCode::OK {
            return Err(format!("answered {status}"));
        }
        let set: JwkSet =
            serde_json::from_slice(&body).map_err(|error| format!("not a JWK set: {error}"))?;
        JwtVerifier::from_published_jwks(
            &set,
            &self.expect.issuer,
            &self.expect.audience,
            self.expect.leeway_seconds,
        )
    }

    /// Fetches the set until one is loaded (retrying with a backoff from 1 s up to the
    /// refresh interval), then again every refresh interval, until `token` is cancelled.
    pub async fn run(self: Arc<Self>, token: CancellationToken) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let wait = if self.loaded() {
                self.refresh
            } else {
                let wait = backoff;
                backoff = (backoff * 2).min(self.refresh);
                wait
            };
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            let _ = self.refresh().await;
        }
    }
}

/// A TLS connector trusting `ca` (PEM), else the system's root certificates.
fn connector(ca: Option<&PathBuf>) -> Result<tokio_rustls::TlsConnector, String> {
    let roots = match ca {
        Some(path) => super::tls::root_store(path, "RELAY_SECURITY__AUTH_JWKS_CA")?,
        None => {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(String::from(
                    "RELAY_AUTH_JWKS_URL is https:// but the system has no root certificate: \
                     give the provider's CA in RELAY_SECURITY__AUTH_JWKS_CA",
                ));
            }
            roots
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|error| error.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// One request and its whole answer (at most [`MAX_BYTES`]) over `io`.
async fn exchange<T>(
    io: T,
    request: http::Request<Empty<Bytes>>,
) -> Result<(http::StatusCode, Bytes), String>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|error| format!("http: {error}"))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| format!("http: {error}"))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BYTES)
            .collect()
            .await
            .map_err(|error| format!("reading the answer: {error}"))?
            .to_bytes();
        Ok((status, body))
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_at_start() {
        let target = Target::parse("https://idp.example:8443/realms/r/certs?x=1").expect("url");
        assert!(target.https);
        assert_eq!(target.host, "idp.example");
        assert_eq!(target.port, 8443);
        assert_eq!(target.path, "/realms/r/certs?x=1");
        assert_eq!(target.describe(), "https://idp.example:8443/realms/r/certs");
        let local = Target::parse("http://[::1]/jwks").expect("url");
        assert_eq!((local.host.as_str(), local.port), ("::1", 80));
        assert!(Target::parse("ftp://idp/jwks").is_err());
        assert!(Target::parse("https://user:pw@idp/jwks").is_err());
        assert!(Target::parse("/jwks").is_err());
    }
}
