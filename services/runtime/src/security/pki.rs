//! A local certificate authority, certificates, a token signing key and tokens: what
//! `relay dev` puts in its data folder and what tests make for themselves. Keys are generated
//! with rcgen (ring) and tokens signed with jsonwebtoken; nothing here is fit to protect a
//! deployment's CA, which an operator keeps elsewhere.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk, jwk::JwkSet};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde::Serialize;

/// A PKI error, with what was being made.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {message}")]
pub struct PkiError {
    context: String,
    message: String,
}

fn fail<E: std::fmt::Display>(context: &str) -> impl Fn(E) -> PkiError + '_ {
    move |error| PkiError {
        context: context.to_owned(),
        message: error.to_string(),
    }
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct CertifiedKey {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key (PKCS#8), PEM.
    pub key_pem: String,
}

/// A certificate authority that signs server and client certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Authority {
    /// A new self-signed CA named `name` (ECDSA P-256).
    ///
    /// # Errors
    /// When the key or certificate cannot be made.
    pub fn new(name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(fail("CA key"))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(fail("CA"))?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).map_err(fail("CA certificate"))?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA's certificate, PEM: what servers and clients trust.
    #[must_use]
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A server certificate for `names` (DNS names or IP addresses), with `common_name`.
    ///
    /// # Errors
    /// When the certificate cannot be made.
    pub fn server(&self, common_name: &str, names: &[&str]) -> Result<CertifiedKey, PkiError> {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names).map_err(fail("server certificate"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(params, "server certificate")
    }

    /// A client certificate whose identity is `identity`: a SPIFFE URI SAN when it starts
    /// with `spiffe://`, else the subject CN.
    ///
    /// # Errors
    /// When the certificate cannot be made.
    pub fn client(&self, identity: &str) -> Result<CertifiedKey, PkiError> {
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(fail("client certificate"))?;
        if identity.starts_with("spiffe://") {
            let uri = rcgen::string::Ia5String::try_from(identity)
                .map_err(fail("client certificate URI"))?;
            params.subject_alt_names = vec![SanType::URI(uri)];
            params
                .distinguished_name
                .push(DnType::CommonName, "relay client");
        } else {
            params.distinguished_name.push(DnType::CommonName, identity);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(params, "client certificate")
    }

    fn sign(&self, params: CertificateParams, what: &str) -> Result<CertifiedKey, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(fail(what))?;
        let cert = params.signed_by(&key, &self.issuer).map_err(fail(what))?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A key that signs bearer tokens (ES256), and the JWKS that verifies them.
#[derive(Clone)]
pub struct TokenSigner {
    key: EncodingKey,
    key_pem: String,
    kid: String,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// What a token says about its bearer, beside issuer and audience.
#[derive(Debug, Clone, Default)]
pub struct TokenClaims {
    /// `sub`.
    pub subject: String,
    /// Scopes by name, written space-separated in `scope`.
    pub scopes: Vec<String>,
    /// `cad_system`, when the credential is bound to one CAD.
    pub cad_system: Option<String>,
    /// `team_id`, when bound to one team.
    pub team_id: Option<String>,
    /// `regions`, when limited to some.
    pub regions: Vec<String>,
}

#[derive(Serialize)]
struct Encoded<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    iat: i64,
    nbf: i64,
    exp: i64,
    scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    cad_system: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    team_id: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    regions: &'a [String],
}

impl TokenSigner {
    /// A new ES256 signing key with key id `kid`.
    ///
    /// # Errors
    /// When the key cannot be made.
    pub fn generate(kid: &str) -> Result<Self, PkiError> {
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(fail("signing key"))?;
        Self::from_pem(&key.serialize_pem(), kid)
    }

    /// The signing key in `pem` (PKCS#8, P-256) with key id `kid`.
    ///
    /// # Errors
    /// When the key is not a P-256 PKCS#8 key.
    pub fn from_pem(pem: &str, kid: &str) -> Result<Self, PkiError> {
        let key = EncodingKey::from_ec_pem(pem.as_bytes()).map_err(fail("signing key"))?;
        Ok(Self {
            key,
            key_pem: pem.to_owned(),
            kid: kid.to_owned(),
        })
    }

    /// The private key, PEM, to keep in a file that only its owner reads.
    #[must_use]
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The public JWKS (one key, with `kid` and `alg`) that verifies this signer's tokens.
    ///
    /// # Errors
    /// When the public key cannot be derived.
    pub fn jwks(&self) -> Result<JwkSet, PkiError> {
        let mut jwk = Jwk::from_encoding_key(&self.key, Algorithm::ES256).map_err(fail("JWKS"))?;
        jwk.common.key_id = Some(self.kid.clone());
        Ok(JwkSet { keys: vec![jwk] })
    }

    /// A token for `claims` from `issuer` to `audience`, valid from `not_before` (seconds
    /// from now, may be negative) for `lifetime_seconds` from now.
    ///
    /// # Errors
    /// When signing fails.
    pub fn issue(
        &self,
        issuer: &str,
        audience: &str,
        claims: &TokenClaims,
        not_before: i64,
        lifetime_seconds: i64,
    ) -> Result<String, PkiError> {
        let now = chrono::Utc::now().timestamp();
        let scopes: BTreeSet<&str> = claims.scopes.iter().map(String::as_str).collect();
        let encoded = Encoded {
            iss: issuer,
            aud: audience,
            sub: &claims.subject,
            iat: now,
            nbf: now + not_before,
            exp: now + lifetime_seconds,
            scope: scopes.into_iter().collect::<Vec<_>>().join(" "),
            cad_system: claims.cad_system.as_deref(),
            team_id: claims.team_id.as_deref(),
            regions: &claims.regions,
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &encoded, &self.key).map_err(fail("token"))
    }
}

/// Every scope an RPC declares, by name, sorted: what a development token carries.
#[must_use]
pub fn all_scopes() -> Vec<String> {
    let mut scopes: BTreeSet<&str> = relay_proto::scopes::METHOD_SCOPES
        .iter()
        .map(|(_, scope)| *scope)
        .filter(|scope| !scope.is_empty())
        .collect();
    scopes.insert("caller.details.read");
    scopes.insert("admin");
    scopes.into_iter().map(str::to_owned).collect()
}

/// The files of a development PKI in one folder (`relay dev`'s data folder).
#[derive(Debug, Clone)]
pub struct DevFiles {
    /// The CA certificate every client trusts.
    pub ca: PathBuf,
    /// The servers' certificate (localhost, 127.0.0.1, ::1).
    pub server_cert: PathBuf,
    /// The servers' key.
    pub server_key: PathBuf,
    /// The services' own client certificate (`spiffe://relay.dev/service`).
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    /// The token signing key.
    pub signing_key: PathBuf,
    /// The JWKS that verifies tokens.
    pub jwks: PathBuf,
}

/// The issuer of development tokens.
pub const DEV_ISSUER: &str = "https://relay.dev.local";
/// The audience of development tokens.
pub const DEV_AUDIENCE: &str = "relay";
/// The key id of the development signing key.
pub const DEV_KID: &str = "relay-dev";
/// The identity of the services' own client certificate in development.
pub const DEV_SERVICE_IDENTITY: &str = "spiffe://relay.dev/service";

impl DevFiles {
    /// The file names in `dir`.
    #[must_use]
    pub fn in_dir(dir: &Path) -> Self {
        let file = |name: &str| dir.join(name);
        Self {
            ca: file("ca.pem"),
            server_cert: file("server.pem"),
            server_key: file("server-key.pem"),
            client_cert: file("client.pem"),
            client_key: file("client-key.pem"),
            signing_key: file("signing-key.pem"),
            jwks: file("jwks.json"),
        }
    }

    /// Makes the files in `dir` unless they are all there already (a data folder kept
    /// between runs keeps its CA, so tokens issued earlier stay valid).
    ///
    /// # Errors
    /// When a file cannot be written or a key made.
    pub fn ensure(dir: &Path) -> Result<Self, PkiError> {
        let files = Self::in_dir(dir);
        let all = [
            &files.ca,
            &files.server_cert,
            &files.server_key,
            &files.client_cert,
            &files.client_key,
            &files.signing_key,
            &files.jwks,
        ];
        if all.iter().all(|path| path.is_file()) {
            return Ok(files);
        }
        let authority = Authority::new("Relay development CA")?;
        let server = authority.server("localhost", &["localhost", "127.0.0.1", "::1"])?;
        let client = authority.client(DEV_SERVICE_IDENTITY)?;
        let signer = TokenSigner::generate(DEV_KID)?;
        let jwks = serde_json::to_string_pretty(&signer.jwks()?).map_err(fail("JWKS"))?;
        let write = |path: &Path, text: &str, private: bool| -> Result<(), PkiError> {
            write_file(path, text, private).map_err(fail(&path.display().to_string()))
        };
        write(&files.ca, authority.cert_pem(), false)?;
        write(&files.server_cert, &server.cert_pem, false)?;
        write(&files.server_key, &server.key_pem, true)?;
        write(&files.client_cert, &client.cert_pem, false)?;
        write(&files.client_key, &client.key_pem, true)?;
        write(&files.signing_key, signer.key_pem(), true)?;
        write(&files.jwks, &jwks, false)?;
        Ok(files)
    }

    /// `builder` serving TLS with these files and checking tokens against their JWKS, and
    /// calling other services over TLS with the services' own client certificate, as `relay
    /// dev` does: [`Self::configure_server`] and [`Self::configure_client`].
    #[must_use]
    pub fn configure(
        &self,
        builder: crate::config::ConfigBuilder,
        service_subjects: &[&str],
    ) -> crate::config::ConfigBuilder {
        self.configure_client(self.configure_server(builder, service_subjects))
    }

    /// `builder` serving TLS with these files (client certificates from this CA accepted),
    /// checking tokens against their JWKS, the services' own identity granted every scope;
    /// the token subjects in `service_subjects` get the service class of rate limit.
    #[must_use]
    pub fn configure_server(
        &self,
        builder: crate::config::ConfigBuilder,
        service_subjects: &[&str],
    ) -> crate::config::ConfigBuilder {
        builder
            .set("security.tls_cert", &self.server_cert)
            .set("security.tls_key", &self.server_key)
            .set("security.tls_client_ca", &self.ca)
            .set("security.auth_jwks", &self.jwks)
            .set("security.auth_issuer", DEV_ISSUER)
            .set("security.auth_audience", DEV_AUDIENCE)
            .set(
                "security.identities",
                serde_json::json!({ DEV_SERVICE_IDENTITY: { "scopes": all_scopes() } }),
            )
            .set("security.limits.service_subjects", service_subjects)
    }

    /// `builder` calling other services over TLS trusting this CA, with the services' own
    /// client certificate.
    #[must_use]
    pub fn configure_client(
        &self,
        builder: crate::config::ConfigBuilder,
    ) -> crate::config::ConfigBuilder {
        builder
            .set("security.tls_ca", &self.ca)
            .set("security.tls_client_cert", &self.client_cert)
            .set("security.tls_client_key", &self.client_key)
    }

    /// A token for `subject` with every scope, valid for `lifetime_seconds`.
    ///
    /// # Errors
    /// When the key file cannot be read or the token signed.
    pub fn token(&self, subject: &str, lifetime_seconds: i64) -> Result<String, PkiError> {
        let claims = TokenClaims {
            subject: subject.to_owned(),
            scopes: all_scopes(),
            ..TokenClaims::default()
        };
        self.signer()?
            .issue(DEV_ISSUER, DEV_AUDIENCE, &claims, 0, lifetime_seconds)
    }

    /// The signer of development tokens.
    ///
    /// # Errors
    /// When the key file cannot be read.
    pub fn signer(&self) -> Result<TokenSigner, PkiError> {
        let pem = std::fs::read_to_string(&self.signing_key)
            .map_err(fail(&self.signing_key.display().to_string()))?;
        TokenSigner::from_pem(&pem, DEV_KID)
    }
}

/// Writes `text` to `path`; a private file is readable by its owner only (on Unix).
///
/// # Errors
/// When the file cannot be written.
pub fn write_file(path: &Path, text: &str, private: bool) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        if private {
            options.mode(0o600);
        }
        std::io::Write::write_all(&mut options.open(path)?, text.as_bytes())
    }
    #[cfg(not(unix))]
    {
        let _ = private;
        std::fs::write(path, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::auth::JwtVerifier;

    #[test]
    fn issued_tokens_verify_against_the_jwks_and_carry_their_claims() {
        let signer = TokenSigner::generate("k1").expect("key");
        let jwks = signer.jwks().expect("jwks");
        let verifier = JwtVerifier::from_jwks(&jwks, "iss", "aud", 5).expect("verifier");
        let claims = TokenClaims {
            subject: String::from("cad-a-adapter"),
            scopes: vec![String::from("incidents.submit")],
            cad_system: Some(String::from("cad-a")),
            ..TokenClaims::default()
        };
        let token = signer.issue("iss", "aud", &claims, 0, 60).expect("token");
        let principal = verifier.verify(&token).expect("valid");
        assert_eq!(principal.subject, "cad-a-adapter");
        assert!(principal.has_scope("incidents.submit"));
        assert_eq!(principal.cad_system.as_deref(), Some("cad-a"));

        let expired = signer
            .issue("iss", "aud", &claims, -120, -60)
            .expect("token");
        assert!(verifier.verify(&expired).is_err());
        let early = signer
            .issue("iss", "aud", &claims, 120, 600)
            .expect("token");
        assert!(verifier.verify(&early).is_err());
        let other_issuer = signer.issue("other", "aud", &claims, 0, 60).expect("token");
        assert!(verifier.verify(&other_issuer).is_err());
        let other_audience = signer.issue("iss", "other", &claims, 0, 60).expect("token");
        assert!(verifier.verify(&other_audience).is_err());
        let stranger = TokenSigner::generate("k1").expect("key");
        let forged = stranger.issue("iss", "aud", &claims, 0, 60).expect("token");
        assert!(verifier.verify(&forged).is_err());
    }

    #[test]
    fn every_declared_scope_is_a_development_scope() {
        let scopes = all_scopes();
        for (_, scope) in relay_proto::scopes::METHOD_SCOPES {
            assert!(scopes.iter().any(|s| s == scope), "{scope}");
        }
    }
}
