//! Bearer tokens: the claims Relay reads, and [`JwtVerifier`], which checks a token against
//! the keys of a JWKS (signature, issuer, audience, expiry, not-before) with jsonwebtoken.

use std::{collections::BTreeSet, path::Path};

use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use serde::Deserialize;

use super::{AUTH_DOMAIN, CredentialKind, Principal};

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

/// The bearer token of a request, when its `authorization` header holds one.
pub(super) fn bearer(headers: &http::HeaderMap) -> Option<&str> {
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
