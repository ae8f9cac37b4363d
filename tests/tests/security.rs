//! The security boundary (DESIGN.md guarantee 9, issue 14), against the real service
//! binaries over TLS: every RPC of every service, from the descriptors' scope table, refuses
//! a call without a valid credential (UNAUTHENTICATED) or without its scope
//! (PERMISSION_DENIED) and lets the right scope through; a client that does not trust the
//! CA, or presents a certificate from another CA, fails at the handshake; a rotated server
//! certificate is served without a restart; and no token reaches a log line.
//!
//! Keys, certificates and tokens are made here, for each run (no committed private key).

use std::{path::Path, time::Duration};

use relay_runtime::security::pki::{Authority, CertifiedKey, TokenClaims, TokenSigner, all_scopes};
use relay_tests::{ServiceProcess, raw::RawCodec};
use tonic::{
    Code, Status,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use tonic_types::StatusExt;

const ISSUER: &str = "https://idp.relay.test";
const AUDIENCE: &str = "relay-test";
const KID: &str = "test-key";
/// The identity of the client certificate the configuration maps to `directory.read`.
const CLIENT_IDENTITY: &str = "spiffe://relay.test/referral-desk";

/// A CA, a server certificate, a token signer and the files the services read.
struct Pki {
    dir: tempfile::TempDir,
    authority: Authority,
    signer: TokenSigner,
}

impl Pki {
    fn new() -> Self {
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

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a server certificate signed by `authority`, key first, each file replaced
    /// at once (as a Secret mount swaps them).
    fn write_server_cert(&self, authority: &Authority) {
        let server = authority
            .server("localhost", &["localhost", "127.0.0.1"])
            .expect("server cert");
        write(&self.path("server-key.pem"), &server.key_pem);
        write(&self.path("server.pem"), &server.cert_pem);
    }

    fn env(&self) -> Vec<(String, String)> {
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
        ]
    }

    fn token(&self, scopes: Vec<String>) -> String {
        self.token_from(&self.signer, ISSUER, AUDIENCE, scopes, 0, 300)
    }

    /// A token for `subject` with every scope, signed by `signer`.
    fn token_for(signer: &TokenSigner, subject: &str) -> String {
        let claims = TokenClaims {
            subject: subject.to_owned(),
            scopes: all_scopes(),
            ..TokenClaims::default()
        };
        signer
            .issue(ISSUER, AUDIENCE, &claims, 0, 300)
            .expect("token")
    }

    fn token_from(
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

fn write(path: &Path, text: &str) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).expect("write");
    std::fs::rename(&temporary, path).expect("rename");
}

/// Starts `binary` over TLS with auth, on SQLite (migrated first) and in-memory live state:
/// the boundary is the same whatever the storage.
fn start(pki: &Pki, binary: &str, extra: &[(&str, &str)]) -> ServiceProcess {
    start_without(pki, binary, extra, &[])
}

/// As [`start`], without the variables named in `without` (`RELAY_AUTH_JWKS`, for a JWKS URL).
fn start_without(
    pki: &Pki,
    binary: &str,
    extra: &[(&str, &str)],
    without: &[&str],
) -> ServiceProcess {
    let database = format!("sqlite://{}", pki.path(&format!("{binary}.db")).display());
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

async fn tls_channel(
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

/// Whether a new TLS connection trusting `ca_pem` (with `identity`) gets a health answer:
/// `false` when the handshake fails, whichever side refuses it.
async fn handshake_ok(
    process: &ServiceProcess,
    ca_pem: &str,
    identity: Option<&CertifiedKey>,
) -> bool {
    match tls_channel(process, ca_pem, identity).await {
        Err(_) => false,
        Ok(channel) => call(&channel, "/grpc.health.v1.Health/Check", None)
            .await
            .is_ok(),
    }
}

/// Calls the method at `path` with an empty request and `token`; `Ok` when the call got
/// past the auth layer (an answer, a stream, or any error from the service itself).
async fn call(channel: &Channel, path: &str, token: Option<&str>) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|error| Status::unavailable(error.to_string()))?;
    let mut request = tonic::Request::new(futures_once());
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("metadata"),
        );
    }
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(path).expect("path");
    // Streaming both ways fits every RPC kind on the wire; a refusal is trailers-only and
    // arrives at once, so a call still running after the wait got past the layer.
    match tokio::time::timeout(
        Duration::from_secs(3),
        grpc.streaming(request, path, RawCodec),
    )
    .await
    {
        Ok(Ok(_)) | Err(_) => Ok(()),
        Ok(Err(status)) => Err(status),
    }
}

fn futures_once() -> tokio_stream::Once<Vec<u8>> {
    tokio_stream::once(Vec::new())
}

/// Whether a call got past the auth layer: answered, or refused by the service itself (an
/// empty request is rarely valid), not UNAUTHENTICATED nor short of a scope.
fn past_auth(result: Result<(), Status>) -> bool {
    match result {
        Ok(()) => true,
        Err(status) => status.code() != Code::Unauthenticated && reason(&status) != "SCOPE_MISSING",
    }
}

fn reason(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default()
}

fn assert_refused(result: Result<(), Status>, code: Code, why: &str, path: &str, case: &str) {
    let status = result.expect_err(&format!("{case}: {path} must be refused"));
    assert_eq!(status.code(), code, "{case}: {path}: {status:?}");
    assert_eq!(reason(&status), why, "{case}: {path}: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_of_every_service_needs_a_valid_credential_with_its_scope() {
    let pki = Pki::new();
    let processes = [
        ("relay-intake", start(&pki, "relay-intake", &[])),
        ("relay-availability", start(&pki, "relay-availability", &[])),
        ("relay-routing", start(&pki, "relay-routing", &[])),
        ("relay-directory", start(&pki, "relay-directory", &[])),
    ];
    let served = |binary: &str, path: &str| match binary {
        "relay-intake" => path.starts_with("/relay.intake.") || path.starts_with("/relay.reports."),
        "relay-availability" => path.starts_with("/relay.availability."),
        "relay-routing" => path.starts_with("/relay.routing."),
        _ => path.starts_with("/relay.directory."),
    };
    let all = all_scopes();
    let stranger = TokenSigner::generate(KID).expect("another key, same kid");
    let expired = pki.token_from(&pki.signer, ISSUER, AUDIENCE, all.clone(), -600, -300);
    let not_yet = pki.token_from(&pki.signer, ISSUER, AUDIENCE, all.clone(), 600, 900);
    let forged = pki.token_from(&stranger, ISSUER, AUDIENCE, all.clone(), 0, 300);
    let other_issuer = pki.token_from(&pki.signer, "https://other", AUDIENCE, all.clone(), 0, 300);
    let other_audience = pki.token_from(&pki.signer, ISSUER, "other", all.clone(), 0, 300);
    let mut checked = 0;
    for (binary, process) in &processes {
        let channel = tls_channel(process, pki.authority.cert_pem(), None)
            .await
            .unwrap_or_else(|error| panic!("{binary}: {error:?}"));
        // Health stays open for probes; reflection needs a credential.
        call(&channel, "/grpc.health.v1.Health/Check", None)
            .await
            .unwrap_or_else(|status| panic!("{binary}: health refused: {status:?}"));
        assert_refused(
            call(
                &channel,
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                None,
            )
            .await,
            Code::Unauthenticated,
            "CREDENTIALS_MISSING",
            "reflection",
            binary,
        );
        for (path, scope) in relay_proto::scopes::METHOD_SCOPES {
            if !served(binary, path) {
                continue;
            }
            checked += 1;
            assert_refused(
                call(&channel, path, None).await,
                Code::Unauthenticated,
                "CREDENTIALS_MISSING",
                path,
                "no credential",
            );
            for (case, token) in [
                ("expired", &expired),
                ("not yet valid", &not_yet),
                ("wrong signature", &forged),
                ("wrong issuer", &other_issuer),
                ("wrong audience", &other_audience),
                ("not a JWT", &String::from("not.a.jwt")),
            ] {
                assert_refused(
                    call(&channel, path, Some(token)).await,
                    Code::Unauthenticated,
                    "CREDENTIALS_INVALID",
                    path,
                    case,
                );
            }
            let without: Vec<String> = all.iter().filter(|s| *s != scope).cloned().collect();
            let status = call(&channel, path, Some(&pki.token(without)))
                .await
                .expect_err("every scope but its own");
            assert_eq!(status.code(), Code::PermissionDenied, "{path}: {status:?}");
            assert_eq!(reason(&status), "SCOPE_MISSING", "{path}");
            let info = status
                .get_error_details()
                .error_info()
                .cloned()
                .expect("info");
            assert_eq!(info.metadata.get("scope").map(String::as_str), Some(*scope));
            assert!(
                path[1..].starts_with(&info.domain),
                "{path}: domain {}",
                info.domain
            );

            // With its scope alone, the call reaches the service (whose answer to an empty
            // request is its own business).
            let only = pki.token(vec![(*scope).to_owned()]);
            let result = call(&channel, path, Some(&only)).await;
            assert!(
                past_auth(result.clone()),
                "{path} with its scope `{scope}`: {result:?}"
            );
        }
    }
    assert_eq!(
        checked,
        relay_proto::scopes::METHOD_SCOPES.len(),
        "every RPC is served by one of the four binaries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refuses_strangers_and_picks_up_a_rotated_certificate() {
    let pki = Pki::new();
    let process = start(&pki, "relay-directory", &[]);
    let search = "/relay.directory.v1.DirectoryService/SearchServices";
    let upsert = "/relay.directory.v1.DirectoryService/UpsertService";

    // A client that does not trust the server's CA fails.
    let other = Authority::new("another CA").expect("CA");
    assert!(
        !handshake_ok(&process, other.cert_pem(), None).await,
        "a client that does not trust the CA got through"
    );

    // A client certificate from another CA is refused at the handshake: even health, which
    // needs no credential, fails.
    let foreign = other.client(CLIENT_IDENTITY).expect("foreign client cert");
    assert!(
        !handshake_ok(&process, pki.authority.cert_pem(), Some(&foreign)).await,
        "a certificate from another CA passed the handshake"
    );

    // A certificate from the trusted CA identifies its holder: mapped to directory.read.
    let trusted = pki.authority.client(CLIENT_IDENTITY).expect("client cert");
    let channel = tls_channel(&process, pki.authority.cert_pem(), Some(&trusted))
        .await
        .expect("mTLS");
    call(&channel, search, None)
        .await
        .expect("the certificate's scope lets it search");
    let status = call(&channel, upsert, None)
        .await
        .expect_err("no directory.write for this identity");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), "SCOPE_MISSING");
    // An unknown identity from the trusted CA is someone, with no scope.
    let unknown = pki.authority.client("someone-else").expect("client cert");
    let channel_unknown = tls_channel(&process, pki.authority.cert_pem(), Some(&unknown))
        .await
        .expect("mTLS");
    let status = call(&channel_unknown, search, None)
        .await
        .expect_err("no scope");
    assert_eq!(status.code(), Code::PermissionDenied);

    // Rotation: a certificate from a new CA replaces the files; the process keeps running,
    // the connection made before keeps working, and new connections get the new one.
    let before = tls_channel(&process, pki.authority.cert_pem(), None)
        .await
        .expect("old CA");
    let rotated = Authority::new("rotated CA").expect("CA");
    pki.write_server_cert(&rotated);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if handshake_ok(&process, rotated.cert_pem(), None).await {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rotated certificate was never served; stderr: {:?}",
            process.stderr_lines()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    call(&before, "/grpc.health.v1.Health/Check", None)
        .await
        .expect("the connection made before the rotation still works");
    assert!(
        !handshake_ok(&process, pki.authority.cert_pem(), None).await,
        "new connections still get the old certificate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_appears_in_any_log_line_even_at_trace() {
    let pki = Pki::new();
    let process = start(&pki, "relay-directory", &[("RELAY_LOG", "trace")]);
    let channel = tls_channel(&process, pki.authority.cert_pem(), None)
        .await
        .expect("tls");
    let good = pki.token(all_scopes());
    let expired = pki.token_from(&pki.signer, ISSUER, AUDIENCE, all_scopes(), -600, -300);
    let wrong = pki.token_from(&pki.signer, ISSUER, "other", vec![], 0, 300);
    for token in [&good, &expired, &wrong] {
        let _ = call(
            &channel,
            "/relay.directory.v1.DirectoryService/SearchServices",
            Some(token),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    process.signal("TERM");
    let mut process = process;
    let _ = process.wait_timeout(Duration::from_secs(20));
    let lines = process.stderr_lines();
    assert!(
        lines.iter().any(|line| line.contains("call refused")),
        "the refusals are logged (so the check below looks at real output): {} lines",
        lines.len()
    );
    for token in [&good, &expired, &wrong] {
        // The signature part alone is enough to replay nothing, but neither it nor the
        // claims may appear.
        let (signed, signature) = token.rsplit_once('.').expect("a JWT");
        for line in &lines {
            assert!(!line.contains(signature), "a token signature in: {line}");
            assert!(!line.contains(signed), "token claims in: {line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_is_the_default_and_insecure_needs_a_development_setup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = format!("sqlite://{}", dir.path().join("d.db").display());
    let run = |extra: &[(&str, &str)]| {
        std::process::Command::new(relay_tests::binary_path("relay-directory"))
            .env_clear()
            .env("RELAY_LISTEN", "127.0.0.1:0")
            .env("RELAY_ADMIN_LISTEN", "127.0.0.1:0")
            .env("RELAY_DATABASE_URL", &database)
            .env("RELAY_PAGE_TOKEN_SECRET", "secret")
            .envs(extra.iter().copied())
            .output()
            .expect("run relay-directory")
    };
    // Nothing configured: no start, one line naming the variables, exit 2.
    let output = run(&[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("RELAY_TLS_CERT"), "{stderr}");
    // Asking for plaintext outside a development setup is refused the same way.
    let output = run(&[
        ("RELAY_INSECURE_PLAINTEXT", "true"),
        ("RELAY_INSECURE_NO_AUTH", "true"),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("RELAY_INSECURE_DEV"), "{stderr}");
    // With it, the service starts plaintext and says so at WARN.
    let process = ServiceProcess::start(
        "relay-directory",
        &[
            ("RELAY_DATABASE_URL", &database),
            ("RELAY_ADMIN_LISTEN", "127.0.0.1:0"),
            ("RELAY_INSECURE_PLAINTEXT", "true"),
            ("RELAY_INSECURE_NO_AUTH", "true"),
        ],
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = process.stderr_lines();
    assert!(
        lines
            .iter()
            .any(|line| line.contains("WARN") && line.contains("plaintext")),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_token_issue_makes_tokens_the_services_accept() {
    let pki = Pki::new();
    let process = start(&pki, "relay-directory", &[]);
    let key = pki.path("signing-key.pem");
    write(&key, pki.signer.key_pem());
    let issue = |scopes: &[&str]| {
        let mut command = std::process::Command::new(relay_tests::binary_path("relay"));
        command
            .args(["token", "issue", "--signing-key"])
            .arg(&key)
            .args(["--kid", KID, "--issuer", ISSUER, "--audience", AUDIENCE]);
        for scope in scopes {
            command.args(["--scope", scope]);
        }
        let output = command.output().expect("run relay token issue");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    };
    let channel = tls_channel(&process, pki.authority.cert_pem(), None)
        .await
        .expect("tls");
    let search = "/relay.directory.v1.DirectoryService/SearchServices";
    let upsert = "/relay.directory.v1.DirectoryService/UpsertService";
    let reader = issue(&["directory.read"]);
    assert!(
        past_auth(call(&channel, search, Some(&reader)).await),
        "directory.read searches"
    );
    let status = call(&channel, upsert, Some(&reader))
        .await
        .expect_err("directory.read does not write");
    assert_eq!(reason(&status), "SCOPE_MISSING");
    assert!(
        past_auth(call(&channel, upsert, Some(&issue(&["all"]))).await),
        "`all` holds every scope"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_over_its_rate_limit_is_told_when_to_retry_while_others_are_served() {
    let pki = Pki::new();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    let admin_listen = admin.to_string();
    let process = start(
        &pki,
        "relay-directory",
        &[
            ("RELAY_SECURITY__LIMITS__REQUESTS_PER_SECOND", "1"),
            ("RELAY_SECURITY__LIMITS__BURST", "3"),
            ("RELAY_ADMIN_LISTEN", &admin_listen),
        ],
    );
    let channel = tls_channel(&process, pki.authority.cert_pem(), None)
        .await
        .expect("tls");
    let search = "/relay.directory.v1.DirectoryService/SearchServices";
    let busy = Pki::token_for(&pki.signer, "cad-busy");
    let calm = Pki::token_for(&pki.signer, "cad-calm");

    // The burst goes through, then the busy principal is refused with when to retry.
    let mut served = 0;
    let status = loop {
        match call(&channel, search, Some(&busy)).await {
            Err(status) if status.code() == Code::ResourceExhausted => break status,
            result => {
                assert!(past_auth(result.clone()), "{result:?}");
                served += 1;
                assert!(served <= 6, "never limited after {served} calls");
            }
        }
    };
    assert!(served >= 3, "the burst of 3 is served first, got {served}");
    assert_eq!(reason(&status), "RATE_LIMITED", "{status:?}");
    let delay = status
        .get_error_details()
        .retry_info()
        .and_then(|info| info.retry_delay)
        .expect("a RetryInfo with a delay");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(1),
        "one request per second: the next within a second, got {delay:?}"
    );

    // Another principal has a bucket of its own; health is never limited.
    let result = call(&channel, search, Some(&calm)).await;
    assert!(
        served_past_limits(&result),
        "another principal is still served: {result:?}"
    );
    call(&channel, "/grpc.health.v1.Health/Check", None)
        .await
        .expect("health is not limited");

    // After the delay it was given, the busy principal is served again.
    let deadline = std::time::Instant::now() + delay + Duration::from_secs(3);
    loop {
        let result = call(&channel, search, Some(&busy)).await;
        if served_past_limits(&result) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still refused after its retry delay: {result:?}"
        );
        tokio::time::sleep(delay.min(Duration::from_millis(200))).await;
    }

    // Refusals are counted by class, never by who.
    let (code, metrics) = relay_tests::admin_get(admin, "/metrics").await;
    assert_eq!(code, 200);
    let line = metrics
        .lines()
        .find(|line| line.starts_with("relay_rate_limited_total{"))
        .unwrap_or_else(|| panic!("no relay_rate_limited_total in:\n{metrics}"));
    assert!(line.contains("class=\"principal\""), "{line}");
    assert!(!line.contains("cad-busy"), "{line}");
}

/// Whether a call got past authentication and the rate limit.
fn served_past_limits(result: &Result<(), Status>) -> bool {
    past_auth(result.clone())
        && result
            .as_ref()
            .err()
            .is_none_or(|status| status.code() != Code::ResourceExhausted)
}

/// An HTTPS server of the test's own serving a JWKS (or an error), counting its fetches.
struct JwksServer {
    addr: std::net::SocketAddr,
    answer: std::sync::Arc<std::sync::Mutex<(u16, String)>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(authority: &Authority) -> Self {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let server = authority
            .server("localhost", &["localhost", "127.0.0.1"])
            .expect("server cert");
        let certs = CertificateDer::pem_slice_iter(server.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certs");
        let key = PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).expect("key");
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("config");
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let answer = std::sync::Arc::new(std::sync::Mutex::new((503, String::new())));
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let task = {
            let answer = std::sync::Arc::clone(&answer);
            let fetches = std::sync::Arc::clone(&fetches);
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let acceptor = acceptor.clone();
                    let answer = std::sync::Arc::clone(&answer);
                    let fetches = std::sync::Arc::clone(&fetches);
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        let mut request = Vec::new();
                        let mut buffer = [0_u8; 1024];
                        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                            match tls.read(&mut buffer).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => request.extend_from_slice(&buffer[..n]),
                            }
                        }
                        fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let (code, body) = answer.lock().expect("answer").clone();
                        let response = format!(
                            "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = tls.write_all(response.as_bytes()).await;
                        let _ = tls.shutdown().await;
                    });
                }
            })
        };
        Self {
            addr,
            answer,
            fetches,
            task,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/realms/relay/certs", self.addr.port())
    }

    /// Serves the public keys of `signers`.
    fn serve(&self, signers: &[&TokenSigner]) {
        let keys: Vec<serde_json::Value> = signers
            .iter()
            .flat_map(|signer| {
                let set = serde_json::to_value(signer.jwks().expect("jwks")).expect("json");
                set["keys"].as_array().cloned().unwrap_or_default()
            })
            .collect();
        *self.answer.lock().expect("answer") =
            (200, serde_json::json!({ "keys": keys }).to_string());
    }

    /// Answers every fetch with a server error.
    fn fail(&self) {
        *self.answer.lock().expect("answer") = (500, String::from("{}"));
    }

    fn fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether health answers SERVING on `channel`.
async fn serving(channel: &Channel) -> bool {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .is_ok_and(|answer| answer.into_inner().status == ServingStatus::Serving as i32)
}

/// Polls `check` until it holds, for at most `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + limit;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_url_is_fetched_refetched_for_a_new_key_and_refreshed_when_keys_are_retired() {
    let pki = Pki::new();
    let jwks = JwksServer::start(&pki.authority).await;
    let first = TokenSigner::generate("key-1").expect("key");
    let second = TokenSigner::generate("key-2").expect("key");
    let unknown = TokenSigner::generate("key-3").expect("key");
    let search = "/relay.directory.v1.DirectoryService/SearchServices";
    let url = jwks.url();
    let ca = pki.path("client-ca.pem").display().to_string();
    let settings = |refresh: &'static str| {
        vec![
            ("RELAY_AUTH_JWKS_URL", url.clone()),
            ("RELAY_SECURITY__AUTH_JWKS_CA", ca.clone()),
            (
                "RELAY_SECURITY__AUTH_JWKS_REFRESH_SECONDS",
                refresh.to_owned(),
            ),
            (
                "RELAY_SECURITY__AUTH_JWKS_REFETCH_MIN_SECONDS",
                String::from("1"),
            ),
            ("RELAY_SERVER__READINESS_INTERVAL_MS", String::from("100")),
        ]
    };

    // The provider is down at start: the service starts, NOT_SERVING, and a token is told
    // to retry (UNAVAILABLE), not that it is invalid. Once the set is served, it serves.
    jwks.fail();
    let env = settings("300");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let process = start_without(&pki, "relay-directory", &env, &["RELAY_AUTH_JWKS"]);
    let channel = tls_channel(&process, pki.authority.cert_pem(), None)
        .await
        .expect("tls");
    let status = call(&channel, search, Some(&Pki::token_for(&first, "cad")))
        .await
        .expect_err("no keys yet");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "KEYS_UNAVAILABLE");
    jwks.serve(&[&first]);
    let on = &channel;
    eventually(
        Duration::from_secs(15),
        "SERVING once the JWKS is fetched",
        move || serving(on),
    )
    .await;
    assert!(past_auth(
        call(&channel, search, Some(&Pki::token_for(&first, "cad"))).await
    ));

    // The provider rotates to a new key: a token signed with it names a kid the cached set
    // lacks, so the set is fetched again at once (the periodic refresh is 5 minutes away).
    jwks.serve(&[&first, &second]);
    let new_token = Pki::token_for(&second, "cad");
    let token = &new_token;
    eventually(
        Duration::from_secs(10),
        "a token of the new key accepted",
        move || async move { past_auth(call(on, search, Some(token)).await) },
    )
    .await;

    // Made-up kids do not make it hammer the provider: at most one fetch per second.
    let before = jwks.fetches();
    let started = std::time::Instant::now();
    let forged = Pki::token_for(&unknown, "cad");
    for _ in 0..20 {
        let status = call(&channel, search, Some(&forged))
            .await
            .expect_err("an unknown key");
        assert_eq!(reason(&status), "CREDENTIALS_INVALID");
    }
    let seconds = started.elapsed().as_secs();
    let fetched = jwks.fetches() - before;
    assert!(
        fetched <= usize::try_from(seconds).expect("small") + 1,
        "{fetched} fetches in {seconds}s for 20 unknown kids"
    );
    drop(process);

    // Periodic refresh (every second here): a fetch that fails keeps the last good set; a
    // key the provider retires stops verifying tokens without a restart.
    let env = settings("1");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let process = start_without(&pki, "relay-directory", &env, &["RELAY_AUTH_JWKS"]);
    let channel = tls_channel(&process, pki.authority.cert_pem(), None)
        .await
        .expect("tls");
    let on = &channel;
    eventually(Duration::from_secs(15), "SERVING", move || serving(on)).await;
    let old_token = Pki::token_for(&first, "cad");
    assert!(past_auth(call(&channel, search, Some(&old_token)).await));
    jwks.fail();
    let failed_from = jwks.fetches();
    let server = &jwks;
    eventually(
        Duration::from_secs(10),
        "two failed refreshes",
        move || async move { server.fetches() >= failed_from + 2 },
    )
    .await;
    assert!(
        past_auth(call(&channel, search, Some(&old_token)).await),
        "the last good set is kept while the provider fails"
    );
    jwks.serve(&[&second]);
    let retired = &old_token;
    eventually(
        Duration::from_secs(10),
        "the retired key refused",
        move || async move {
            call(on, search, Some(retired))
                .await
                .is_err_and(|status| reason(&status) == "CREDENTIALS_INVALID")
        },
    )
    .await;
    assert!(past_auth(call(&channel, search, Some(&new_token)).await));
}
