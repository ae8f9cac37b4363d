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
    let database = format!("sqlite://{}", pki.path(&format!("{binary}.db")).display());
    let mut env: Vec<(String, String)> = pki.env();
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
