//! The security boundary every service shares (issue 14): TLS on the gRPC listener, who is
//! calling (a bearer JWT or a client certificate), and the scope each RPC requires.
//!
//! - [`SecuritySettings`]: the `[security]` block of the configuration, with the operator's
//!   variables of DESIGN.md (`RELAY_TLS_CERT`, `RELAY_TLS_KEY`, `RELAY_TLS_CLIENT_CA`,
//!   `RELAY_AUTH_JWKS`, `RELAY_AUTH_JWKS_URL`, `RELAY_AUTH_ISSUER`, `RELAY_AUTH_AUDIENCE`,
//!   `RELAY_INSECURE_PLAINTEXT`, `RELAY_INSECURE_NO_AUTH`) as aliases of `RELAY_SECURITY__*`.
//! - [`auth`]: the tower layer that identifies the caller, checks the RPC's scope (declared
//!   once in the protos by `(relay.auth.v1.scope)`) and hands handlers a [`auth::Principal`].
//! - [`http`]: the same boundary on an HTTP/JSON port (intake's EIDO port): TLS, the
//!   credential and scope of one RPC per route, the rate limits, JSON refusals.
//! - [`jwks`]: a JWKS fetched from a URL, cached, refreshed, and fetched again for an unknown
//!   `kid`.
//! - [`limits`]: per-principal rate limits, a tower layer after authentication.
//! - [`tls`]: the rustls server configuration, reloaded when its files change, and the
//!   identity of a client certificate.
//! - [`pki`]: a local CA, certificates, a signing key and tokens for `relay dev` and tests.
//!
//! Secure is the default: a service without TLS files or without a JWKS refuses to start,
//! unless the configuration says so explicitly (`insecure_plaintext`, `insecure_no_auth`),
//! which only a development setup (`RELAY_INSECURE_DEV=true`) may do. In a development setup
//! with neither TLS files nor a JWKS configured, both default to on, so `relay dev` and test
//! launchers stay one command; each logs a warning at start. A configuration built in code
//! alone (`Config::builder` without a file or the environment: in-process tests, embedding)
//! counts as such a setup: see [`crate::config::Config::insecure_allowed`].

pub mod auth;
pub mod http;
pub mod jwks;
pub mod limits;
pub mod pki;
pub mod tls;

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::config::ConfigError;

/// The operator's variables of DESIGN.md and the key each sets in `[security]`.
pub const ENV_ALIASES: [(&str, &str); 9] = [
    ("tls_cert", "security.tls_cert"),
    ("tls_key", "security.tls_key"),
    ("tls_client_ca", "security.tls_client_ca"),
    ("auth_jwks", "security.auth_jwks"),
    ("auth_jwks_url", "security.auth_jwks_url"),
    ("auth_issuer", "security.auth_issuer"),
    ("auth_audience", "security.auth_audience"),
    ("insecure_plaintext", "security.insecure_plaintext"),
    ("insecure_no_auth", "security.insecure_no_auth"),
];

/// Whether server reflection is served, and to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reflection {
    /// Served to any caller with a valid credential (no particular scope). The default.
    #[default]
    Authenticated,
    /// Not served: reflection answers UNIMPLEMENTED.
    Off,
}

/// What a client certificate's identity may do: the scopes and bindings its principal gets
/// (`[security.identities."spiffe://relay/intake"]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityGrant {
    /// Scopes by name (`incidents.submit`, `assignments.write`, ...).
    pub scopes: Vec<String>,
    /// The one CAD whose incidents the identity may touch, when bound to one.
    pub cad_system: Option<String>,
    /// The one team the identity may report for, when bound to one.
    pub team_id: Option<String>,
    /// The regions the identity is limited to; empty: every region.
    pub regions: Vec<String>,
}

/// The `[security]` block (`RELAY_SECURITY__*`, and the aliases in [`ENV_ALIASES`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecuritySettings {
    /// The server certificate chain, PEM (`RELAY_TLS_CERT`). Reloaded when the file changes.
    pub tls_cert: Option<PathBuf>,
    /// The server's private key, PEM (`RELAY_TLS_KEY`). Reloaded when the file changes.
    pub tls_key: Option<PathBuf>,
    /// The CA that client certificates must chain to, PEM (`RELAY_TLS_CLIENT_CA`). Set: a
    /// client may present a certificate (mTLS), and one from another CA is refused at the
    /// handshake. Unset: client certificates are not asked for.
    pub tls_client_ca: Option<PathBuf>,
    /// How often the TLS files are checked for changes, in milliseconds.
    pub tls_reload_interval_ms: u64,
    /// The CA that this service trusts when it calls another Relay service over TLS, PEM
    /// (`RELAY_SECURITY__TLS_CA`). Unset: the calls are plaintext (`http://` endpoints).
    pub tls_ca: Option<PathBuf>,
    /// This service's own client certificate for calls to other services, PEM.
    pub tls_client_cert: Option<PathBuf>,
    /// The key of [`Self::tls_client_cert`], PEM.
    pub tls_client_key: Option<PathBuf>,
    /// The JWKS file whose keys sign bearer tokens (`RELAY_AUTH_JWKS`). Read at start.
    pub auth_jwks: Option<PathBuf>,
    /// The URL of the JWKS (an OIDC provider's `jwks_uri`, `RELAY_AUTH_JWKS_URL`), instead of
    /// a file: fetched at start, again every [`Self::auth_jwks_refresh_seconds`] and when a
    /// token names an unknown key; see [`jwks`]. `https://`; `http://` in development only.
    pub auth_jwks_url: Option<String>,
    /// The CA that the JWKS URL's server certificate must chain to, PEM
    /// (`RELAY_SECURITY__AUTH_JWKS_CA`). Unset: the system's root certificates.
    pub auth_jwks_ca: Option<PathBuf>,
    /// How often the JWKS URL is fetched again, in seconds (default 300).
    pub auth_jwks_refresh_seconds: u64,
    /// The least time between two fetches caused by tokens naming an unknown key, in
    /// seconds (default 30).
    pub auth_jwks_refetch_min_seconds: u64,
    /// The `iss` every token must carry (`RELAY_AUTH_ISSUER`).
    pub auth_issuer: Option<String>,
    /// The `aud` every token must carry (`RELAY_AUTH_AUDIENCE`).
    pub auth_audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub auth_leeway_seconds: u64,
    /// Client certificate identities (a SPIFFE URI SAN, else the subject CN) and what each
    /// may do. An identity not listed gets no scope.
    pub identities: BTreeMap<String, IdentityGrant>,
    /// Whether reflection is served, and to whom.
    pub reflection: Reflection,
    /// Per-principal rate limits (`[security.limits]`).
    pub limits: limits::LimitSettings,
    /// Serve plaintext gRPC (`RELAY_INSECURE_PLAINTEXT`): development only.
    pub insecure_plaintext: Option<bool>,
    /// Serve every caller without a credential (`RELAY_INSECURE_NO_AUTH`): development only.
    pub insecure_no_auth: Option<bool>,
}

impl Default for SecuritySettings {
    fn default() -> Self {
        Self {
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_reload_interval_ms: 2_000,
            tls_ca: None,
            tls_client_cert: None,
            tls_client_key: None,
            auth_jwks: None,
            auth_jwks_url: None,
            auth_jwks_ca: None,
            auth_jwks_refresh_seconds: 300,
            auth_jwks_refetch_min_seconds: 30,
            auth_issuer: None,
            auth_audience: None,
            auth_leeway_seconds: 30,
            identities: BTreeMap::new(),
            reflection: Reflection::default(),
            limits: limits::LimitSettings::default(),
            insecure_plaintext: None,
            insecure_no_auth: None,
        }
    }
}

/// What the listener of a service does, decided from [`SecuritySettings`] at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Posture {
    /// Plaintext gRPC instead of TLS.
    pub plaintext: bool,
    /// Every caller served without a credential.
    pub no_auth: bool,
    /// Whether an insecure choice was asked for by name (`insecure_plaintext`,
    /// `insecure_no_auth`), rather than defaulted in a development setup with nothing
    /// configured: the former is a warning at start, the latter a notice (so `relay dev`
    /// starts quietly at WARN).
    pub explicit: bool,
}

impl SecuritySettings {
    /// [`Self::tls_reload_interval_ms`] as a duration.
    #[must_use]
    pub fn tls_reload_interval(&self) -> Duration {
        Duration::from_millis(self.tls_reload_interval_ms.max(1))
    }

    /// [`Self::auth_leeway_seconds`] as a duration.
    #[must_use]
    pub fn auth_leeway(&self) -> Duration {
        Duration::from_secs(self.auth_leeway_seconds)
    }

    fn tls_configured(&self) -> bool {
        self.tls_cert.is_some() || self.tls_key.is_some()
    }

    fn auth_configured(&self) -> bool {
        self.auth_jwks.is_some() || self.auth_jwks_url.is_some() || self.tls_client_ca.is_some()
    }

    /// Decides plaintext and no-auth: secure unless the configuration says otherwise, which
    /// only a development setup may. In development, with neither TLS files nor a JWKS (or a
    /// client CA), both default to on.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variables: TLS or auth missing outside development, an
    /// insecure setting outside development, or an incomplete pair (a certificate without
    /// its key, a JWKS without issuer or audience).
    pub fn posture(&self, insecure_dev: bool) -> Result<Posture, ConfigError> {
        let plaintext = self
            .insecure_plaintext
            .unwrap_or(insecure_dev && !self.tls_configured());
        let no_auth = self
            .insecure_no_auth
            .unwrap_or(insecure_dev && !self.auth_configured());
        if (plaintext || no_auth) && !insecure_dev {
            return Err(ConfigError::new(
                "`security.insecure_plaintext` / `security.insecure_no_auth` \
                 (RELAY_INSECURE_PLAINTEXT, RELAY_INSECURE_NO_AUTH) turn TLS or authentication \
                 off, which only a development setup may do: unset them, or set \
                 RELAY_INSECURE_DEV=true for `relay dev` and tests",
            ));
        }
        if !plaintext {
            match (&self.tls_cert, &self.tls_key) {
                (Some(_), Some(_)) => {}
                (None, None) => {
                    return Err(ConfigError::new(
                        "missing value for `security.tls_cert` and `security.tls_key` \
                         (RELAY_TLS_CERT, RELAY_TLS_KEY): every gRPC listener serves TLS; give \
                         the certificate and key files (or RELAY_INSECURE_PLAINTEXT=true with \
                         RELAY_INSECURE_DEV=true for development)",
                    ));
                }
                (Some(_), None) => {
                    return Err(ConfigError::new(
                        "missing value for `security.tls_key` (RELAY_TLS_KEY): the certificate \
                         RELAY_TLS_CERT needs its private key",
                    ));
                }
                (None, Some(_)) => {
                    return Err(ConfigError::new(
                        "missing value for `security.tls_cert` (RELAY_TLS_CERT): the key \
                         RELAY_TLS_KEY needs its certificate",
                    ));
                }
            }
        } else if self.tls_client_ca.is_some() {
            return Err(ConfigError::new(
                "`security.tls_client_ca` (RELAY_TLS_CLIENT_CA) needs TLS, but \
                 `security.insecure_plaintext` is on",
            ));
        }
        if !no_auth {
            if self.auth_jwks.is_some() && self.auth_jwks_url.is_some() {
                return Err(ConfigError::new(
                    "`security.auth_jwks` (RELAY_AUTH_JWKS) and `security.auth_jwks_url` \
                     (RELAY_AUTH_JWKS_URL) are both set: give the keys as a file or as a URL",
                ));
            }
            if let Some(url) = &self.auth_jwks_url
                && !url.starts_with("https://")
                && !(insecure_dev && url.starts_with("http://"))
            {
                return Err(ConfigError::new(
                    "invalid value for `security.auth_jwks_url` (RELAY_AUTH_JWKS_URL): the keys \
                     that verify tokens must come over https:// (http:// only with \
                     RELAY_INSECURE_DEV=true)",
                ));
            }
            if self.auth_jwks.is_none()
                && self.auth_jwks_url.is_none()
                && self.tls_client_ca.is_none()
            {
                return Err(ConfigError::new(
                    "missing value for `security.auth_jwks` (RELAY_AUTH_JWKS): every RPC but \
                     health needs a credential, a bearer token checked against a JWKS or a \
                     client certificate (RELAY_TLS_CLIENT_CA); or RELAY_INSECURE_NO_AUTH=true \
                     with RELAY_INSECURE_DEV=true for development",
                ));
            }
            if self.auth_jwks.is_some() || self.auth_jwks_url.is_some() {
                for (key, value, variable) in [
                    ("auth_issuer", &self.auth_issuer, "RELAY_AUTH_ISSUER"),
                    ("auth_audience", &self.auth_audience, "RELAY_AUTH_AUDIENCE"),
                ] {
                    if value.as_deref().is_none_or(str::is_empty) {
                        return Err(ConfigError::new(format!(
                            "missing value for `security.{key}` ({variable}): tokens checked \
                             against RELAY_AUTH_JWKS or RELAY_AUTH_JWKS_URL must carry it"
                        )));
                    }
                }
            }
        }
        self.limits.validate()?;
        if self.tls_client_cert.is_some() != self.tls_client_key.is_some() {
            return Err(ConfigError::new(
                "`security.tls_client_cert` and `security.tls_client_key` \
                 (RELAY_SECURITY__TLS_CLIENT_CERT, RELAY_SECURITY__TLS_CLIENT_KEY) go together",
            ));
        }
        Ok(Posture {
            plaintext,
            no_auth,
            explicit: self.insecure_plaintext == Some(true) || self.insecure_no_auth == Some(true),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secure() -> SecuritySettings {
        SecuritySettings {
            tls_cert: Some("cert.pem".into()),
            tls_key: Some("key.pem".into()),
            auth_jwks: Some("jwks.json".into()),
            auth_issuer: Some("https://idp".into()),
            auth_audience: Some("relay".into()),
            ..SecuritySettings::default()
        }
    }

    #[test]
    fn secure_is_the_default() {
        let error = SecuritySettings::default()
            .posture(false)
            .expect_err("nothing configured");
        assert!(error.to_string().contains("RELAY_TLS_CERT"), "{error}");
        let posture = secure().posture(false).expect("secure");
        assert!(!posture.plaintext && !posture.no_auth);
    }

    #[test]
    fn insecure_settings_need_a_development_setup() {
        let plaintext = SecuritySettings {
            insecure_plaintext: Some(true),
            ..secure()
        };
        let error = plaintext.posture(false).expect_err("refused");
        assert!(error.to_string().contains("RELAY_INSECURE_DEV"), "{error}");
        assert!(plaintext.posture(true).expect("development").plaintext);

        // A development setup with nothing configured: both off, as `relay dev` expects.
        let posture = SecuritySettings::default().posture(true).expect("dev");
        assert!(posture.plaintext && posture.no_auth);
        // With TLS and a JWKS configured, a development setup is secure too.
        let posture = secure().posture(true).expect("dev");
        assert!(!posture.plaintext && !posture.no_auth);
    }

    #[test]
    fn a_jwks_url_replaces_the_file_and_must_be_https_outside_development() {
        let url = |url: &str| SecuritySettings {
            auth_jwks: None,
            auth_jwks_url: Some(url.to_owned()),
            ..secure()
        };
        assert!(url("https://idp/jwks").posture(false).is_ok());
        let error = url("http://idp/jwks")
            .posture(false)
            .expect_err("plain http");
        assert!(error.to_string().contains("RELAY_AUTH_JWKS_URL"), "{error}");
        assert!(url("http://127.0.0.1:1/jwks").posture(true).is_ok());
        let both = SecuritySettings {
            auth_jwks_url: Some(String::from("https://idp/jwks")),
            ..secure()
        };
        assert!(both.posture(false).is_err(), "a file and a URL");
        let error = SecuritySettings {
            auth_issuer: None,
            ..url("https://idp/jwks")
        }
        .posture(false)
        .expect_err("issuer");
        assert!(error.to_string().contains("RELAY_AUTH_ISSUER"), "{error}");
    }

    #[test]
    fn incomplete_settings_name_their_variable() {
        let error = SecuritySettings {
            auth_issuer: None,
            ..secure()
        }
        .posture(false)
        .expect_err("issuer missing");
        assert!(error.to_string().contains("RELAY_AUTH_ISSUER"), "{error}");
        let error = SecuritySettings {
            tls_key: None,
            ..secure()
        }
        .posture(false)
        .expect_err("key missing");
        assert!(error.to_string().contains("RELAY_TLS_KEY"), "{error}");
    }
}
