//! What the security tests share (tests/tests/security.rs, eido_http.rs): a CA, a server
//! certificate and a token signer made for each run, the files and variables the services
//! read, services started over TLS with authentication, and TLS clients.
//!
//! Keys, certificates and tokens are made here, for each run (no committed private key).

// Each test file uses a part of this module.
#![allow(dead_code)]

pub mod trail;

use std::{path::Path, time::Duration};

use relay_runtime::security::pki::{Authority, CertifiedKey, TokenClaims, TokenSigner, all_scopes};
use relay_tests::ServiceProcess;
use tonic::{
    Status,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

pub const ISSUER: &str = "https://idp.relay.test";
pub const AUDIENCE: &str = "relay-test";
pub const KID: &str = "test-key";
/// The identity of the client certificate the configuration maps to `directory.read`.
pub const CLIENT_IDENTITY: &str = "spiffe://relay.test/referral-desk";

/// A CA, a server certificate, a token signer and the files the services read.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub authority: Authority,
    pub signer: TokenSigner,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let authority = Authority::new("relay test CA").expect("CA");
        let signer = TokenSigner::generate(KID).expect("signing key");
        let pki = Self {
            dir,
            authority,
            signer,
        };
        pki.write_server_cert(&pki.authority);
        write(&pki.path("client-ca.pem"), pki.authority.cert_pem());
        let jwks = serde_json::to_string(&pki.signer.jwks().expect("jwks")).expect("json");
        write(&pki.path("jwks.json"), &jwks);
        write(
            &pki.path("relay.toml"),
            &format!(
                "[security.identities.\"{CLIENT_IDENTITY}\"]\nscopes = [\"directory.read\"]\n"
            ),
        );
        pki
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a server certificate signed by `authority`, key first, each file replaced
    /// at once (as a Secret mount swaps them).
    pub fn write_server_cert(&self, authority: &Authority) {
        let server = authority
            .server("localhost", &["localhost", "127.0.0.1"])
            .expect("server cert");
        write(&self.path("server-key.pem"), &server.key_pem);
        write(&self.path("server.pem"), &server.cert_pem);
    }

    pub fn env(&self) -> Vec<(String, String)> {
        let path = |name: &str| self.path(name).display().to_string();
        vec![
            ("RELAY_CONFIG".into(), path("relay.toml")),
            ("RELAY_TLS_CERT".into(), path("server.pem")),
            ("RELAY_TLS_KEY".into(), path("server-key.pem")),
            ("RELAY_TLS_CLIENT_CA".into(), path("client-ca.pem")),
            ("RELAY_AUTH_JWKS".into(), path("jwks.json")),
            ("RELAY_AUTH_ISSUER".into(), ISSUER.into()),
            ("RELAY_AUTH_AUDIENCE".into(), AUDIENCE.into()),
            (
                "RELAY_SECURITY__TLS_RELOAD_INTERVAL_MS".into(),
                "100".into(),
            ),
            ("RELAY_ADMIN_LISTEN".into(), "127.0.0.1:0".into()),
            // The table-driven tests send hundreds of refused credentials from this one
            // address within seconds; the test of that limit sets its own.
            (
                "RELAY_SECURITY__LIMITS__REFUSALS_PER_SECOND".into(),
                "100000".into(),
            ),
            (
                "RELAY_SECURITY__LIMITS__REFUSALS_BURST".into(),
                "100000".into(),
            ),
        ]
    }

    pub fn token(&self, scopes: Vec<String>) -> String {
        self.token_from(&self.signer, ISSUER, AUDIENCE, scopes, 0, 300)
    }

    /// A token with `scopes` and the bindings of `claims` (its subject and scopes replaced).
    pub fn bound_token(&self, scopes: &[&str], claims: TokenClaims) -> String {
        let claims = TokenClaims {
            subject: String::from("tester"),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            ..claims
        };
        self.signer
            .issue(ISSUER, AUDIENCE, &claims, 0, 300)
            .expect("token")
    }

    /// A token for `subject` with every scope, signed by `signer`.
    pub fn token_for(signer: &TokenSigner, subject: &str) -> String {
        let claims = TokenClaims {
            subject: subject.to_owned(),
            scopes: all_scopes(),
            ..TokenClaims::default()
        };
        signer
            .issue(ISSUER, AUDIENCE, &claims, 0, 300)
            .expect("token")
    }

    pub fn token_from(
        &self,
        signer: &TokenSigner,
        issuer: &str,
        audience: &str,
        scopes: Vec<String>,
        not_before: i64,
        lifetime: i64,
    ) -> String {
        let claims = TokenClaims {
            subject: String::from("tester"),
            scopes,
            ..TokenClaims::default()
        };
        signer
            .issue(issuer, audience, &claims, not_before, lifetime)
            .expect("token")
    }
}

pub fn write(path: &Path, text: &str) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).expect("write");
    std::fs::rename(&temporary, path).expect("rename");
}

/// The database of `binary` as [`start`] starts it: a SQLite file in the run's folder.
pub fn database_url(pki: &Pki, binary: &str) -> String {
    format!("sqlite://{}", pki.path(&format!("{binary}.db")).display())
}

/// Starts `binary` over TLS with auth, on SQLite (migrated first) and in-memory live state:
/// the boundary is the same whatever the storage.
pub fn start(pki: &Pki, binary: &str, extra: &[(&str, &str)]) -> ServiceProcess {
    start_without(pki, binary, extra, &[])
}

/// As [`start`], without the variables named in `without` (`RELAY_AUTH_JWKS`, for a JWKS URL).
pub fn start_without(
    pki: &Pki,
    binary: &str,
    extra: &[(&str, &str)],
    without: &[&str],
) -> ServiceProcess {
    let database = database_url(pki, binary);
    let mut env: Vec<(String, String)> = pki.env();
    env.retain(|(key, _)| !without.contains(&key.as_str()));
    env.push(("RELAY_DATABASE_URL".into(), database));
    env.push(("RELAY_PAGE_TOKEN_SECRET".into(), "test-page-secret".into()));
    env.push(("RELAY_AVAILABILITY__BACKEND".into(), "memory".into()));
    env.push(("RELAY_ROUTING__FLEET".into(), "memory".into()));
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let borrowed: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let migrated = std::process::Command::new(relay_tests::binary_path(binary))
        .arg("migrate")
        .env_clear()
        .env("RELAY_INSECURE_DEV", "true")
        .envs(borrowed.iter().copied())
        .output()
        .expect("run migrate");
    assert!(
        migrated.status.success(),
        "{binary} migrate: {}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    ServiceProcess::start(binary, &borrowed)
}

pub async fn tls_channel(
    process: &ServiceProcess,
    ca_pem: &str,
    identity: Option<&CertifiedKey>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some(identity) = identity {
        tls = tls.identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem));
    }
    Endpoint::from_shared(format!("https://127.0.0.1:{}", process.addr().port()))
        .expect("endpoint")
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// A bearer token on every call of a typed client.
#[derive(Clone)]
pub struct Bearer(pub tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl Bearer {
    pub fn new(token: &str) -> Self {
        Self(format!("Bearer {token}").parse().expect("metadata"))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

pub type Authed = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

pub fn intake_client(
    channel: &Channel,
    token: &str,
) -> relay_proto::intake::intake_service_client::IntakeServiceClient<Authed> {
    relay_proto::intake::intake_service_client::IntakeServiceClient::with_interceptor(
        channel.clone(),
        Bearer::new(token),
    )
}

pub fn start_intake(pki: &Pki) -> ServiceProcess {
    start(
        pki,
        "relay-intake",
        &[
            ("RELAY_INTAKE__SUBMIT_WAIT_MS", "10"),
            ("RELAY_INTAKE__CONSUME_UPSTREAM", "false"),
        ],
    )
}

/// Starts intake over TLS with authentication, its EIDO HTTP port on a free port: the
/// process and that port's address. `extra` adds variables (rate limits, say).
pub fn start_intake_http(
    pki: &Pki,
    extra: &[(&str, &str)],
) -> (ServiceProcess, std::net::SocketAddr) {
    let http: std::net::SocketAddr = format!("127.0.0.1:{}", relay_tests::free_port())
        .parse()
        .expect("address");
    let listen = http.to_string();
    let mut env = vec![
        ("RELAY_INTAKE__SUBMIT_WAIT_MS", "10"),
        ("RELAY_INTAKE__CONSUME_UPSTREAM", "false"),
        ("RELAY_HTTP_LISTEN", listen.as_str()),
    ];
    env.extend_from_slice(extra);
    (start(pki, "relay-intake", &env), http)
}

/// One HTTP answer: its status, headers (names lowercase) and body.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    /// The value of header `name` (lowercase), when present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|error| panic!("{error}: {}", self.body))
    }

    /// The `reason` of a JSON error body.
    pub fn reason(&self) -> String {
        self.json()["error"]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// The TLS client configuration trusting `ca_pem`, with `identity` as client certificate.
fn client_tls(ca_pem: &str, identity: Option<&CertifiedKey>) -> rustls::ClientConfig {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA");
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots);
    let mut config = match identity {
        Some(identity) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .expect("certificate"),
                PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).expect("key"),
            )
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// One HTTP/1.1 exchange over TLS (trusting `ca_pem`), with a bearer `token` when given.
///
/// # Errors
/// When the connection or the handshake fails.
pub async fn https(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    identity: Option<&CertifiedKey>,
    (method, path, token, body): (&str, &str, Option<&str>, &str),
) -> std::io::Result<HttpAnswer> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connector =
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(client_tls(ca_pem, identity)));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut stream = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(std::io::Error::other)??;
    let authorization = token.map_or_else(String::new, |token| {
        format!("Authorization: Bearer {token}\r\n")
    });
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         {authorization}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    // A server closing a TLS connection without close_notify is an error to rustls; what
    // was read before it is the whole answer.
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP answer: {text}")))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Ok(HttpAnswer {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// A process's stderr, kept as it is read ([`ServiceProcess::stderr_lines`] hands out each
/// line once), so a test can wait for a line instead of sleeping.
#[derive(Debug, Default)]
pub struct Stderr {
    pub lines: Vec<String>,
}

impl Stderr {
    /// Reads what `process` wrote since the last call.
    pub fn read(&mut self, process: &ServiceProcess) -> &[String] {
        self.lines.extend(process.stderr_lines());
        &self.lines
    }

    /// Waits until the lines read so far satisfy `done`, for at most `limit`.
    ///
    /// # Panics
    /// When they do not in time, with the lines.
    pub async fn wait_for(
        &mut self,
        process: &ServiceProcess,
        limit: Duration,
        what: &str,
        done: impl Fn(&[String]) -> bool,
    ) {
        let deadline = std::time::Instant::now() + limit;
        while !done(self.read(process)) {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: not within {limit:?}; stderr: {:?}",
                self.lines
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
