//! The audit trail (issue 14) against the real intake binary over TLS with bearer tokens,
//! and the real `relay audit` commands: a write, a caller-details read and refused calls (no
//! token, a missing scope, another CAD's incident) each leave a record naming the principal,
//! the RPC and the outcome; no record holds a token or a caller's details; `relay audit
//! verify` passes, then names the row an SQL edit changed; `relay audit export` writes JSON
//! lines.

use std::{path::PathBuf, process::Command, time::Duration};

use relay_proto::intake::{
    CallerContact, GetIncidentRequest, SubmitIncidentRequest,
    intake_service_client::IntakeServiceClient,
};
use relay_runtime::security::pki::{Authority, TokenClaims, TokenSigner};
use relay_tests::{ServiceProcess, binary_path};
use tonic::{
    Code, Request,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

const ISSUER: &str = "https://idp.relay.test";
const AUDIENCE: &str = "relay-test";
const SUBMIT: &str = "/relay.intake.v1.IntakeService/SubmitIncident";
const GET: &str = "/relay.intake.v1.IntakeService/GetIncident";

struct Setup {
    dir: tempfile::TempDir,
    authority: Authority,
    signer: TokenSigner,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let authority = Authority::new("relay audit test CA").expect("CA");
        let signer = TokenSigner::generate("audit-key").expect("signing key");
        let server = authority
            .server("localhost", &["localhost", "127.0.0.1"])
            .expect("server cert");
        std::fs::write(dir.path().join("server.pem"), &server.cert_pem).expect("cert");
        std::fs::write(dir.path().join("server-key.pem"), &server.key_pem).expect("key");
        let jwks = serde_json::to_string(&signer.jwks().expect("jwks")).expect("json");
        std::fs::write(dir.path().join("jwks.json"), jwks).expect("jwks");
        Self {
            dir,
            authority,
            signer,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn database_url(&self) -> String {
        format!("sqlite://{}", self.path("intake.db").display())
    }

    fn token(&self, subject: &str, scopes: &[&str], cad_system: Option<&str>) -> String {
        let claims = TokenClaims {
            subject: subject.to_owned(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            cad_system: cad_system.map(str::to_owned),
            ..TokenClaims::default()
        };
        self.signer
            .issue(ISSUER, AUDIENCE, &claims, 0, 300)
            .expect("token")
    }

    fn start_intake(&self) -> ServiceProcess {
        let path = |name: &str| self.path(name).display().to_string();
        let env = [
            ("RELAY_TLS_CERT", path("server.pem")),
            ("RELAY_TLS_KEY", path("server-key.pem")),
            ("RELAY_AUTH_JWKS", path("jwks.json")),
            ("RELAY_AUTH_ISSUER", ISSUER.to_owned()),
            ("RELAY_AUTH_AUDIENCE", AUDIENCE.to_owned()),
            ("RELAY_ADMIN_LISTEN", "127.0.0.1:0".to_owned()),
            ("RELAY_DATABASE_URL", self.database_url()),
            ("RELAY_PAGE_TOKEN_SECRET", "test-page-secret".to_owned()),
            ("RELAY_INTAKE__SUBMIT_WAIT_MS", "10".to_owned()),
            ("RELAY_INTAKE__CONSUME_UPSTREAM", "false".to_owned()),
        ];
        let borrowed: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        ServiceProcess::start("relay-intake", &borrowed)
    }
}

async fn channel(process: &ServiceProcess, ca_pem: &str) -> Channel {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    Endpoint::from_shared(format!("https://127.0.0.1:{}", process.addr().port()))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect")
}

fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("metadata"),
        );
    }
    request
}

fn submission() -> SubmitIncidentRequest {
    let now = chrono::Utc::now().timestamp();
    SubmitIncidentRequest {
        cad_system: "cad-a".into(),
        cad_incident_id: "AUDIT-1".into(),
        incident_type: "WELFARE".into(),
        priority: 3,
        location: Some(relay_proto::common::GeoPoint {
            latitude: 44.05,
            longitude: -123.09,
        }),
        address: "1 Main St".into(),
        region: "north".into(),
        narrative: "caller worried about her brother".into(),
        received_at: Some(prost_types::Timestamp {
            seconds: now,
            nanos: 0,
        }),
        caller: Some(CallerContact {
            name: "Ada Caller".into(),
            phone: "+15415550100".into(),
            callback_number: None,
        }),
        ..Default::default()
    }
}

/// `relay audit <args> --service intake --database-url <url>`: exit success and stdout.
fn relay_audit(setup: &Setup, args: &[&str]) -> (bool, String) {
    let output = Command::new(binary_path("relay"))
        .arg("audit")
        .args(args)
        .args([
            "--service",
            "intake",
            "--database-url",
            &setup.database_url(),
        ])
        .env_remove("RELAY_DATABASE_URL")
        .output()
        .expect("run relay audit");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

fn exported(setup: &Setup) -> Vec<serde_json::Value> {
    let (ok, stdout) = relay_audit(setup, &["export"]);
    assert!(ok, "export failed: {stdout}");
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// The record of `rpc` answered `outcome` to `principal`, if there is one.
fn find<'a>(
    records: &'a [serde_json::Value],
    principal: &str,
    rpc: &str,
    outcome: &str,
) -> Option<&'a serde_json::Value> {
    records
        .iter()
        .find(|r| r["principal"] == principal && r["rpc"] == rpc && r["outcome"] == outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reads_and_refusals_are_recorded_verified_and_exported() {
    let setup = Setup::new();
    let process = setup.start_intake();
    let channel = channel(&process, setup.authority.cert_pem()).await;
    let mut client = IntakeServiceClient::new(channel);
    let writer = setup.token("cad-a-writer", &["incidents.submit"], None);
    let details = setup.token("analyst", &["incidents.read", "caller.details.read"], None);
    let reader = setup.token("reader", &["incidents.read"], None);
    let other_cad = setup.token("cad-b-reader", &["incidents.read"], Some("cad-b"));

    let incident = client
        .submit_incident(with_token(submission(), Some(&writer)))
        .await
        .expect("submit")
        .into_inner()
        .incident
        .expect("incident");
    let get = GetIncidentRequest {
        incident_id: incident.incident_id.clone(),
        ..Default::default()
    };
    client
        .get_incident(with_token(get.clone(), Some(&details)))
        .await
        .expect("read with caller details");
    let refusals = [
        (
            client
                .get_incident(with_token(get.clone(), None))
                .await
                .err(),
            Code::Unauthenticated,
        ),
        (
            client
                .submit_incident(with_token(submission(), Some(&reader)))
                .await
                .err(),
            Code::PermissionDenied,
        ),
        (
            client
                .get_incident(with_token(get.clone(), Some(&other_cad)))
                .await
                .err(),
            Code::PermissionDenied,
        ),
    ];
    for (status, code) in refusals {
        assert_eq!(status.expect("refused").code(), code);
    }

    // Refusals reach the trail through the background writer: poll for them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let records = loop {
        let records = exported(&setup);
        if find(&records, "cad-b-reader", GET, "PERMISSION_DENIED").is_some()
            && find(&records, "anonymous", GET, "UNAUTHENTICATED").is_some()
            && find(&records, "reader", SUBMIT, "PERMISSION_DENIED").is_some()
        {
            break records;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "refusals not recorded: {records:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let resource = serde_json::json!([format!("incident:{}", incident.incident_id)]);
    let write = find(&records, "cad-a-writer", SUBMIT, "OK").expect("the write's record");
    assert_eq!(write["resources"], resource);
    assert_eq!(write["credential"], "token");
    assert!(
        write["peer"]
            .as_str()
            .expect("peer")
            .starts_with("127.0.0.1:")
    );
    assert!(!write["request_id"].as_str().unwrap_or_default().is_empty());
    let read = find(&records, "analyst", GET, "OK").expect("the read's record");
    assert_eq!(read["resources"], resource);
    let missing = find(&records, "reader", SUBMIT, "PERMISSION_DENIED").expect("refusal");
    assert_eq!(missing["reason"], "SCOPE_MISSING");
    let anonymous = find(&records, "anonymous", GET, "UNAUTHENTICATED").expect("refusal");
    assert_eq!(anonymous["reason"], "CREDENTIALS_MISSING");
    for record in &records {
        assert_eq!(record["hash"].as_str().map(str::len), Some(64), "{record}");
    }
    // No secret and no caller detail in any record.
    let text = serde_json::to_string(&records).expect("json");
    for secret in [&writer, &details, &reader, &other_cad] {
        assert!(!text.contains(secret.as_str()), "a token is in the trail");
    }
    for detail in ["Ada Caller", "+15415550100", "worried about her brother"] {
        assert!(!text.contains(detail), "{detail} is in the trail");
    }

    let (ok, stdout) = relay_audit(&setup, &["verify"]);
    assert!(ok, "verify of an untouched trail: {stdout}");
    assert!(stdout.starts_with("OK "), "{stdout}");

    let seq = write["seq"].as_i64().expect("seq");
    let pool = sqlx::SqlitePool::connect(&setup.database_url())
        .await
        .expect("sqlite");
    sqlx::query("UPDATE audit_log SET principal = 'someone-else' WHERE seq = $1")
        .bind(seq)
        .execute(&pool)
        .await
        .expect("edit");
    let (ok, stdout) = relay_audit(&setup, &["verify"]);
    assert!(!ok, "verify must fail after an edit: {stdout}");
    assert!(
        stdout.starts_with(&format!("seq {seq}: edited")),
        "{stdout}"
    );
}
