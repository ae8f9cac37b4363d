//! Who is calling, and whether they may: the tower layer every Relay service runs behind.
//!
//! A caller proves who it is with a bearer JWT (`authorization: Bearer ...`) signed by a key
//! of the configured JWKS, with the configured issuer and audience, not expired and not
//! before its `nbf` (both with a small leeway); or with a client certificate (mTLS) whose
//! identity, a SPIFFE URI SAN or else the subject CN, the configuration maps to scopes. A
//! token wins over a certificate when a call carries both. The caller becomes a
//! [`Principal`], put in the request's extensions for the handler.
//!
//! Every RPC requires the one scope its `.proto` declares (`(relay.auth.v1.scope)`, read from
//! the descriptors into [`relay_proto::scopes`]). Refusals carry a `google.rpc.ErrorInfo`:
//! UNAUTHENTICATED with reason `CREDENTIALS_MISSING` or `CREDENTIALS_INVALID`, and
//! PERMISSION_DENIED with `SCOPE_MISSING` (metadata `scope`). Health is open to everyone;
//! reflection needs a valid credential. A token is never logged: refusals log the reason
//! and the verifier's error kind only.
//!
//! The module is in parts: [`principal`] (who is calling, and the checks of its bindings),
//! [`jwt`] (bearer tokens against a JWKS), [`layer`] (the tower layer); this file holds the
//! reasons and [`Authenticator`], which decides a call. Their items are re-exported here.

pub mod jwt;
pub mod layer;
pub mod principal;

use std::{collections::HashMap, sync::Arc};

use tonic::{Code, Status};

use jwt::bearer;
pub use jwt::{JwtVerifier, TokenError};
pub use layer::{Auth, AuthLayer};
use principal::refusal;
pub use principal::{CredentialKind, Principal};

use super::{IdentityGrant, Reflection, SecuritySettings, limits::RateLimits, tls::PeerIdentity};

/// The error domain of refusals on paths that belong to no Relay package (reflection).
const AUTH_DOMAIN: &str = "relay.auth.v1";

/// Reason: the call carries no credential.
pub const CREDENTIALS_MISSING: &str = "CREDENTIALS_MISSING";
/// Reason: the credential is malformed, expired, not yet valid, or not ours.
pub const CREDENTIALS_INVALID: &str = "CREDENTIALS_INVALID";
/// Reason: a valid credential without the scope the RPC requires.
pub const SCOPE_MISSING: &str = "SCOPE_MISSING";
/// Reason: bearer tokens cannot be checked yet, as the JWKS URL has not been fetched
/// (UNAVAILABLE: the credential may be fine, retry).
pub const KEYS_UNAVAILABLE: &str = "KEYS_UNAVAILABLE";
/// Reason: the credential is bound to another CAD system.
pub const CAD_SYSTEM_NOT_ALLOWED: &str = "CAD_SYSTEM_NOT_ALLOWED";
/// Reason: the credential is bound to another team.
pub const TEAM_NOT_ALLOWED: &str = "TEAM_NOT_ALLOWED";
/// Reason: the credential is limited to other regions.
pub const REGION_NOT_ALLOWED: &str = "REGION_NOT_ALLOWED";
/// The scope that reads an incident's caller details (name, phone, narrative): required by
/// no RPC on its own; without it they are withheld ([`Principal::may_read_caller_details`]).
pub const CALLER_DETAILS_READ: &str = "caller.details.read";

/// Where the keys that verify bearer tokens come from.
#[derive(Debug)]
enum Keys {
    /// No bearer token is accepted (client certificates only, or authentication off).
    None,
    /// A JWKS file, read at start.
    File(JwtVerifier),
    /// A JWKS URL, fetched and kept fresh.
    Remote(Arc<super::jwks::RemoteJwks>),
}

/// A verifier borrowed from a file set or shared from the current remote set.
enum KeysRef<'a> {
    File(&'a JwtVerifier),
    Remote(Arc<JwtVerifier>),
}

impl std::ops::Deref for KeysRef<'_> {
    type Target = JwtVerifier;

    fn deref(&self) -> &JwtVerifier {
        match self {
            Self::File(verifier) => verifier,
            Self::Remote(verifier) => verifier,
        }
    }
}

/// What the auth layer checks, built once per server from [`SecuritySettings`].
#[derive(Debug)]
pub struct Authenticator {
    /// Where the keys that verify bearer tokens come from.
    jwt: Keys,
    enforce: bool,
    identities: HashMap<String, IdentityGrant>,
    reflection: Reflection,
}

impl Authenticator {
    /// An authenticator that lets every call through with [`Principal::development`].
    #[must_use]
    pub fn disabled() -> Self {
        Self {
            jwt: Keys::None,
            enforce: false,
            identities: HashMap::new(),
            reflection: Reflection::Authenticated,
        }
    }

    /// The authenticator of `settings`; `no_auth` from [`SecuritySettings::posture`].
    ///
    /// # Errors
    /// When the JWKS cannot be read.
    pub fn new(settings: &SecuritySettings, no_auth: bool) -> Result<Self, String> {
        if no_auth {
            return Ok(Self {
                reflection: settings.reflection,
                ..Self::disabled()
            });
        }
        let jwt = match (&settings.auth_jwks, &settings.auth_jwks_url) {
            (Some(path), _) => Keys::File(JwtVerifier::from_jwks_file(
                path,
                settings.auth_issuer.as_deref().unwrap_or_default(),
                settings.auth_audience.as_deref().unwrap_or_default(),
                settings.auth_leeway_seconds,
            )?),
            (None, Some(url)) => {
                Keys::Remote(Arc::new(super::jwks::RemoteJwks::new(settings, url)?))
            }
            (None, None) => Keys::None,
        };
        Ok(Self {
            jwt,
            enforce: true,
            identities: settings
                .identities
                .iter()
                .map(|(identity, grant)| (identity.clone(), grant.clone()))
                .collect(),
            reflection: settings.reflection,
        })
    }

    /// Whether calls are checked at all.
    #[must_use]
    pub fn enforcing(&self) -> bool {
        self.enforce
    }

    /// The JWKS fetched from a URL, when the keys come from one (its refresh task and
    /// readiness check run beside the server).
    #[must_use]
    pub fn remote_jwks(&self) -> Option<&Arc<super::jwks::RemoteJwks>> {
        match &self.jwt {
            Keys::Remote(remote) => Some(remote),
            _ => None,
        }
    }

    /// The remote JWKS to fetch again before deciding this call: the call carries a bearer
    /// token whose `kid` the current set does not hold (or no set is loaded yet). `None`
    /// when the keys come from a file, or the set knows the key.
    #[must_use]
    pub fn wants_fresh_keys(
        &self,
        headers: &http::HeaderMap,
    ) -> Option<Arc<super::jwks::RemoteJwks>> {
        let Keys::Remote(remote) = &self.jwt else {
            return None;
        };
        if !self.enforce {
            return None;
        }
        let token = bearer(headers)?;
        let header = jsonwebtoken::decode_header(token).ok()?;
        (!remote.knows(header.kid.as_deref())).then(|| Arc::clone(remote))
    }

    /// Whether reflection is served.
    #[must_use]
    pub fn reflection(&self) -> Reflection {
        self.reflection
    }

    /// Decides a call to `path` with these `headers`, from a peer with this certificate
    /// identity: the principal, or the refusal.
    ///
    /// # Errors
    /// The status the caller gets.
    pub fn authorize(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        peer: Option<&PeerIdentity>,
    ) -> Result<Option<Principal>, Status> {
        if path.starts_with("/grpc.health.v1.Health/") {
            return Ok(None);
        }
        if !self.enforce {
            return Ok(Some(Principal::development()));
        }
        let scope = relay_proto::scopes::scope_entry(path);
        let domain = scope.map_or(AUTH_DOMAIN, |(path, _)| package_of(path));
        let mut principal = self.identify(domain, headers, peer)?;
        principal.domain = domain;
        match scope {
            // Not a Relay RPC: reflection (a valid credential suffices) or an unknown path,
            // which the router answers UNIMPLEMENTED.
            None => {}
            Some((_, "")) => {
                return Err(refusal(
                    Code::PermissionDenied,
                    domain,
                    SCOPE_MISSING,
                    "this RPC declares no scope, so no credential may call it",
                    None,
                ));
            }
            Some((_, scope)) => principal.require_scope(scope)?,
        }
        Ok(Some(principal))
    }

    /// [`Self::authorize`], with the refusal logged and, past the peer's refusal limit,
    /// replaced by RESOURCE_EXHAUSTED ([`RateLimits::limit_refusal`]); the principal is
    /// recorded on the call's span. What every listener (gRPC, intake's HTTP port) runs.
    ///
    /// # Errors
    /// The status the caller gets.
    pub fn admit(
        &self,
        limits: Option<&RateLimits>,
        path: &str,
        headers: &http::HeaderMap,
        peer: Option<&PeerIdentity>,
        peer_ip: Option<std::net::IpAddr>,
    ) -> Result<Option<Principal>, Status> {
        match self.authorize(path, headers, peer) {
            Ok(principal) => {
                if let Some(principal) = &principal {
                    tracing::Span::current().record("principal", principal.subject.as_str());
                }
                Ok(principal)
            }
            Err(status) => {
                tracing::info!(
                    code = ?status.code(),
                    message = status.message(),
                    "call refused"
                );
                Err(match limits {
                    Some(limits) => limits.limit_refusal(path, peer_ip, status),
                    None => status,
                })
            }
        }
    }

    fn identify(
        &self,
        domain: &'static str,
        headers: &http::HeaderMap,
        peer: Option<&PeerIdentity>,
    ) -> Result<Principal, Status> {
        let invalid = |message: &str| {
            refusal(
                Code::Unauthenticated,
                domain,
                CREDENTIALS_INVALID,
                message,
                None,
            )
        };
        if headers.contains_key(http::header::AUTHORIZATION) {
            let token = bearer(headers)
                .ok_or_else(|| invalid("the authorization header is not `Bearer <token>`"))?;
            let verifier = match &self.jwt {
                Keys::None => {
                    return Err(invalid(
                        "this server accepts client certificates only, not bearer tokens",
                    ));
                }
                Keys::File(verifier) => KeysRef::File(verifier),
                Keys::Remote(remote) => match remote.current() {
                    Some(verifier) => KeysRef::Remote(verifier),
                    None => {
                        return Err(refusal(
                            Code::Unavailable,
                            domain,
                            KEYS_UNAVAILABLE,
                            "the keys that verify tokens are not loaded yet; retry shortly",
                            None,
                        ));
                    }
                },
            };
            return verifier.verify(token).map_err(|error| {
                tracing::debug!(reason = CREDENTIALS_INVALID, %error, "token refused");
                invalid("the bearer token is invalid, expired or not for this service")
            });
        }
        if let Some(peer) = peer {
            let grant = self.identities.get(&peer.0).cloned().unwrap_or_default();
            return Ok(Principal::from_grant(
                peer.0.clone(),
                &grant,
                CredentialKind::Certificate,
            ));
        }
        Err(refusal(
            Code::Unauthenticated,
            domain,
            CREDENTIALS_MISSING,
            "this call needs a credential: a bearer token or a client certificate",
            None,
        ))
    }
}

/// `relay.intake.v1` from `/relay.intake.v1.IntakeService/SubmitIncident`.
pub(crate) fn package_of(path: &str) -> &str {
    let service = path
        .strip_prefix('/')
        .and_then(|rest| rest.split('/').next())
        .unwrap_or(path);
    service
        .rsplit_once('.')
        .map_or(AUTH_DOMAIN, |(package, _)| package)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_package_of_a_path_is_its_error_domain() {
        assert_eq!(
            package_of("/relay.intake.v1.IntakeService/SubmitIncident"),
            "relay.intake.v1"
        );
        assert_eq!(package_of("/nothing"), AUTH_DOMAIN);
    }
}
