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

use std::{
    collections::{BTreeSet, HashMap},
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use serde::Deserialize;
use tonic::{Code, Status};
use tower::{Layer, Service};

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

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// A bearer JWT.
    Token,
    /// A client certificate (mTLS).
    Certificate,
    /// None: authentication is off in a development setup; every scope is granted.
    Development,
}

/// The caller of an RPC, as the auth layer established it. Handlers read it from the request
/// with [`Principal::of`] and check the bindings that depend on the request's content
/// ([`Principal::require_cad_system`], [`Principal::require_team`],
/// [`Principal::require_region`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`, or the certificate's identity.
    pub subject: String,
    /// Scopes by name (`incidents.submit`).
    pub scopes: BTreeSet<String>,
    /// The one CAD system this caller may act for, when bound to one.
    pub cad_system: Option<String>,
    /// The one team this caller may report for, when bound to one.
    pub team_id: Option<String>,
    /// The regions this caller is limited to; empty: every region.
    pub regions: Vec<String>,
    /// How the caller proved who it is.
    pub kind: CredentialKind,
    /// The error domain of the RPC being called (`relay.intake.v1`).
    domain: &'static str,
}

impl Principal {
    /// The principal of a call in a development setup without authentication: every scope,
    /// no binding.
    #[must_use]
    pub fn development() -> Self {
        Self {
            subject: String::from("development"),
            scopes: BTreeSet::new(),
            cad_system: None,
            team_id: None,
            regions: Vec::new(),
            kind: CredentialKind::Development,
            domain: AUTH_DOMAIN,
        }
    }

    /// The principal the auth layer attached to a request.
    #[must_use]
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&Self> {
        request.extensions().get::<Self>()
    }

    /// Whether the principal holds `scope` (always, in development).
    #[must_use]
    pub fn has_scope(&self, scope: &str) -> bool {
        self.kind == CredentialKind::Development || self.scopes.contains(scope)
    }

    /// `Ok` when the principal holds `scope`, else PERMISSION_DENIED (`SCOPE_MISSING`).
    ///
    /// # Errors
    /// The status to return to the caller.
    pub fn require_scope(&self, scope: &str) -> Result<(), Status> {
        if self.has_scope(scope) {
            return Ok(());
        }
        Err(refusal(
            Code::PermissionDenied,
            self.domain,
            SCOPE_MISSING,
            format!("the credential lacks the scope `{scope}` this call requires"),
            Some(("scope", scope)),
        ))
    }

    /// `Ok` when the principal may act for `cad_system` (it is bound to no CAD, or to this
    /// one), else PERMISSION_DENIED (`CAD_SYSTEM_NOT_ALLOWED`).
    ///
    /// # Errors
    /// The status to return to the caller.
    pub fn require_cad_system(&self, cad_system: &str) -> Result<(), Status> {
        match &self.cad_system {
            Some(bound) if bound != cad_system => Err(refusal(
                Code::PermissionDenied,
                self.domain,
                CAD_SYSTEM_NOT_ALLOWED,
                "the credential is bound to another cad_system",
                Some(("cad_system", cad_system)),
            )),
            _ => Ok(()),
        }
    }

    /// `Ok` when the principal may report for `team_id`, else PERMISSION_DENIED
    /// (`TEAM_NOT_ALLOWED`).
    ///
    /// # Errors
    /// The status to return to the caller.
    pub fn require_team(&self, team_id: &str) -> Result<(), Status> {
        match &self.team_id {
            Some(bound) if bound != team_id => Err(refusal(
                Code::PermissionDenied,
                self.domain,
                TEAM_NOT_ALLOWED,
                "the credential is bound to another team",
                Some(("team_id", team_id)),
            )),
            _ => Ok(()),
        }
    }

    /// `Ok` when the principal may act in `region`, else PERMISSION_DENIED
    /// (`REGION_NOT_ALLOWED`).
    ///
    /// # Errors
    /// The status to return to the caller.
    pub fn require_region(&self, region: &str) -> Result<(), Status> {
        if self.allows_region(region) {
            return Ok(());
        }
        Err(refusal(
            Code::PermissionDenied,
            self.domain,
            REGION_NOT_ALLOWED,
            "the credential is limited to other regions",
            Some(("region", region)),
        ))
    }

    /// The principal of a call, for a handler: the one the auth layer attached. A call that
    /// reached a handler without one did not pass the layer (a server built without
    /// [`crate::server::ServiceHost`]); it is refused (UNAUTHENTICATED,
    /// `CREDENTIALS_MISSING`) rather than served as anyone.
    ///
    /// # Errors
    /// The status to return to the caller; `domain` is the service's error domain.
    pub fn of_call<T>(request: &tonic::Request<T>, domain: &'static str) -> Result<Self, Status> {
        Self::of(request).cloned().ok_or_else(|| {
            refusal(
                Code::Unauthenticated,
                domain,
                CREDENTIALS_MISSING,
                "this call needs a credential: a bearer token or a client certificate",
                None,
            )
        })
    }

    /// Whether the principal may read an incident's caller details (name, phone, callback
    /// number, narrative and notes): it holds [`CALLER_DETAILS_READ`], or it is the
    /// development principal.
    #[must_use]
    pub fn may_read_caller_details(&self) -> bool {
        self.has_scope(CALLER_DETAILS_READ)
    }

    /// Whether the principal may act for `cad_system` (bound to no CAD, or to this one).
    #[must_use]
    pub fn allows_cad_system(&self, cad_system: &str) -> bool {
        self.cad_system
            .as_deref()
            .is_none_or(|bound| bound == cad_system)
    }

    /// Whether the principal may act in `region` (limited to no region, or to this one).
    #[must_use]
    pub fn allows_region(&self, region: &str) -> bool {
        self.regions.is_empty() || self.regions.iter().any(|r| r == region)
    }

    /// The CAD-system filter of a read that may name one (ListIncidents): empty, it becomes
    /// the bound CAD (a bound credential reads only its own); named, it must be allowed.
    ///
    /// # Errors
    /// PERMISSION_DENIED (`CAD_SYSTEM_NOT_ALLOWED`) when it names another CAD.
    pub fn cad_system_filter(&self, requested: &str) -> Result<String, Status> {
        match (&self.cad_system, requested.is_empty()) {
            (Some(bound), true) => Ok(bound.clone()),
            _ => self
                .require_cad_system(requested)
                .map(|()| requested.to_owned()),
        }
    }

    /// The region filter of a read that may name one (ListIncidents, ListTeams,
    /// GetProgramReport): empty, it becomes the one region of a credential limited to one;
    /// named, it must be one of the credential's. A credential limited to several regions
    /// names one (or, where the RPC says so, gets its reads filtered instead).
    ///
    /// # Errors
    /// PERMISSION_DENIED (`REGION_NOT_ALLOWED`) for another region, or for none named by a
    /// credential limited to several.
    pub fn region_filter(&self, requested: &str) -> Result<String, Status> {
        match (self.regions.as_slice(), requested.is_empty()) {
            ([only], true) => Ok(only.clone()),
            _ => self
                .require_region(requested)
                .map(|()| requested.to_owned()),
        }
    }

    /// `Ok` when the principal may see a resource of `cad_system` that the caller named by
    /// its id only (an incident, an assignment); else the same refusal whether the resource
    /// belongs to another CAD or, with `None`, does not exist, so that a bound credential
    /// cannot learn which ids exist elsewhere. The refusal names no CAD.
    ///
    /// # Errors
    /// PERMISSION_DENIED (`CAD_SYSTEM_NOT_ALLOWED`).
    pub fn require_cad_system_of(&self, cad_system: Option<&str>) -> Result<(), Status> {
        match (&self.cad_system, cad_system) {
            (None, _) => Ok(()),
            (Some(bound), Some(cad)) if bound == cad => Ok(()),
            (Some(_), _) => Err(refusal(
                Code::PermissionDenied,
                self.domain,
                CAD_SYSTEM_NOT_ALLOWED,
                "the credential is bound to a cad_system, and this id names none of its \
                 resources",
                None,
            )),
        }
    }

    /// Whether a resource named by id must be read to decide ([`Self::require_owner`]): the
    /// principal is bound to a CAD or limited to regions.
    #[must_use]
    pub fn needs_owner(&self) -> bool {
        self.is_cad_bound() || self.is_region_bound()
    }

    /// `Ok` when the principal may act on a resource named by id whose owner is
    /// `(cad_system, region)`, or `None` when no resource has the id:
    /// [`Self::require_cad_system_of`], then [`Self::require_region`].
    ///
    /// # Errors
    /// PERMISSION_DENIED (`CAD_SYSTEM_NOT_ALLOWED`, `REGION_NOT_ALLOWED`).
    pub fn require_owner(&self, owner: Option<(&str, &str)>) -> Result<(), Status> {
        self.require_cad_system_of(owner.map(|(cad_system, _)| cad_system))?;
        match owner {
            Some((_, region)) => self.require_region(region),
            None => Ok(()),
        }
    }

    /// Whether the principal is bound to one CAD system.
    #[must_use]
    pub fn is_cad_bound(&self) -> bool {
        self.cad_system.is_some()
    }

    /// Whether the principal is limited to some regions.
    #[must_use]
    pub fn is_region_bound(&self) -> bool {
        !self.regions.is_empty()
    }

    /// A principal named `subject` with no scope nor binding, for tests of the layers.
    #[cfg(test)]
    pub(crate) fn for_tests(subject: &str, kind: CredentialKind) -> Self {
        Self {
            subject: subject.to_owned(),
            kind,
            ..Self::development()
        }
    }

    fn from_grant(subject: String, grant: &IdentityGrant, kind: CredentialKind) -> Self {
        Self {
            subject,
            scopes: grant.scopes.iter().cloned().collect(),
            cad_system: grant.cad_system.clone(),
            team_id: grant.team_id.clone(),
            regions: grant.regions.clone(),
            kind,
            domain: AUTH_DOMAIN,
        }
    }
}

fn refusal(
    code: Code,
    domain: &'static str,
    reason: &str,
    message: impl Into<String>,
    metadata: Option<(&str, &str)>,
) -> Status {
    let metadata: HashMap<String, String> = metadata
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
    crate::error::status(code, domain, reason, message, metadata)
}

/// The claims Relay reads from a token. `exp`, `nbf`, `iss` and `aud` are checked by the
/// verifier itself.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    /// Space-separated scopes (RFC 8693, OAuth 2.0).
    #[serde(default)]
    scope: Option<String>,
    /// Scopes as a list (Entra ID's `scp` may be either).
    #[serde(default)]
    scp: Option<ScopeList>,
    #[serde(default)]
    cad_system: Option<String>,
    #[serde(default)]
    team_id: Option<String>,
    #[serde(default)]
    regions: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ScopeList {
    Text(String),
    List(Vec<String>),
}

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

/// The bearer token of a request, when its `authorization` header holds one.
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()
        .and_then(|text| {
            text.strip_prefix("Bearer ")
                .or_else(|| text.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

/// One verification key of the JWKS.
struct Key {
    id: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Checks bearer tokens against the keys of a JWKS file.
pub struct JwtVerifier {
    keys: Vec<Key>,
    issuer: String,
    audience: String,
    leeway_seconds: u64,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("keys", &self.keys.iter().map(|k| &k.id).collect::<Vec<_>>())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// Why a token was refused, for the log (never the token itself).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No key of the JWKS has the token's `kid` and algorithm.
    #[error("no key of the JWKS matches the token's kid and algorithm")]
    UnknownKey,
    /// The signature, a claim, or the encoding is wrong.
    #[error("{0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
}

impl JwtVerifier {
    /// Reads the JWKS file. Keys whose algorithm cannot be told (no `alg`, and a key type
    /// without a single algorithm) or that cannot verify are refused.
    ///
    /// # Errors
    /// When the file cannot be read or holds no usable key.
    pub fn from_jwks_file(
        path: &Path,
        issuer: &str,
        audience: &str,
        leeway_seconds: u64,
    ) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("JWKS {} (RELAY_AUTH_JWKS): {error}", path.display()))?;
        let set: JwkSet = serde_json::from_str(&text).map_err(|error| {
            format!(
                "JWKS {} (RELAY_AUTH_JWKS) is not a JWK set: {error}",
                path.display()
            )
        })?;
        Self::from_jwks(&set, issuer, audience, leeway_seconds)
            .map_err(|error| format!("JWKS {} (RELAY_AUTH_JWKS): {error}", path.display()))
    }

    /// A verifier for the keys of `set`.
    ///
    /// # Errors
    /// When a key cannot be used, or the set has none.
    pub fn from_jwks(
        set: &JwkSet,
        issuer: &str,
        audience: &str,
        leeway_seconds: u64,
    ) -> Result<Self, String> {
        let keys = set.keys.iter().map(key_of).collect::<Result<Vec<_>, _>>()?;
        Self::with_keys(keys, issuer, audience, leeway_seconds)
    }

    /// A verifier for the signing keys of a set an identity provider publishes: keys that
    /// cannot verify a token (encryption keys, shared secrets, unknown algorithms), which
    /// providers list beside their signing keys, are skipped rather than refused.
    ///
    /// # Errors
    /// When the set has no usable key.
    pub fn from_published_jwks(
        set: &JwkSet,
        issuer: &str,
        audience: &str,
        leeway_seconds: u64,
    ) -> Result<Self, String> {
        let keys = set
            .keys
            .iter()
            .filter(|jwk| {
                jwk.common.public_key_use != Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
            })
            .filter_map(|jwk| {
                key_of(jwk)
                    .map_err(|error| tracing::debug!(%error, "jwks key skipped"))
                    .ok()
            })
            .collect();
        Self::with_keys(keys, issuer, audience, leeway_seconds)
    }

    fn with_keys(
        keys: Vec<Key>,
        issuer: &str,
        audience: &str,
        leeway_seconds: u64,
    ) -> Result<Self, String> {
        if keys.is_empty() {
            return Err(String::from("the set has no usable signing key"));
        }
        Ok(Self {
            keys,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            leeway_seconds,
        })
    }

    /// Whether a key of the set has this `kid`.
    #[must_use]
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|key| key.id.as_deref() == Some(kid))
    }

    /// The key ids of the set (for logs: they are public).
    #[must_use]
    pub fn kids(&self) -> Vec<String> {
        self.keys.iter().filter_map(|key| key.id.clone()).collect()
    }

    /// The principal a token proves.
    ///
    /// # Errors
    /// Why the token is refused.
    pub fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        let header = jsonwebtoken::decode_header(token)?;
        let candidates = self.keys.iter().filter(|key| {
            key.algorithm == header.alg
                && match (&header.kid, &key.id) {
                    (Some(wanted), Some(id)) => wanted == id,
                    (Some(_), None) => false,
                    (None, _) => true,
                }
        });
        let mut last = TokenError::UnknownKey;
        for key in candidates {
            let mut validation = Validation::new(key.algorithm);
            validation.set_issuer(&[&self.issuer]);
            validation.set_audience(&[&self.audience]);
            validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            validation.leeway = self.leeway_seconds;
            validation.validate_exp = true;
            validation.validate_nbf = true;
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => return Ok(principal_of(data.claims)),
                Err(error) => last = TokenError::Invalid(error),
            }
        }
        Err(last)
    }
}

/// The verification key of one JWK.
fn key_of(jwk: &jsonwebtoken::jwk::Jwk) -> Result<Key, String> {
    let id = jwk.common.key_id.clone();
    let algorithm = match jwk.common.key_algorithm {
        Some(algorithm) => algorithm
            .to_string()
            .parse::<Algorithm>()
            .map_err(|error| format!("key {id:?}: {error}"))?,
        None => default_algorithm(jwk)
            .ok_or_else(|| format!("key {id:?} names no `alg`, and its type has many"))?,
    };
    if matches!(
        algorithm,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    ) {
        return Err(format!(
            "key {id:?} is a shared secret ({algorithm:?}); only public keys verify tokens"
        ));
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|error| format!("key {id:?}: {error}"))?;
    Ok(Key { id, algorithm, key })
}

fn default_algorithm(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve};
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
        _ => None,
    }
}

fn principal_of(claims: Claims) -> Principal {
    let mut scopes: BTreeSet<String> = claims
        .scope
        .as_deref()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    match claims.scp {
        Some(ScopeList::Text(text)) => scopes.extend(text.split_whitespace().map(str::to_owned)),
        Some(ScopeList::List(list)) => scopes.extend(list),
        None => {}
    }
    Principal {
        subject: claims.sub,
        scopes,
        cad_system: claims.cad_system,
        team_id: claims.team_id,
        regions: claims.regions,
        kind: CredentialKind::Token,
        domain: AUTH_DOMAIN,
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
    let peer = super::tls::peer_identity(request.extensions());
    let peer_ip = super::limits::peer_ip(request.extensions());
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

    #[test]
    fn bindings_refuse_other_cads_teams_and_regions() {
        let principal = Principal {
            cad_system: Some(String::from("cad-a")),
            team_id: Some(String::from("t1")),
            regions: vec![String::from("north")],
            kind: CredentialKind::Token,
            ..Principal::development()
        };
        assert!(principal.require_cad_system("cad-a").is_ok());
        let status = principal
            .require_cad_system("cad-b")
            .expect_err("another CAD");
        assert_eq!(status.code(), Code::PermissionDenied);
        assert!(principal.require_team("t2").is_err());
        assert!(principal.require_region("south").is_err());
        assert!(principal.require_region("north").is_ok());
        assert!(principal.require_scope("incidents.read").is_err());
        assert!(Principal::development().require_scope("admin").is_ok());
    }

    #[test]
    fn a_bound_credential_reads_its_own_cad_and_learns_nothing_of_others() {
        let bound = Principal {
            cad_system: Some(String::from("cad-a")),
            kind: CredentialKind::Token,
            ..Principal::development()
        };
        assert_eq!(bound.cad_system_filter("").expect("filled in"), "cad-a");
        assert_eq!(bound.cad_system_filter("cad-a").expect("its own"), "cad-a");
        assert!(bound.cad_system_filter("cad-b").is_err());
        let free = Principal::development();
        assert_eq!(free.cad_system_filter("").expect("any"), "");
        assert!(bound.require_cad_system_of(Some("cad-a")).is_ok());
        // Another CAD's resource and no resource at all get one and the same answer.
        let other = bound
            .require_cad_system_of(Some("cad-b"))
            .expect_err("other");
        let missing = bound.require_cad_system_of(None).expect_err("missing");
        assert_eq!(other.code(), Code::PermissionDenied);
        assert_eq!(other.code(), missing.code());
        assert_eq!(other.message(), missing.message());
        assert_eq!(other.details(), missing.details());
        assert!(free.require_cad_system_of(None).is_ok());
    }

    #[test]
    fn a_region_filter_is_filled_in_or_checked() {
        let one = Principal {
            regions: vec![String::from("north")],
            kind: CredentialKind::Token,
            ..Principal::development()
        };
        assert_eq!(one.region_filter("").expect("filled in"), "north");
        assert!(one.region_filter("south").is_err());
        let two = Principal {
            regions: vec![String::from("north"), String::from("east")],
            ..one.clone()
        };
        assert!(two.region_filter("").is_err(), "several: name one");
        assert_eq!(two.region_filter("east").expect("its own"), "east");
        assert_eq!(Principal::development().region_filter("").expect("any"), "");
    }

    #[test]
    fn caller_details_need_their_scope_except_in_development() {
        assert!(Principal::development().may_read_caller_details());
        let mut reader = Principal {
            kind: CredentialKind::Token,
            ..Principal::development()
        };
        assert!(!reader.may_read_caller_details());
        reader.scopes.insert(CALLER_DETAILS_READ.to_owned());
        assert!(reader.may_read_caller_details());
    }

    #[test]
    fn a_call_without_a_principal_is_refused() {
        let request = tonic::Request::new(());
        let status = Principal::of_call(&request, "relay.test.v1").expect_err("no principal");
        assert_eq!(status.code(), Code::Unauthenticated);
    }
}
